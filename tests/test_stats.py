"""Uncertainty (nola.stats) and its place in the tables, against values computed by hand here.

The bootstrap is written out plainly in this file (a loop over resamples, BLEU from its formula),
with the documented draw: numpy.random.default_rng(seed).integers(0, n, size=(resamples, n)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nola.tasks import bleu_segments
from nola.metrics.bleu_nist import e2e_bleu, multi_bleu_detok
from nola.metrics.tokenize import mteval_13a, mteval_13a_perl
from nola.data.references import gem_tokenize
from nola.stats import (
    BOOTSTRAP_SEED,
    RESAMPLES,
    bleu_interval,
    mean_sd,
    paired_bootstrap_p,
    record_bleu,
)
from nola.tables import build_tables


def test_mean_and_sample_sd_by_hand():
    spread = mean_sd([1.0, 2.0, 4.0])
    # mean 7/3; deviations -4/3, -1/3, 5/3; squares sum 42/9; / (n - 1) = 7/3
    assert spread.mean == pytest.approx(7 / 3, rel=1e-15) and spread.n == 3
    assert spread.sd == pytest.approx(math.sqrt(7 / 3), rel=1e-15)
    single = mean_sd([0.7])
    assert single.mean == 0.7 and single.sd is None and single.n == 1


def random_segments(seed: int, count: int) -> list[list[int]]:
    """Plausible per-context statistics: hits_n <= max(len - n + 1, 0), reference lengths near the output's."""
    rng = np.random.default_rng(seed)
    segments = []
    for _ in range(count):
        length = int(rng.integers(0, 30))
        hits = [int(rng.integers(0, max(length - n + 1, 0) + 1)) for n in range(1, 5)]
        segments.append([*hits, length, int(rng.integers(5, 30))])
    return segments


def plain_pymteval_bleu(segments) -> float:
    """pymteval BLEU written out: totals len - n + 1, zero hits floored at 1e-15, zero totals at 1e-9,
    brevity penalty when the candidate's length (its unigram total) <= the reference length."""
    hits = [sum(s[n] for s in segments) for n in range(4)]
    totals = [sum(s[4] - n for s in segments) for n in range(4)]
    reference = sum(s[5] for s in segments)
    penalty = math.exp(1 - reference / (totals[0] or 1e-5)) if totals[0] <= reference else 1.0
    return penalty * math.exp(sum(math.log(max(h, 1e-15) / max(t, 1e-9)) for h, t in zip(hits, totals)) / 4)


def plain_bootstrap(runs, seed=BOOTSTRAP_SEED, resamples=RESAMPLES) -> list[float]:
    n = len(runs[0]["segments"])
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = []
    for row in draws:
        scores = [100 * plain_pymteval_bleu([run["segments"][i] for i in row]) for run in runs]
        values.append(sum(scores) / len(scores))
    return values


def record(segments) -> dict:
    return {"variant": "pymteval", "scale": 100.0, "segments": segments}


def test_bootstrap_interval_equals_a_plain_bootstrap():
    run = record(random_segments(1, 40))
    low, high = bleu_interval([run])
    expected = np.percentile(plain_bootstrap([run]), [2.5, 97.5])
    assert low == pytest.approx(expected[0], rel=1e-12) and high == pytest.approx(expected[1], rel=1e-12)
    assert low < record_bleu(run) < high
    assert record_bleu(run) == pytest.approx(100 * plain_pymteval_bleu(run["segments"]), rel=1e-12)
    # a row of two seeds: each resample averages both runs' BLEU on the same contexts
    runs = [run, record(random_segments(2, 40))]
    expected = np.percentile(plain_bootstrap(runs), [2.5, 97.5])
    assert bleu_interval(runs) == pytest.approx(tuple(expected), rel=1e-12)


def test_paired_bootstrap_p_value_by_hand():
    a, b = record(random_segments(3, 40)), record(random_segments(4, 40))
    deltas = np.array(plain_bootstrap([a])) - np.array(plain_bootstrap([b]))
    expected = min(1.0, 2 * min(int((deltas <= 0).sum()), int((deltas >= 0).sum())) / RESAMPLES)
    assert paired_bootstrap_p([a], [b]) == pytest.approx(expected, abs=1e-15)
    assert paired_bootstrap_p([a], [a]) == 1.0  # identical systems: every difference is 0
    # a system that wins on every context: no resample reverses the difference
    better = record([[s[4], max(s[4] - 1, 0), max(s[4] - 2, 0), max(s[4] - 3, 0), s[4], s[4]] for s in b["segments"]])
    assert paired_bootstrap_p([better], [b]) == 0.0


