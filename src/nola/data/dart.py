"""DART v1.1.1 (Nan et al., NAACL 2021) from `dart-v1.1.1-full-{train,dev,test}.json`.

The file is a list of `{"tripleset": [[subj, rel, obj], ...], "annotations": [{"text", ...}]}`.
As in LoRA's `format_converting_dart.py` (microsoft/LoRA examples/NLG): the relation is lowercased, the triples are
linearised as `subj : rel : obj | ...`, and every annotation is one example (so one context can have
many references). An empty annotation text is kept, as LoRA keeps it (the test split has one), and
counted in the task manifest.
"""

from __future__ import annotations

from pathlib import Path

from nola.fileio import expect_type, json_field, read_json
from nola.data.records import ConvertedSplit, Example, linearize_triples
from nola.errors import NolaError

RAW_FILES = {
    "train": "dart/dart-v1.1.1-full-train.json",
    "valid": "dart/dart-v1.1.1-full-dev.json",
    "test": "dart/dart-v1.1.1-full-test.json",
}


def convert_dart(path: str | Path) -> ConvertedSplit:
    """Read one DART split; a missing or mistyped key raises a NolaError naming its key path."""
    path = Path(path)
    entries = expect_type(read_json(path), list, where="the top level", path=path)
    examples = []
    empty = 0
    for index, entry in enumerate(entries):
        where = f"[{index}]"
        expect_type(entry, dict, where=where, path=path)
        context = linearize_triples(read_triples(entry, where, path))
        annotations = json_field(entry, "annotations", list, where=where, path=path)
        if not annotations:
            raise NolaError(f"{path}: {where}.annotations is empty; every entry needs at least one text")
        for ann_index, annotation in enumerate(annotations):
            ann_where = f"{where}.annotations[{ann_index}]"
            expect_type(annotation, dict, where=ann_where, path=path)
            text = json_field(annotation, "text", str, where=ann_where, path=path)
            empty += not text.strip()
            examples.append(Example(context, text))
    if not examples:
        raise NolaError(f"{path}: no entries; is this the right file?")
    return ConvertedSplit(examples=examples, notes={"empty_completions": empty})


def read_triples(entry: dict, where: str, path: Path) -> list[tuple[str, str, str]]:
    """The entry's tripleset as (subject, relation lowercased, object)."""
    triples = json_field(entry, "tripleset", list, where=where, path=path)
    if not triples:
        raise NolaError(f"{path}: {where}.tripleset is empty")
    result = []
    for index, triple in enumerate(triples):
        triple_where = f"{where}.tripleset[{index}]"
        expect_type(triple, list, where=triple_where, path=path)
        if len(triple) != 3 or not all(isinstance(part, str) for part in triple):
            raise NolaError(f"{path}: {triple_where} should be [subject, relation, object] strings, found {triple!r}")
        subject, relation, obj = triple
        result.append((subject, relation.lower(), obj))
    return result
