"""The prepared examples: `data/<task>/<split>.jsonl`, one `{"context", "completion"}` per line.

WebNLG lines also carry `"category"` and `"seen"` (whether the category is one of the ten seen in
training). This is the layout of LoRA's `format_converting_*.py` output (Hu et al.,
2022, examples/NLG), with WebNLG's `"cate"` flag renamed `"seen"` and the category name kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nola.data.config import check_split, check_task_name
from nola.fileio import json_field, read_jsonl, write_text_atomic
from nola.errors import NolaError


@dataclass(frozen=True)
class Example:
    """One training/evaluation pair: the linearised input and its reference text."""

    context: str
    completion: str
    category: str | None = None
    seen: bool | None = None

    def to_json(self) -> dict:
        record: dict = {"context": self.context, "completion": self.completion}
        if self.category is not None:
            record["category"] = self.category
            record["seen"] = self.seen
        return record


@dataclass(frozen=True)
class ConvertedSplit:
    """A raw file's examples plus counts of what the paper's conventions leave out or flag.

    notes: e.g. {"lexicalisations_not_good": 77} (WebNLG keeps comment == "good" only) or
        {"empty_completions": 1} (kept, as LoRA keeps them); reported in the task manifest.
    """

    examples: list[Example]
    notes: dict[str, int]


def linearize_triples(triples: list[tuple[str, str, str]]) -> str:
    """`subj : property : obj | subj : property : obj ...`, as LoRA's WebNLG and DART converters write it."""
    return " | ".join(f"{subject} : {relation} : {obj}" for subject, relation, obj in triples)


def split_path(data_dir: str | Path, task: str, split: str) -> Path:
    """Where a prepared split lives: data_dir/<task>/<split>.jsonl."""
    return Path(data_dir) / check_task_name(task) / f"{check_split(split)}.jsonl"


def render_examples(examples: list[Example]) -> str:
    """The .jsonl text of a split: one JSON object per line."""
    return "".join(json.dumps(example.to_json(), ensure_ascii=False) + "\n" for example in examples)


def write_examples(path: str | Path, examples: list[Example]) -> None:
    """Write examples as JSON lines, atomically."""
    write_text_atomic(path, render_examples(examples))


def parse_examples(path: Path) -> list[Example]:
    """Read a prepared .jsonl file; a bad line raises a NolaError naming the file and line."""
    examples = []
    for where, record in read_jsonl(path):
        context = json_field(record, "context", str, where=where, path=path)
        completion = json_field(record, "completion", str, where=where, path=path)
        category, seen = read_category(record, where, path)
        examples.append(Example(context, completion, category, seen))
    return examples


def read_category(record: dict, where: str, path: Path) -> tuple[str | None, bool | None]:
    """The optional WebNLG `category` and `seen` fields of a prepared record."""
    if "category" not in record:
        return None, None
    return (
        json_field(record, "category", str, where=where, path=path),
        json_field(record, "seen", bool, where=where, path=path),
    )


def load_examples(data_dir: str | Path, task: str, split: str) -> list[Example]:
    """The prepared examples of one split, in file order (run `make data` first)."""
    path = split_path(data_dir, task, split)
    if not path.is_file():
        raise NolaError(
            f"{path} not found; prepare the data with `make data` "
            f"(python -m nola.data.prepare --tasks {task} --data-dir {data_dir})"
        )
    return parse_examples(path)
