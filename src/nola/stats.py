"""Uncertainty of reported numbers: seed spread, bootstrap intervals and paired bootstrap tests.

What the tables (`nola.tables`) and the mini report print besides the scores:

- seed spread: runs that differ only in `train.seed` form one row, mean ± sample standard
  deviation (n - 1 in the denominator) with n, for every metric (`mean_sd`);
- test-set uncertainty: a percentile bootstrap over test contexts (Efron & Tibshirani 1993;
  Koehn 2004 for BLEU): draw `resamples` test sets of the same size with replacement,
  `numpy.random.default_rng(seed).integers(0, n_contexts, size=(resamples, n_contexts))`, recompute
  corpus BLEU on each from the per-context statistics results.json stores (`bleu_segments` in
  `nola.metrics`), and take the 2.5th and 97.5th percentiles (`numpy.percentile`, linear
  interpolation). For a row of several seeds each resample scores every seed's hypotheses on the
  same contexts and averages them: the interval is that of the seed mean over test sets, the sd
  column is the spread over seeds; neither contains the other;
- a paired bootstrap test (Koehn 2004, "Statistical significance tests for machine translation
  evaluation"): both rows are scored on the same resampled contexts; with Δ_b the BLEU difference on
  resample b, the two-sided p-value is min(1, 2·min(#{Δ_b ≤ 0}, #{Δ_b ≥ 0}) / resamples). It asks
  whether the test set could reverse the difference, not whether another seed could.

Only BLEU is bootstrapped: it is the papers' headline metric and a function of per-context counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nola.errors import NolaError
from nola.metrics.bleu_nist import bleu_from_sums, corpus_bleu, segment_sums_row

RESAMPLES = 1000
BOOTSTRAP_SEED = 12345
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """mean ± sd over n values; sd is None for a single value."""

    mean: float
    sd: float | None
    n: int


def mean_sd(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation (denominator n - 1) of `values`."""
    if not values:
        raise ValueError("mean_sd of no values")
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1)) if n > 1 else None
    return Spread(mean, sd, n)


def resample_indices(n_contexts: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, n_contexts) context indices drawn with replacement (see the module docstring)."""
    if n_contexts < 1 or resamples < 1:
        raise ValueError("the bootstrap needs at least one context and one resample")
    return np.random.default_rng(seed).integers(0, n_contexts, size=(resamples, n_contexts))


def _sums_table(record: dict[str, Any]) -> np.ndarray:
    """(contexts, 10) int64: each context's contribution to corpus BLEU's sums (`segment_sums_row`)."""
    variant = record["variant"]
    return np.array([segment_sums_row(variant, segment) for segment in record["segments"]], dtype=np.int64)


def record_bleu(record: dict[str, Any]) -> float:
    """BLEU on results.json's scale from one run's per-context statistics (all contexts)."""
    return float(record["scale"]) * corpus_bleu(record["variant"], record["segments"])


def bleu_on(record: dict[str, Any], sums: Sequence[float]) -> float:
    """BLEU on results.json's scale from corpus sums of one run's statistics."""
    return float(record["scale"]) * bleu_from_sums(record["variant"], sums)


def bootstrap_bleu(runs: Sequence[dict[str, Any]], indices: np.ndarray) -> np.ndarray:
    """BLEU averaged over `runs` (their `bleu_segments` records) on every resample of `indices`."""
    check_same_contexts(runs)
    n_contexts = len(runs[0]["segments"])
    # weights[b, i]: how often context i is drawn in resample b; sums = weights @ per-context rows
    weights = np.zeros((indices.shape[0], n_contexts), dtype=np.int64)
    np.add.at(weights, (np.arange(indices.shape[0])[:, None], indices), 1)
    total = np.zeros(indices.shape[0], dtype=np.float64)
    for run in runs:
        sums = weights @ _sums_table(run)
        total += np.array([bleu_on(run, row) for row in sums])
    return total / len(runs)


def check_same_contexts(runs: Sequence[dict[str, Any]]) -> None:
    if not runs:
        raise ValueError("no runs to bootstrap")
    counts = {len(run["segments"]) for run in runs}
    if len(counts) != 1:
        raise NolaError(f"cannot bootstrap runs scored on different numbers of contexts ({sorted(counts)})")


def bleu_interval(runs: Sequence[dict[str, Any]], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                  level: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile bootstrap interval of the (seed-mean) BLEU of `runs` over test contexts."""
    samples = bootstrap_bleu(runs, resample_indices(len(runs[0]["segments"]), resamples, seed))
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap_p(runs: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]],
                       resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided paired bootstrap p-value of the (seed-mean) BLEU difference `runs` − `baseline`."""
    check_same_contexts([*runs, *baseline])
    indices = resample_indices(len(runs[0]["segments"]), resamples, seed)
    delta = bootstrap_bleu(runs, indices) - bootstrap_bleu(baseline, indices)
    extreme = min(int(np.sum(delta <= 0)), int(np.sum(delta >= 0)))
    return min(1.0, 2.0 * extreme / resamples)


def bootstrap_record(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What results.json stores about its BLEU interval (the settings travel with the numbers)."""
    low, high = bleu_interval(runs)
    return {"low": low, "high": high, "level": CONFIDENCE, "resamples": RESAMPLES, "seed": BOOTSTRAP_SEED,
            "method": "percentile bootstrap over test contexts"}
