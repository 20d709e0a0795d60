"""Reference groups for scoring, and the files the official scorers read.

References are grouped by identical context in order of first appearance, as LoRA's
`gpt2_decode.py` groups them (microsoft/LoRA examples/NLG): E2E test has 630 groups, WebNLG test 1,862 (971 seen,
891 unseen), DART test 4,159. Each reference is `.strip()`-ed, as there.

Files written per task and evaluation split (`data/<task>/`):
- `<split>_references.jsonl`: one group per line, raw text (`load_reference_groups`).
- `<split>_contexts.txt`: one context per group, the order of every file below and of hypotheses.
- E2E: `<split>_refs.txt`, tuetschek/e2e-metrics' multi-reference format: a group's references one
  per line, groups separated by an empty line (raw text; the scorer lowercases and tokenizes).
- WebNLG, DART: `<split>_refs/reference0` .. `reference5`, LoRA's `--ref_type webnlg|dart --ref_num 6
  --tokenize --lower` convention for GenerationEval (eval/README.md): lowercased, split with
  `re.split('(\\W)')`, one line per group; a group with fewer than 6 references repeats its first,
  one with more keeps its first 6.
- WebNLG: `<split>_categories.txt` (`seen` or `unseen` per group) and the reference files restricted
  to each subset in `<split>_refs_seen/` and `<split>_refs_unseen/` (LoRA's `--filter seen|unseen`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from nola.data.config import check_split, check_task_name
from nola.data.tasks import task_spec
from nola.fileio import expect_type, json_field, read_jsonl, render_lines, write_text_atomic
from nola.data.records import Example, read_category
from nola.errors import NolaError

GEM_NUM_REFS = 6  # LoRA examples/NLG README: gpt2_decode.py --ref_num 6 for WebNLG and DART
SUBSETS = ("seen", "unseen")
EVAL_SPLITS = ("valid", "test")
NON_WORD = re.compile(r"(\W)")


@dataclass(frozen=True)
class ReferenceGroup:
    """All references of one context (raw text), with the WebNLG category and seen flag."""

    context: str
    references: list[str]
    category: str | None = None
    seen: bool | None = None


@dataclass(frozen=True)
class ReferenceFiles:
    """Paths of one split's reference files; `references` holds reference0..5 (WebNLG, DART).

    reference_prefix: the `-R` argument of GenerationEval's eval.py (`<dir>/reference`).
    subsets: WebNLG's {"seen": (reference0..5), "unseen": (...)}.
    """

    task: str
    split: str
    groups: Path
    contexts: Path
    multi_ref: Path | None = None
    references: tuple[Path, ...] = ()
    categories: Path | None = None
    subsets: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    @property
    def reference_prefix(self) -> Path | None:
        return self.references[0].parent / "reference" if self.references else None

    def all_paths(self) -> list[Path]:
        paths = [self.groups, self.contexts, *self.references]
        paths += [p for p in (self.multi_ref, self.categories) if p is not None]
        return paths + [p for subset in self.subsets.values() for p in subset]


def gem_tokenize(text: str) -> str:
    """Lowercase and split on every non-word character (LoRA gpt2_decode.py `--tokenize --lower`)."""
    return " ".join(" ".join(NON_WORD.split(text.lower())).split())


def group_references(examples: list[Example]) -> list[ReferenceGroup]:
    """Group the examples' completions by identical context, in order of first appearance.

    A group takes the category of its first example (a WebNLG context can recur under another
    category, e.g. in dev); its examples must agree on seen/unseen.
    """
    groups: dict[str, ReferenceGroup] = {}
    for example in examples:
        group = groups.get(example.context)
        if group is None:
            group = ReferenceGroup(example.context, [], example.category, example.seen)
            groups[example.context] = group
        elif group.seen != example.seen:
            raise NolaError(
                f"context {example.context[:80]!r} appears in a seen and an unseen category "
                f"({group.category!r}, {example.category!r}); its references cannot be split by category"
            )
        group.references.append(example.completion.strip())
    return list(groups.values())


def _refs_dir(task_dir: Path, split: str, subset: str | None = None) -> Path:
    return task_dir / (f"{split}_refs" if subset is None else f"{split}_refs_{subset}")


def _reference_paths(directory: Path) -> tuple[Path, ...]:
    return tuple(directory / f"reference{index}" for index in range(GEM_NUM_REFS))


def planned_reference_files(data_dir: str | Path, task: str, split: str) -> ReferenceFiles:
    """The paths `write_reference_files` produces for one split (existing or not)."""
    task_dir = Path(data_dir) / check_task_name(task)
    if check_split(split) not in EVAL_SPLITS:
        raise NolaError(f"reference files exist for {' and '.join(EVAL_SPLITS)} only, not {split!r}")
    common = dict(
        task=task,
        split=split,
        groups=task_dir / f"{split}_references.jsonl",
        contexts=task_dir / f"{split}_contexts.txt",
    )
    spec = task_spec(task)
    if spec.multi_reference:
        return ReferenceFiles(**common, multi_ref=task_dir / f"{split}_refs.txt")
    if not spec.categories:
        return ReferenceFiles(**common, references=_reference_paths(_refs_dir(task_dir, split)))
    return ReferenceFiles(
        **common,
        references=_reference_paths(_refs_dir(task_dir, split)),
        categories=task_dir / f"{split}_categories.txt",
        subsets={name: _reference_paths(_refs_dir(task_dir, split, name)) for name in SUBSETS},
    )


def render_reference_files(
    data_dir: str | Path, task: str, split: str, groups: list[ReferenceGroup]
) -> tuple[ReferenceFiles, dict[Path, str]]:
    """The paths and contents of every reference file of one split, checked but not yet written."""
    files = planned_reference_files(data_dir, task, split)
    if files.categories is not None and any(group.category is None for group in groups):
        raise NolaError(f"{task} {split}: every reference group needs a category to write {files.categories}")
    contents = {
        files.groups: render_lines(
            [json.dumps(_group_json(group), ensure_ascii=False) for group in groups], files.groups
        ),
        files.contexts: render_lines([group.context for group in groups], files.contexts),
    }
    if files.multi_ref is not None:
        lines = [line for group in groups for line in [*group.references, ""]]
        contents[files.multi_ref] = render_lines(lines, files.multi_ref)
    contents.update(_render_gem_references(files.references, groups))
    if files.categories is not None:
        contents[files.categories] = render_lines(
            ["seen" if group.seen else "unseen" for group in groups], files.categories
        )
        for name, paths in files.subsets.items():
            contents.update(
                _render_gem_references(paths, [group for group in groups if group.seen == (name == "seen")])
            )
    return files, contents


def write_reference_files(data_dir: str | Path, task: str, split: str, groups: list[ReferenceGroup]) -> ReferenceFiles:
    """Write every reference file of one split (nothing is written if any content is invalid)."""
    files, contents = render_reference_files(data_dir, task, split, groups)
    for path, text in contents.items():
        write_text_atomic(path, text)
    return files


def _group_json(group: ReferenceGroup) -> dict:
    record: dict = {"context": group.context, "references": group.references}
    if group.category is not None:
        record["category"] = group.category
        record["seen"] = group.seen
    return record


def _render_gem_references(paths: tuple[Path, ...], groups: list[ReferenceGroup]) -> dict[Path, str]:
    return {
        path: render_lines(
            [gem_tokenize(g.references[index] if index < len(g.references) else g.references[0]) for g in groups], path
        )
        for index, path in enumerate(paths)
    }


def reference_files(data_dir: str | Path, task: str, split: str) -> ReferenceFiles:
    """The official-format reference files of a prepared split; a missing one is a NolaError."""
    files = planned_reference_files(data_dir, task, split)
    for path in files.all_paths():
        if not path.is_file():
            raise NolaError(f"{path} not found; prepare the data with `make data` (python -m nola.data.prepare)")
    return files


def load_reference_groups(data_dir: str | Path, task: str, split: str) -> list[ReferenceGroup]:
    """The raw reference groups of a prepared valid/test split, in order of first appearance."""
    path = planned_reference_files(data_dir, task, split).groups
    groups = []
    for where, record in read_jsonl(path):
        context = json_field(record, "context", str, where=where, path=path)
        references = json_field(record, "references", list, where=where, path=path)
        if not references:
            raise NolaError(f"{path}: {where} has no references; rerun `make data`")
        for index, reference in enumerate(references):
            expect_type(reference, str, where=f"{where}.references[{index}]", path=path)
        category, seen = read_category(record, where, path)
        groups.append(ReferenceGroup(context, references, category, seen))
    return groups
