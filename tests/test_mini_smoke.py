"""`make mini` in miniature: the same stages (prepare from a mirror, pretrain, export, adapt, decode,
score, table, figure) on the tiny model, the fixture mirror, two optimizer steps per run and a short
beam search. Asserts what the pipeline must leave behind, not what a 2-step model scores."""

from __future__ import annotations

import json
import math
import re

import pytest
from safetensors.torch import load_file

from nola.data.prepare import prepare
from nola.mini.__main__ import main
from nola.mini.reproduction import METHODS
from nola.model import base_fingerprint, load_gpt2
from nola.tables import read_result
from mirror_support import MIRROR, sources_for_mirror

SMOKE_METHODS = ("lora", "nola_k16")  # each run costs a METEOR + PTB-tokenizer JVM; CI keeps two methods
SEEDS = (110, 111)  # two seeds per method (the mini's train.seed and the next)
# Hand-computed trainable parameters of the tiny model (2 layers, d = 64) adapted on q and v:
# LoRA r=4: 2 layers x 2 matrices x 4 x (64 + 64); NOLA 32 + 32 coefficients per matrix.
EXPECTED_PARAMS = {"none": 0, "lora": 2 * 2 * 4 * (64 + 64), "nola": 2 * 2 * (16 + 16)}  # tiny: 2 layers, q and v
E2E_RANGES = {"BLEU": (0, 1), "METEOR": (0, 1), "ROUGE_L": (0, 1), "NIST": (0, 20), "CIDEr": (0, 10)}



@pytest.fixture(scope="module")
def smoke(tmp_path_factory, vocab_dir, single_thread):
    """Run the whole mini pipeline once; return its working directory and the results it printed."""
    root = tmp_path_factory.mktemp("mini")
    data = root / "data"
    prepare(["e2e", "webnlg", "dart"], data, mirror=MIRROR, sources=sources_for_mirror(MIRROR, root / "sources.json"),
            progress=False)
    argv = ["--out", str(root / "out"), "--pretrain-examples", "4", "--adapt-examples", "4", "--valid-examples", "2",
            "--test-contexts", "5", "--methods", ",".join(SMOKE_METHODS), "--seeds", str(len(SEEDS)), "--workers", "2",
            "~decode", "model=tiny", f"paths.data_dir={data}", f"paths.vocab_dir={vocab_dir}",
            f"paths.runs_dir={root / 'runs'}", f"paths.cache_dir={root / 'cache'}", "train.device=cpu",
            "train.max_steps=2", "train.max_time_s=30", "decode.beam=2", "decode.max_new_tokens=8"]
    main(argv)
    return root, argv


