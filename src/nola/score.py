"""Score a hypotheses file the way the papers' official tools do; print the scores as one JSON object.

    python -m nola.score --task e2e --refs test_refs.txt --hyps hyps.txt [--out scores.json]
    python -m nola.score --task webnlg --refs refs/reference0 ... refs/reference5 --hyps hyps.txt \\
        [--categories test_categories.txt] [--out scores.json]
    python -m nola.score --task dart --refs refs/reference0 ... refs/reference5 --hyps hyps.txt

E2E (tuetschek/e2e-metrics `measure_scores.py -p`): REFS holds each group's references one per line,
groups separated by an empty line (a file without empty lines is one reference per instance, as
there); HYPS one line per group. WebNLG/DART (GenerationEval `eval.py -nr 6`): one reference file per
reference index, one line per instance. CATEGORIES: `seen` or `unseen` per instance; the scores are
then given for all, seen and unseen instances.

Scales: each metric as the official tool prints it, as in results.json (eval/README.md, "Scales"):
E2E BLEU, METEOR, ROUGE_L fractions, NIST and CIDEr as printed; WebNLG/DART BLEU 0-100
(GenerationEval's "BLEU = 46.52"), METEOR and TER fractions. The printed JSON says so in "scale".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from nola.errors import NolaError, exit_on_user_error
from nola.fileio import ensure_writable_dir, read_bytes, write_json_atomic
from nola.tasks import REGISTRY, get_task, score_task

CATEGORY_VALUES = {"seen": True, "unseen": False}
WARNING_LINES_SHOWN = 5


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file (split at "\\n" only; a final newline ends the last line)."""
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise NolaError(f"{path}: line {line} is not valid UTF-8 ({err.reason}); save the file as UTF-8") from None
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_e2e_references(path: Path) -> list[list[str]]:
    """e2e-metrics `read_lines(multi_ref=True)`: stripped lines, groups separated by empty lines."""
    groups: list[list[str]] = [[]]
    for number, line in enumerate(read_lines(path), 1):
        line = line.strip()
        if line:
            groups[-1].append(line)
        elif groups[-1]:
            groups.append([])
        else:
            raise NolaError(f"{path}: line {number}: empty reference group (two empty lines in a row, or "
                            "one at the start); separate groups with exactly one empty line")
    if not groups[-1]:
        groups.pop()
    if len(groups) == 1:  # e2e-metrics: a file without empty lines has one reference per instance
        groups = [[line] for line in groups[0]]
    return groups


def read_hypotheses(path: Path, expected: int, what: str) -> list[str]:
    """One stripped hypothesis per line; the count must match; empty ones are kept with a warning."""
    hypotheses = [line.strip() for line in read_lines(path)]
    if len(hypotheses) != expected:
        raise NolaError(f"{path}: {len(hypotheses)} hypotheses, but {what} has {expected}; "
                        "write exactly one hypothesis per line, in the references' order")
    empty = [number for number, hyp in enumerate(hypotheses, 1) if not hyp]
    if empty:
        shown = ", ".join(map(str, empty[:WARNING_LINES_SHOWN])) + (", ..." if len(empty) > WARNING_LINES_SHOWN else "")
        print(f"warning: {path}: {len(empty)} empty hypotheses (line {shown}); they are scored as empty outputs",
              file=sys.stderr)
    return hypotheses


def read_gem_references(paths: Sequence[Path]) -> list[list[str]]:
    """GenerationEval's reference0..N-1: line i of every file are the references of instance i."""
    columns = [read_lines(path) for path in paths]
    for path, column in zip(paths[1:], columns[1:]):
        if len(column) != len(columns[0]):
            raise NolaError(f"{path}: {len(column)} lines, but {paths[0]} has {len(columns[0])}; "
                            "every reference file needs one line per instance")
    return [list(refs) for refs in zip(*columns)]


def read_categories(path: Path, expected: int) -> list[bool]:
    """`seen` or `unseen` per instance → seen flags."""
    lines = read_lines(path)
    if len(lines) != expected:
        raise NolaError(f"{path}: {len(lines)} categories, but there are {expected} instances; give one per line")
    flags = []
    for number, line in enumerate(lines, 1):
        value = line.strip()
        if value not in CATEGORY_VALUES:
            raise NolaError(f"{path}: line {number}: expected 'seen' or 'unseen', found {value[:40]!r}")
        flags.append(CATEGORY_VALUES[value])
    return flags


def score_files(task: str, refs: Sequence[Path], hyps: Path, categories: Path | None = None) -> dict:
    """Read the files of one task and score them (the CLI without printing)."""
    if categories is not None and not get_task(task).data.categories:
        raise NolaError("--categories applies to --task webnlg only")
    if get_task(task).data.multi_reference:
        if len(refs) != 1:
            raise NolaError(f"--task e2e takes one --refs file (multi-reference format), got {len(refs)}")
        references = read_e2e_references(refs[0])
        what = f"{refs[0]} (reference groups)"
    else:
        references = read_gem_references(refs)
        what = f"{refs[0]} (reference lines)"
    hypotheses = read_hypotheses(hyps, len(references), what)
    seen = read_categories(categories, len(hypotheses)) if categories is not None else None
    return score_task(task, references, hypotheses, seen=seen, num_refs=len(refs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nola.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=tuple(REGISTRY))
    parser.add_argument("--refs", required=True, nargs="+", type=Path,
                        help="e2e: the multi-reference file; webnlg/dart: reference0 ... reference5")
    parser.add_argument("--hyps", required=True, type=Path, help="one hypothesis per line")
    parser.add_argument("--categories", type=Path, help="webnlg: `seen` or `unseen` per line")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.out is not None:
        ensure_writable_dir(args.out.parent if str(args.out.parent) else Path("."), what="--out")
    scores = {"scale": get_task(args.task).scale, **score_files(args.task, args.refs, args.hyps, args.categories)}
    if args.out is not None:
        write_json_atomic(args.out, scores)
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
