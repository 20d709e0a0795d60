"""`python -m nola.bench`: the measuring machinery against hand-computed values, and a --quick run's files.

No timing is asserted (the machine's load decides those); the run's numbers must be present and
positive, and the contenders that compute one function must agree (NOLA vs the reference
algorithm, our GPT-2 vs transformers').
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nola.bench.__main__ import main
from nola.bench.report import read_report
from nola.bench.timing import LiveTensorTracker, peak_memory, storage_bytes, time_alternating
from nola.bench.training import e2e_like_batch, train_flops
from nola.errors import NolaError
from nola.model import GPT2, GPT2Config

MIB = 2**20
QUICK_SECTIONS = ["adapter_step", "training", "decode", "multi_adapter", "gpu"]


def test_tracker_counts_allocations_and_frees_but_not_views():
    with LiveTensorTracker() as tracker:
        first = torch.empty(MIB // 4)  # 1 MiB of float32
        second = torch.empty(MIB // 2)  # 2 MiB
        view = second[:10].t()
        second.add_(1.0)
        del first
        third = torch.empty(MIB // 8)  # 0.5 MiB
    assert tracker.peak == 3 * MIB
    assert tracker.current == 2 * MIB + MIB // 2
    assert view.untyped_storage().nbytes() == 2 * MIB and third.numel() == MIB // 8


def test_peak_memory_sees_the_backward():
    weight = torch.randn(256, 256, requires_grad=True)
    inputs = torch.randn(64, 256)

    def step():
        out = inputs @ weight  # 64 KiB, alive while its gradient for the weight (256 KiB) is made
        out.sum().backward()

    memory = peak_memory(step, [weight], torch.device("cpu"))
    assert memory.resident_bytes == 256 * 256 * 4
    assert 320 * 1024 <= memory.step_bytes <= (320 + 64) * 1024 + 64


def test_storage_bytes_counts_tied_weights_once():
    model = GPT2(GPT2Config(vocab_size=10, n_positions=4, n_embd=8, n_layer=1, n_head=2))
    by_hand = sum(p.numel() for name, p in model.named_parameters() if name != "lm_head.weight") * 4
    assert storage_bytes(model.parameters()) == by_hand


def test_time_alternating_rotates_the_order():
    calls: list[str] = []
    samples = time_alternating({name: (lambda n=name: calls.append(n)) for name in "abc"}, repeats=3, warmup=1)
    assert calls == list("abc" + "abc" + "bca" + "cab")
    assert all(len(values) == 3 and min(values) >= 0 for values in samples.values())


def test_train_flops_by_hand():
    config = GPT2Config(vocab_size=10, n_positions=8, n_embd=4, n_layer=1, n_head=2)
    # weight matmuls: 3 tokens · 2·12·4² + 2 loss tokens · 2·4·10 = 1152 + 160; attention: 4·4·(1+2+3) = 96
    assert train_flops(config, [3], 2) == 2 * (1152 + 160) + 3 * 96


def test_e2e_like_batch_follows_the_batch_contract():
    contexts, completions = (3, 5), (4, 2)
    batch = e2e_like_batch(50257, seed=0, context_lengths=contexts, completion_lengths=completions)
    assert batch.input_ids.shape == (2, 6)
    assert batch.attention_mask.sum(dim=1).tolist() == [6, 6]
    assert batch.loss_mask.sum(dim=1).tolist() == [4.0, 2.0]
    assert batch.input_ids[0, 2] == 50256 and batch.input_ids[1, 4] == 50256  # bos after the context
    assert batch.targets[0, 5] == 50256 and batch.targets[1, 5] == 50256  # final eos is a target
    shifted = batch.attention_mask[:, 1:]  # a target is the next row's input wherever both are real
    assert torch.equal(batch.targets[:, :-1][shifted], batch.input_ids[:, 1:][shifted])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        main(["--quick", "--threads", "1", "--sections", ",".join(QUICK_SECTIONS), "--results-dir", str(results)])
    finally:
        torch.set_num_threads(threads)
    return results


def _positive_numbers(node, key_suffixes=("_s", "_bytes", "tokens_per_s")) -> list[tuple[str, float]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(key_suffixes):
                found.append((key, value))
            found += _positive_numbers(value, key_suffixes)
    elif isinstance(node, list):
        for value in node:
            found += _positive_numbers(value, key_suffixes)
    return found


def test_quick_run_writes_every_section_with_positive_numbers(quick_run):
    report = json.loads((quick_run / "bench.json").read_text())
    assert report["schema"] == 1
    assert list(report["sections"]) == QUICK_SECTIONS
    for section in report["sections"].values():
        assert {"date", "machine", "settings", "duration_s", "load_average_before", "result"} <= set(section)
        assert section["machine"]["cpu_cores"] >= 1 and section["machine"]["torch"] == torch.__version__
    numbers = _positive_numbers({k: v["result"] for k, v in report["sections"].items() if k != "gpu"})
    assert len(numbers) > 40
    assert all(value > 0 for _, value in numbers), [item for item in numbers if item[1] <= 0]
    assert {goal["met"] for goal in report["goals"]} <= {True, False}


def test_quick_adapter_step_contenders_agree_with_the_reference(quick_run):
    result = read_report(quick_run / "bench.json")["sections"]["adapter_step"]["result"]
    (shape,) = result["shapes"]
    for scope in ("layer", "adapter_only"):
        assert set(shape[scope]["contenders"]) == {"lora", "nola_cached", "nola_regenerated", "nola_reference"}
        assert all(value > 0 for value in shape[scope]["ratios"].values())
    assert shape["max_abs_output_difference_nola_vs_reference"] < 1e-5
    # tiny shape: 2 slots × (32 bases × 4·64 entries for A + 32 × 64·4 for B + A0 4·64 + B0 64·4), float32
    assert shape["basis_cache_bytes_per_layer"] == 2 * (32 * 256 + 32 * 256 + 256 + 256) * 4
    assert shape["trainable"] == {"lora": 2 * (4 * 64 + 64 * 4), "nola_cached": 128, "nola_regenerated": 128,
                                  "nola_reference": 128}


def test_quick_training_matches_transformers_when_installed(quick_run):
    result = read_report(quick_run / "bench.json")["sections"]["training"]["result"]
    assert {"ours_lora", "ours_nola"} <= set(result["contenders"])
    assert result["contenders"]["ours_lora"]["flop_utilisation"] > 0
    assert result["profile_ours_lora"] and all(row["self_s"] >= 0 for row in result["profile_ours_lora"])
    pytest.importorskip("peft")
    assert result["checks"]["max_abs_logit_difference_ours_vs_hf"] < 1e-4
    assert set(result["ratios"]) == {"ours_lora_over_hf", "ours_nola_over_hf"}


def test_quick_training_compares_the_two_output_layers_side_by_side(quick_run):
    output = read_report(quick_run / "bench.json")["sections"]["training"]["result"]["output_layer"]
    rows = output["contenders"]
    assert {"lora_full", "lora_chunked", "nola_full", "nola_chunked"} <= set(rows)
    for name in ("lora", "nola"):
        ratios = output["chunked_over_full"][name]
        assert ratios["peak_bytes"] == pytest.approx(rows[f"{name}_chunked"]["peak_bytes"] / rows[f"{name}_full"]["peak_bytes"])
        assert ratios["tokens_per_s"] > 0
    mini = output["bf16_mini"]
    assert "skipped" in mini or set(mini["contenders"]) == {"fp32_full", "fp32_chunked", "bf16_full", "bf16_chunked",
                                                            "pretrain_fp32_full", "pretrain_bf16_chunked"}
    assert "full logits against the fused, chunked loss" in (quick_run / "bench.md").read_text()


def test_quick_decode_races_transformers_on_the_same_model(quick_run):
    result = read_report(quick_run / "bench.json")["sections"]["decode"]["result"]
    pytest.importorskip("transformers")
    assert set(result["contenders"]) == {"ours", "transformers", "transformers exact (early_stopping=never)"}
    assert result["max_abs_logit_difference"] < 1e-3
    assert result["speedup"] > 0
    # the floor is a strict subset of either decoder's work (the same logit matmuls and nothing else)
    floor = result["vocab_projection_floor"]
    assert floor["ours_over_floor"] > 1 and floor["transformers_over_floor"] > 1


def test_quick_gpu_section_records_why_it_was_skipped(quick_run):
    result = read_report(quick_run / "bench.json")["sections"]["gpu"]["result"]
    if torch.cuda.is_available():
        assert result["models"][0]["contenders"]["nola"]["projected_paper_run_s"] > 0
    else:
        assert result == {"skipped": "no GPU (torch.cuda.is_available() is False)"}


def test_markdown_has_the_goals_and_every_section(quick_run):
    text = (quick_run / "bench.md").read_text()
    for heading in ["## Goals", "## adapter_step", "## training", "## decode", "## multi_adapter", "## gpu"]:
        assert heading in text
    assert "nola_reference" in text and "tokens/s" in text


def test_merge_from_keeps_other_sections_and_their_machine(quick_run, tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "bench.json").write_text((quick_run / "bench.json").read_text())
    other = json.loads((quick_run / "bench.json").read_text())
    gpu = other["sections"]["gpu"]
    gpu["machine"] = {**gpu["machine"], "device_name": "Another Machine"}
    gpu["result"] = {"skipped": "measured elsewhere"}
    other["sections"] = {"gpu": gpu}
    (tmp_path / "other.json").write_text(json.dumps(other))
    main(["--merge-from", str(tmp_path / "other.json"), "--results-dir", str(target)])
    merged = read_report(target / "bench.json")
    assert list(merged["sections"]) == QUICK_SECTIONS
    assert merged["sections"]["gpu"]["machine"]["device_name"] == "Another Machine"
    assert merged["sections"]["adapter_step"] == read_report(quick_run / "bench.json")["sections"]["adapter_step"]
    assert "Another Machine" in (target / "bench.md").read_text()


def test_bad_arguments_and_files_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--sections", "adapter_step,warp_drive", "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "warp_drive" in capsys.readouterr().err
    (tmp_path / "bench.json").write_text("{not json")
    with pytest.raises(NolaError, match="bench.json:1"):
        read_report(tmp_path / "bench.json")
    with pytest.raises(SystemExit):
        main(["--merge-from", str(tmp_path / "missing.json"), "--results-dir", str(tmp_path)])
    assert "missing.json" in capsys.readouterr().err


def test_quick_multi_adapter_section_times_three_ways_and_shares_bases(quick_run):
    result = read_report(quick_run / "bench.json")["sections"]["multi_adapter"]["result"]["throughput"]
    assert set(result["contenders"]) == {"mixed", "merged", "naive"}
    # every adapter decodes the same number of tokens per prompt here (no eos in the way of a random model)
    assert len({row["generated_tokens"] for row in result["contenders"].values()}) == 1
    assert result["bases"] == 4  # reference init: q-A, q-B, v-A, v-B, shared by every layer and adapter
    # resident per adapter: its coefficients only, 2 layers x q, v x (32 + 32) float32
    assert result["adapter_resident_bytes"] == 2 * 2 * 64 * 4
    assert result["bank_resident_bytes"] == result["adapters"] * result["adapter_resident_bytes"]
    assert result["mixed_over_merged"] == pytest.approx(
        result["contenders"]["mixed"]["tokens_per_s"] / result["contenders"]["merged"]["tokens_per_s"])


def test_server_load_bench_answers_every_request(vocab_dir):
    from nola.bench.multi_adapter import bench_server_load

    result = bench_server_load(quick=True, vocab_dir=vocab_dir)
    assert result["errors"] == 0 and result["requests"] == 8 and result["requests_per_s"] > 0
    assert 0 < result["p50_s"] <= result["p99_s"] and 1 <= result["decode_batches"] <= 8
    assert bench_server_load(quick=True, vocab_dir=vocab_dir.parent / "none") == {
        "skipped": f"no GPT-2 vocabulary at {vocab_dir.parent / 'none'} (make data)"}


def test_serving_bench_measures_both_loads_with_no_errors(vocab_dir):
    from nola.machine import describe_machine
    from nola.bench.report import goals, render_markdown
    from nola.bench.serving import run

    result = run(quick=True, vocab_dir=vocab_dir)
    varied, mixed = result["varied_max_tokens"], result["mixed_lengths"]
    assert varied["errors"] == 0 and varied["same_answers"] and len(set(varied["max_tokens"])) == varied["requests"]
    assert varied["concurrent_over_sequential"] == pytest.approx(varied["concurrent_s"] / varied["sequential_s"])
    for mode in ("joining", "static"):
        row = mixed[mode]
        assert row["errors"] == 0 and 0 < row["short_p50_s"] <= row["short_p99_s"] and row["requests_per_s"] > 0
    section = {"serving": {"date": "d", "machine": describe_machine(), "settings": {}, "duration_s": 1.0, "load_average_before": None,
                           "load_average_after": None, "result": result}}
    assert [g["measured"] for g in goals(section)] == [varied["concurrent_over_sequential"], 0]
    assert "join the running search" in render_markdown({"sections": section, "goals": goals(section)})


def test_soak_bench_changes_adapters_under_load_and_verifies_every_answer(vocab_dir):
    from nola.machine import describe_machine
    from nola.bench.report import goals, render_markdown
    from nola.bench.soak import run

    result = run(quick=True, vocab_dir=vocab_dir, duration_s=6.0, change_every_s=0.3)
    changes = result["changes"]
    assert changes["added"] + changes["replaced"] + changes["removed"] >= 5 and result["adapters_at_start"] == 20
    assert result["unexpected_errors"] == {} and result["answered"] > 0
    assert result["deliberate_errors"].get("500 adapter_error", 0) > 0  # the broken directories were asked for
    checks = result["verified"]
    assert checks["checked"] == result["answered"] and checks["mismatches"] == checks["unknown_versions"] == 0
    assert result["requests"] == result["answered"] + sum(result["deliberate_errors"].values())
    section = {"soak": {"date": "d", "machine": describe_machine(), "settings": {}, "duration_s": 1.0,
                        "load_average_before": None, "load_average_after": None, "result": result}}
    assert [g["measured"] for g in goals(section)] == [0, 0, result["rss_growth"]]
    assert "deliberate errors" in render_markdown({"sections": section, "goals": goals(section)})
