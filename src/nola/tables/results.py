"""Finding and checking results.json files (schema in `nola.tables.schema`, scales in eval/README.md).

A run's results.json is the only input of the tables. Every file is checked before it is used:
malformed JSON, a schema other than 1, a missing key or a metric on the wrong scale is a
NolaError naming the file and the key, never a skipped row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nola.errors import NolaError
from nola.layout import RESULTS_NAME
from nola.tables.schema import flatten_metrics, metric_name
from nola.tasks import check_task, get_task

RESULTS_SCHEMA = 1
ANY_SPLIT = "any"

def _check_scales(task: str, metrics: dict[str, float | None], origin: str) -> None:
    """Official-tool ranges (`Task.fractions`, `Task.percents`): E2E fractions; GenerationEval BLEU
    0-100, METEOR a fraction."""
    spec = get_task(task)
    for key, value in metrics.items():
        name = metric_name(key)
        assert value is not None  # results.json metrics are never null (flatten_metrics, allow_null=False)
        if value < 0:
            raise NolaError(f"{origin}: metric 'metrics.{key}' is {value}; metrics are never negative")
        if name in spec.fractions and value > 1:
            raise NolaError(
                f"{origin}: metric 'metrics.{key}' is {value}, but {task} results.json stores {name} as a "
                f"fraction as the official scorer prints it (BLEU 0.70, not 70.4); see eval/README.md"
            )
        if name in spec.percents and value > 100:
            raise NolaError(f"{origin}: metric 'metrics.{key}' is {value}; {task} BLEU is on the 0-100 scale")


def validate_result(record: Any, origin: str) -> dict[str, Any]:
    """Check one results.json object (origin names it in errors) and return it."""
    if not isinstance(record, dict):
        raise NolaError(f"{origin}: the top level must be a JSON object (a run's results.json)")
    if record.get("schema") != RESULTS_SCHEMA:
        raise NolaError(
            f"{origin}: key 'schema' is {record.get('schema')!r}, this version reads schema {RESULTS_SCHEMA}; "
            "re-score the run with this version to rewrite it"
        )
    task = check_task(record.get("task"), origin).name
    for key in ("model", "split"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise NolaError(f"{origin}: key '{key}' must be a non-empty string")
    adapter = record.get("adapter")
    if not isinstance(adapter, dict) or not isinstance(adapter.get("kind"), str):
        raise NolaError(f"{origin}: key 'adapter' must be an object with a string 'kind'")
    params = record.get("trainable_params")
    if isinstance(params, bool) or not isinstance(params, int) or params < 0:
        raise NolaError(f"{origin}: key 'trainable_params' must be a non-negative integer, got {params!r}")
    for key in ("tag", "run_dir", "experiment"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise NolaError(f"{origin}: key '{key}' must be a string or null")
    metrics = flatten_metrics(task, record.get("metrics"), origin, "metrics", allow_null=False)
    _check_scales(task, metrics, origin)
    return record


def validate_results(results: list[Any]) -> list[dict[str, Any]]:
    """Check results.json objects handed over in memory (e.g. by the mini stage); errors name run_dir."""
    checked = []
    for index, result in enumerate(results):
        run_dir = result.get("run_dir") if isinstance(result, dict) else None
        checked.append(validate_result(result, str(run_dir) if run_dir else f"results[{index}]"))
    return checked


def read_result(path: Path) -> dict[str, Any]:
    """Load and check one results.json; its run_dir defaults to the file's directory."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise NolaError(f"{path}: not UTF-8 ({err.reason} at byte {err.start}); re-score the run") from None
    except json.JSONDecodeError as err:
        raise NolaError(
            f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); re-score the run or delete the file"
        ) from None
    validate_result(record, str(path))
    if not record.get("run_dir"):
        record["run_dir"] = str(path.parent)
    return record


@dataclass
class Collected:
    """The results kept for the tables and what the caller should tell the user about the rest."""

    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def collect_results(dirs: list[str | Path], *, only_tag: str | None = None, split: str = "test") -> Collected:
    """Every results.json under `dirs` (recursively, sorted), filtered by tag and split.

    A missing directory or runs of another split are reported in `notes`; a filter by tag that keeps
    nothing is an error (it is almost always a typo).
    """
    collected = Collected()
    files: list[Path] = []
    for directory in map(Path, dirs):
        if not directory.is_dir():
            collected.notes.append(f"results directory {directory} does not exist; nothing read from it")
            continue
        files.extend(sorted(directory.rglob(RESULTS_NAME)))
    records = [read_result(path) for path in files]
    if only_tag is not None:
        records = [record for record in records if record.get("tag") == only_tag]
        if not records:
            raise NolaError(f"--only-tag {only_tag!r} matched none of the {len(files)} results.json found")
    if split != ANY_SPLIT:
        other = [record for record in records if record["split"] != split]
        if other:
            collected.notes.append(f"left out {len(other)} run(s) scored on a split other than {split!r} "
                                   f"(use --split {ANY_SPLIT} to include them)")
        records = [record for record in records if record["split"] == split]
    if not files:
        collected.notes.append("no results.json found; the tables hold the published numbers only")
    collected.records = records
    return collected
