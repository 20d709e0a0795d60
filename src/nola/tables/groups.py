"""Our runs as table rows: runs that differ only in their seed form one row.

Two results.json belong to the same row when their `config_key` is equal (`nola.pipeline.config_key`:
the whole recipe, task, split, search and base, without train.seed); a result without one (written
before seeds were recorded) is a row of its own. A row reports, per metric, the mean ± sample sd
over its runs and n (`nola.stats.mean_sd`), the bootstrap interval of its BLEU and, beside the
LoRA row of its table, a paired bootstrap p-value (`nola.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nola.stats import Spread, mean_sd
from nola.tables.schema import flatten_metrics

TIME_STOP = "max_time"  # train_metrics.json stop_reason of a run its wall-time safety limit cut short


@dataclass(frozen=True)
class RunGroup:
    """One row's runs (same configuration, different seeds), in the order they were found."""

    runs: tuple[dict[str, Any], ...]

    @property
    def first(self) -> dict[str, Any]:
        return self.runs[0]

    @property
    def task(self) -> str:
        return self.first["task"]

    @property
    def n(self) -> int:
        return len(self.runs)

    def spreads(self) -> dict[str, Spread]:
        """Flat metric key -> mean ± sd over the runs, on results.json's scale."""
        flats = [flatten_metrics(self.task, run["metrics"], str(run.get("run_dir")), "metrics", allow_null=False)
                 for run in self.runs]
        return {key: mean_sd([flat[key] for flat in flats]) for key in flats[0]}

    @property
    def incomplete(self) -> bool:
        """Whether the wall-time safety limit stopped any of the runs before its step budget."""
        return any((run.get("training") or {}).get("stop_reason") == TIME_STOP for run in self.runs)

    @property
    def seeds(self) -> list[int | None]:
        return [run.get("seed") for run in self.runs]

    @property
    def epochs(self) -> list[int | None]:
        """The epoch each run reports (`selection` in results.json), None where not recorded."""
        return [(run.get("selection") or {}).get("epoch") for run in self.runs]

    def bleu_segments(self) -> list[dict[str, Any]] | None:
        """Every run's per-context BLEU statistics, or None when a run has none (an older results.json)."""
        records = [run.get("bleu_segments") for run in self.runs]
        return None if any(record is None for record in records) else records

    @property
    def references_sha256(self) -> str | None:
        return (self.first.get("scored") or {}).get("references_sha256")


def group_runs(results: list[dict[str, Any]]) -> list[RunGroup]:
    """Rows of runs sharing a config_key (see the module docstring), in order of first appearance."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for index, result in enumerate(results):
        key = result.get("config_key") or f"run {index}"
        rows.setdefault(key, []).append(result)
    return [RunGroup(tuple(runs)) for runs in rows.values()]
