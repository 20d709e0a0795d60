#!/usr/bin/env bash
# GPT-2 M on WEBNLG: train -> decode -> score -> results.json (make webnlg-nola, make webnlg-lora, ...).
# usage: bash scripts/webnlg.sh ADAPTER [hydra overrides...]   ADAPTER: nola | lora | lora_r1 | ft
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_experiment.sh" webnlg "$@"
