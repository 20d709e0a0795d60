"""The papers' reference numbers (eval/published.json): loading, checking, matching our runs.

Each row keeps the numbers as its source prints them (see `nola.tables.schema` for the scales),
its source (paper, table, row, where it was read) and an optional `match` rule that says which of
our results.json reproduce it. A rule maps dotted results.json keys to values that must be equal,
except `trainable_params`, which matches within +-5 %: the papers round their counts (LoRA
Table 3 prints 0.35M for GPT-2 M r=4, which is 393,216 by its own formula, so LoRA rows match
on kind and rank instead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nola.errors import NolaError
from nola.tables.schema import check_number, dotted_get, flatten_metrics
from nola.tasks import check_task, get_task

PUBLISHED_SCHEMA = 1
DEFAULT_PUBLISHED = Path(__file__).resolve().parents[3] / "eval" / "published.json"
PARAMS_TOLERANCE = 0.05
SOURCE_FIELDS = ("paper", "table", "row", "where")


@dataclass(frozen=True)
class Paper:
    short: str
    citation: str
    url: str


@dataclass(frozen=True)
class PublishedRow:
    """One row of a paper's table; metrics flattened ("unseen.BLEU" for WebNLG), None = not printed."""

    task: str
    model: str
    method: str
    params_text: str
    trainable_params: int
    metrics: dict[str, float | None]
    plus_minus: dict[str, float]
    match: dict[str, Any]
    paper: Paper
    table: str
    row: str
    where: str
    note: str

    def matches(self, result: dict[str, Any]) -> bool:
        """Whether results.json `result` reproduces this row (same task, model and match rule)."""
        if not self.match or result["task"] != self.task or result["model"] != self.model:
            return False
        for path, wanted in self.match.items():
            value = dotted_get(result, path)
            if path == "trainable_params":
                if not isinstance(value, int) or abs(value - wanted) > PARAMS_TOLERANCE * wanted:
                    return False
            elif value != wanted:
                return False
        return True


@dataclass(frozen=True)
class Published:
    papers: dict[str, Paper]
    rows: tuple[PublishedRow, ...]


def _text(value: Any, origin: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NolaError(f"{origin}: key '{key}' must be a non-empty string")
    return value


def _paper(name: str, entry: Any, origin: str) -> Paper:
    where = f"{origin}: papers.{name}"
    if not isinstance(entry, dict):
        raise NolaError(f"{where} must be an object with short, citation, url")
    return Paper(*(_text(entry.get(key), origin, f"papers.{name}.{key}") for key in ("short", "citation", "url")))


def _plus_minus(task: str, spread: Any, metrics: dict[str, float | None], where: str) -> dict[str, float]:
    """The paper's +- spreads, shaped like 'metrics' (a subset of it), flattened the same way."""
    shape_error = NolaError(f"{where}: key 'plus_minus' must be an object shaped like 'metrics'")
    if not isinstance(spread, dict):
        raise shape_error
    if get_task(task).groups:
        if not all(isinstance(group, dict) for group in spread.values()):
            raise shape_error
        spread = {f"{split}.{name}": value for split, group in spread.items() for name, value in group.items()}
    flat: dict[str, float] = {}
    for key, value in spread.items():
        if key not in metrics:
            raise NolaError(f"{where}: key 'plus_minus.{key}' names no metric of task {task}")
        flat[key] = check_number(value, where, f"plus_minus.{key}")
    return flat


def _row(entry: Any, index: int, papers: dict[str, Paper], origin: str) -> PublishedRow:
    where = f"{origin}: rows[{index}]"
    if not isinstance(entry, dict):
        raise NolaError(f"{where} must be an object")
    task = check_task(entry.get("task"), where).name
    params = entry.get("trainable_params")
    if isinstance(params, bool) or not isinstance(params, int) or params <= 0:
        raise NolaError(f"{where}: key 'trainable_params' must be a positive integer")
    metrics = flatten_metrics(task, entry.get("metrics"), where, "metrics", allow_null=True)
    plus_minus = _plus_minus(task, entry.get("plus_minus", {}), metrics, where)
    match = entry.get("match", {})
    if not isinstance(match, dict):
        raise NolaError(f"{where}: key 'match' must be an object of dotted results.json keys")
    source = entry.get("source")
    if not isinstance(source, dict):
        raise NolaError(f"{where}: key 'source' must be an object with {', '.join(SOURCE_FIELDS)}")
    paper_key, table, row, found_at = (_text(source.get(key), where, f"source.{key}") for key in SOURCE_FIELDS)
    if paper_key not in papers:
        raise NolaError(f"{where}: source.paper {paper_key!r} is not listed under 'papers'")
    note = source.get("note", "")
    return PublishedRow(
        task=task,
        model=_text(entry.get("model"), where, "model"),
        method=_text(entry.get("method"), where, "method"),
        params_text=_text(entry.get("params"), where, "params"),
        trainable_params=params,
        metrics=metrics,
        plus_minus=plus_minus,
        match=match,
        paper=papers[paper_key],
        table=table,
        row=row,
        where=found_at,
        note=note if isinstance(note, str) else "",
    )


def load_published(path: str | Path = DEFAULT_PUBLISHED) -> Published:
    """Read and check eval/published.json; any problem is a NolaError naming the file and the row."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NolaError(f"{path}: published numbers not found; pass --published PATH or --no-published") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NolaError(f"{path}: not valid UTF-8 JSON ({err}); restore it from git") from None
    origin = str(path)
    if not isinstance(document, dict) or document.get("schema") != PUBLISHED_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else None
        raise NolaError(f"{origin}: schema {found!r} is not supported (expected {PUBLISHED_SCHEMA})")
    entries = document.get("papers")
    if not isinstance(entries, dict) or not entries:
        raise NolaError(f"{origin}: key 'papers' must be a non-empty object")
    papers = {name: _paper(name, entry, origin) for name, entry in entries.items()}
    rows = document.get("rows")
    if not isinstance(rows, list):
        raise NolaError(f"{origin}: key 'rows' must be a list")
    return Published(papers=papers, rows=tuple(_row(entry, i, papers, origin) for i, entry in enumerate(rows)))