def test_every_stage_leaves_its_files(smoke):
    root, _ = smoke
    base = root / "cache" / "mini-base"
    assert (base / "config.json").is_file() and (base / "model.safetensors").is_file()
    pretraining = json.loads((base / "pretraining.json").read_text())
    assert pretraining["steps"] in (1, 2) and pretraining["examples"] == 4
    assert (root / "cache" / "mini-data" / "pretrain" / "dart" / "train.jsonl").is_file()
    runs = sorted((root / "runs" / "mini").glob("base-*/**/results.json"))
    names = sorted(str(path.parent.relative_to(path.parents[2] if "seed-" in path.parent.name else path.parents[1]))
                   for path in runs)
    assert names == sorted(["base", *(f"{m}/seed-{s}" for m in SMOKE_METHODS for s in SEEDS)])
    assert (root / "out" / "mini.md").is_file()
    assert (root / "out" / "mini_params_vs_bleu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretraining_never_sees_e2e(smoke):
    root, _ = smoke
    lines = (root / "cache" / "mini-data" / "pretrain" / "dart" / "train.jsonl").read_text().splitlines()
    e2e_contexts = {json.loads(line)["context"] for line in (root / "data" / "e2e" / "train.jsonl").read_text().splitlines()}
    assert len(lines) == 4 and not {json.loads(line)["context"] for line in lines} & e2e_contexts


def test_results_validate_with_numbers_in_range(smoke):
    root, _ = smoke
    groups = (root / "cache" / "mini-data" / "e2e" / "e2e" / "test_references.jsonl").read_text().splitlines()
    for path in sorted((root / "runs" / "mini").glob("base-*/**/results.json")):
        result = read_result(path)  # the tables' schema check
        kind = result["adapter"]["kind"]
        assert result["task"] == "e2e" and result["split"] == "test" and result["model"] == "tiny"
        assert result["trainable_params"] == EXPECTED_PARAMS[kind]
        assert set(result["metrics"]) == set(E2E_RANGES)
        for name, (low, high) in E2E_RANGES.items():
            value = result["metrics"][name]
            assert isinstance(value, float) and math.isfinite(value) and low <= value <= high, (name, value)
        hypotheses = (path.parent / "test_hypotheses.txt").read_text(encoding="utf-8").split("\n")
        assert len(hypotheses) - 1 == len(groups) == result["contexts"]
        if kind == "none":
            assert result["adapter_file_bytes"] == 0 and not (path.parent / "adapter").exists()
        else:
            stored = path.parent / "adapter" / "adapter.safetensors"
            assert result["adapter_file_bytes"] == stored.stat().st_size
            assert sum(t.numel() for t in load_file(stored).values()) == EXPECTED_PARAMS[kind]


def test_runs_are_named_by_the_base_they_adapt(smoke):
    root, _ = smoke
    fingerprint = base_fingerprint(load_gpt2(root / "cache" / "mini-base"))[:12]
    (run_group,) = (root / "runs" / "mini").glob("base-*")
    assert run_group.name.startswith(f"base-{fingerprint}-data-")


def test_table_lists_every_run_with_date_and_machine(smoke):
    root, _ = smoke
    table = (root / "out" / "mini.md").read_text(encoding="utf-8")
    assert "- date: " in table and ("- machine: cpu" in table or "- machine: cuda" in table)
    for tag in ("mini/base", *(f"mini/{m}/seed-{s}" for m in SMOKE_METHODS for s in SEEDS)):
        assert f"| {tag} |" in table
    assert table.count("beats the un-adapted base on") == len(SMOKE_METHODS)
    assert "- training precision: " in table
    # the seeds of one method are one row: n = 2 and both seeds named in its source
    rows = [line for line in table.splitlines() if line.startswith("| **LoRA (r=4) (ours)")]
    assert len(rows) == 1 and "| 2 |" in rows[0] and "seeds 110, 111" in rows[0]


def test_rerun_resumes_without_redoing_anything(smoke, capsys):
    root, argv = smoke
    outputs = sorted((root / "runs" / "mini").rglob("*"))
    before = {path: path.stat().st_mtime_ns for path in outputs if path.is_file()}
    main(argv)
    after = {path: path.stat().st_mtime_ns for path in outputs if path.is_file()}
    assert after == before
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"mini/base", *(f"mini/{m}/seed-{s}" for m in SMOKE_METHODS for s in SEEDS)}


def test_every_method_is_a_known_config():
    from nola.config import compose_config
    from nola.adapters.count import count_adapter
    from nola.adapters import as_adapter_config

    counts = {m: count_adapter("mini", as_adapter_config(compose_config([f"experiment=mini/{m}", "~decode"]).adapter))
              for m in METHODS}
    lora_r1 = 4 * 2 * 1 * (128 + 128)  # 4 layers, q and v, rank 1, d = 128
    assert counts["lora_r1"]["trainable"] == lora_r1 and counts["lora"]["trainable"] == 4 * lora_r1
    assert counts["nola_k32"]["trainable"] == lora_r1 // 4 and counts["nola_k16"]["trainable"] == lora_r1 // 8


def test_decode_bench_races_generate_on_the_pretrained_base_and_real_prompts(smoke, vocab_dir, tmp_path):
    from nola.bench.decode import bench_trained_decode

    root, _ = smoke
    result = bench_trained_decode(repeats=1, warmup=0, model_dir=root / "cache" / "mini-base", data_dir=root / "data",
                                  vocab_dir=vocab_dir, contexts=3)
    assert result["prompts"] == 3 and result["max_abs_logit_difference"] < 1e-3
    assert set(result["contenders"]) == {"ours", "transformers", "transformers exact (early_stopping=never)"} and result["speedup"] > 0
    assert all(row["generated_tokens"] > 0 for row in result["contenders"].values())
    missing = bench_trained_decode(repeats=1, warmup=0, model_dir=tmp_path / "none", data_dir=root / "data")
    assert missing == {"skipped": f"no trained model at {tmp_path / 'none'} (run `make mini` first)"}


def test_mixed_demo_decodes_three_tasks_in_one_batch_as_each_alone(smoke):
    """`python -m nola.mini_mixed` on the smoke's base: three NOLA adapters (E2E, WebNLG, DART), one
    mixed decode, each task's hypotheses byte-identical to its single-task decode."""
    from nola.mini_mixed import main as mixed_main

    root, argv = smoke
    overrides = argv[argv.index("~decode") + 1:]
    mixed_main(["--out", str(root / "out"), "--train-examples", "4", "--valid-examples", "2", "--test-contexts", "3",
                *overrides])
    report = (root / "out" / "mini_mixed.md").read_text(encoding="utf-8")
    for task in ("e2e", "webnlg", "dart"):
        assert re.search(rf"\| {task} \| [1-3] \| yes, byte for byte \|", report), task  # the fixture's DART test has 2
        assert (root / "runs" / "mini_mixed" / "mixed" / task / "scores.json").is_file()
