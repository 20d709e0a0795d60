# GPT-2 + LoRA/NOLA on E2E, DART and WebNLG. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_MIRROR ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed ## create .venv and install the package with its test extras (CPU torch)

test: setup ## set up if needed, then run every test (slow and integration ones included; ~5 min on 2 cores)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup ## the fast suite only (no tests marked slow)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

data: setup ## download/prepare E2E, WebNLG, DART (DATA_MIRROR=dir copies from a local mirror); quick when current
	$(PY) -m nola.data.prepare --data-dir data $(if $(DATA_MIRROR),--mirror $(DATA_MIRROR))

e2e-nola: data ## GPT-2 M + NOLA on E2E: train, decode, score, results (needs GPT-2 weights; GPU)
	bash scripts/e2e.sh nola
e2e-lora: data ## GPT-2 M + LoRA r=4 on E2E
	bash scripts/e2e.sh lora
e2e-ft: data ## GPT-2 M full fine-tuning on E2E
	bash scripts/e2e.sh ft
dart-nola: data ## GPT-2 M + NOLA on DART
	bash scripts/dart.sh nola
dart-lora: data ## GPT-2 M + LoRA on DART
	bash scripts/dart.sh lora
webnlg-nola: data ## GPT-2 M + NOLA on WebNLG
	bash scripts/webnlg.sh nola
webnlg-lora: data ## GPT-2 M + LoRA on WebNLG
	bash scripts/webnlg.sh lora

tables: setup ## regenerate the paper tables and figure from every results.json
	$(PY) -m nola.tables

mini: setup ## offline mini reproduction on CPU (< 30 min): pretrain, adapt, decode, score, table
	bash scripts/mini.sh $(if $(DATA_MIRROR),DATA_MIRROR=$(DATA_MIRROR))

mini-mixed: setup ## after `make mini`: NOLA adapters for E2E, WebNLG, DART decoded in one mixed batch -> eval/results/mini_mixed.md
	$(PY) -m nola.mini_mixed

bench: setup ## speed/memory benchmarks -> eval/results/bench.{json,md}
	$(PY) -m nola.bench

clean: ## remove caches and build outputs (keeps data/ and runs/)
	rm -rf .pytest_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help setup test test-fast data e2e-nola e2e-lora e2e-ft dart-nola dart-lora webnlg-nola webnlg-lora tables mini mini-mixed bench clean