def test_bleu_segments_reproduce_each_tasks_bleu():
    references = [["The Mill is a pub near the river.", "A riverside pub, The Mill."], ["Zizzi serves cheap food."]]
    hypotheses = ["The Mill is a pub by the river.", "Zizzi is cheap."]
    e2e = bleu_segments("e2e", references, hypotheses)
    lower = lambda text: [token.lower() for token in mteval_13a(text)]  # noqa: E731
    assert e2e["variant"] == "pymteval" and e2e["scale"] == 1.0 and len(e2e["segments"]) == 2
    assert record_bleu(e2e) == pytest.approx(
        e2e_bleu([[lower(r) for r in refs] for refs in references], [lower(h) for h in hypotheses]), rel=1e-12)
    gem = bleu_segments("dart", references, hypotheses)
    six = [[refs[i] if i < len(refs) else refs[0] for i in range(6)] for refs in references]  # LoRA --ref_num 6
    tokens = lambda text: mteval_13a_perl(gem_tokenize(text))  # noqa: E731
    assert gem["variant"] == "multi-bleu-detok" and gem["scale"] == 100.0
    assert record_bleu(gem) == pytest.approx(
        100 * multi_bleu_detok([[tokens(r) for r in refs] for refs in six], [tokens(h) for h in hypotheses]), rel=1e-12)


def e2e_result(bleu: float, seed: int | None, *, key: str | None, kind="nola", rank=8, segments=None,
               stop="finished") -> dict:
    adapter = {"kind": kind, "rank": rank, "num_basis_a": 32, "num_basis_b": 32} if kind == "nola" else \
        {"kind": kind, "rank": rank}
    return {
        "schema": 1, "experiment": f"mini/{kind}{rank}", "task": "e2e", "split": "test", "model": "mini",
        "adapter": adapter, "trainable_params": 512 if kind == "nola" else 8192 * rank // 4,
        "metrics": {"BLEU": bleu, "NIST": 2.0, "METEOR": 0.3, "ROUGE_L": 0.5, "CIDEr": 1.0},
        "run_dir": f"runs/{kind}{rank}/seed-{seed}", "tag": f"mini/{kind}{rank}/seed-{seed}", "seed": seed,
        "config_key": key, "training": {"stop_reason": stop}, "selection": {"epoch": 2},
        "scored": {"references_sha256": "same"},
        # results.json keeps E2E BLEU as a fraction (scale 1); the table prints it x100
        "bleu_segments": {"variant": "pymteval", "scale": 1.0, "segments": segments} if segments else None,
    }


def test_rows_that_differ_only_in_seed_are_one_mean_sd_row():
    runs = [e2e_result(b, s, key="nola-k32") for b, s in ((0.60, 110), (0.62, 111), (0.67, 112))]
    lines = build_tables(runs, None)["md"].splitlines()
    [row] = [line for line in lines if line.startswith("| **NOLA")]
    # BLEU x100: mean 63.0, sd sqrt((3² + 1² + 4²) / 2) = 3.61; NIST 2.00 ± 0 over three equal values
    assert "| 63.0±3.6 | 2.00±0.00 |" in row and "| 3 |" in row
    assert "seeds 110, 111, 112" in row and "epochs 2, 2, 2" in row
    # another configuration is another row
    other = e2e_result(0.5, 110, key="nola-other")
    assert sum(line.startswith("| **NOLA") for line in build_tables([*runs, other], None)["md"].splitlines()) == 2


def test_interval_p_value_and_incomplete_mark_in_the_table():
    lora_segments = random_segments(5, 30)
    nola_segments = random_segments(6, 30)
    lora = e2e_result(0.5, 110, key="lora", kind="lora", rank=4, segments=lora_segments)
    lora_r1 = e2e_result(0.4, 110, key="lora1", kind="lora", rank=1, segments=random_segments(7, 30))
    nola = e2e_result(0.6, 110, key="nola", segments=nola_segments, stop="max_time")
    lines = build_tables([lora, lora_r1, nola], None)["md"].splitlines()
    [lora_row] = [line for line in lines if line.startswith("| **LoRA (r=4)")]
    [nola_row] = [line for line in lines if line.startswith("| **NOLA")]
    low, high = np.percentile(plain_bootstrap([record(lora_segments)]), [2.5, 97.5])
    assert f"| [{low:.1f}, {high:.1f}] | ref |" in lora_row  # LoRA r=4, the highest rank, is the reference
    deltas = np.array(plain_bootstrap([record(nola_segments)])) - np.array(plain_bootstrap([record(lora_segments)]))
    p = min(1.0, 2 * min(int((deltas <= 0).sum()), int((deltas >= 0).sum())) / RESAMPLES)
    assert (f"| {p:.3f} |" if p >= 0.001 else "| <0.001 |") in nola_row
    assert nola_row.startswith("| **NOLA (r=8, k=32, l=32) (ours) †**")
    assert any(line.startswith("† stopped by its wall-time safety limit") for line in lines)
