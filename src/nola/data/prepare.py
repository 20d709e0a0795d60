"""`python -m nola.data.prepare`: fetch, verify, convert and tokenize E2E, WebNLG and DART.

For each task: the raw files land in `<data-dir>/raw/` (copied from `--mirror DIR`, laid out like
../shared/data, or downloaded from the URLs in data/sources.json, all checked against their
checksums), the GPT-2 vocabulary in `<data-dir>/vocab/`; then `<data-dir>/<task>/` gets
{train,valid,test}.jsonl, the valid/test reference files (nola.data.references), the tokenized
cache, and `manifest.json` (written last) with the counts and the raw files' sha256. A task whose
manifest matches its raw files and whose outputs all exist is not converted again (`--force` does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from nola.data.config import SPLITS, TASKS
from nola.data.download import FetchResult, fetch_raw_file
from nola.fileio import ensure_writable_dir, read_json, write_json_atomic, write_text_atomic
from nola.data.records import render_examples, split_path
from nola.data.references import EVAL_SPLITS, group_references, render_reference_files
from nola.data.sources import RawFile, load_sources, sources_for
from nola.data.tasks import task_spec
from nola.data.tokenized import load_tokenized
from nola.errors import NolaError, exit_on_user_error
from nola.tokenizer import load_tokenizer

MANIFEST_SCHEMA = 1
CONVERTER_VERSION = 1  # bump when converters or reference files change, so prepared data is rebuilt


def fetch_group(
    files: list[RawFile], group: str, data_dir: Path, mirror: Path | None, progress: bool
) -> dict[str, FetchResult]:
    """Fetch every raw file of a task (or the vocabulary), keyed by mirror path."""
    chosen = sources_for(files, group)
    if not chosen:
        raise NolaError(f"data/sources.json lists no files for {group!r}")
    return {raw.path: fetch_raw_file(raw, data_dir, mirror=mirror, progress=progress) for raw in chosen}


def manifest_path(data_dir: Path, task: str) -> Path:
    return data_dir / task / "manifest.json"


def is_current(data_dir: Path, task: str, raw: dict[str, FetchResult]) -> bool:
    """Whether the task's manifest matches these raw files and every output it lists exists."""
    path = manifest_path(data_dir, task)
    if not path.is_file():
        return False
    try:
        manifest = read_json(path)
        recorded = {split: entry["sha256"] for split, entry in manifest["raw"].items()}
        outputs = manifest["outputs"]
        current = (manifest["schema"], manifest["converter_version"]) == (MANIFEST_SCHEMA, CONVERTER_VERSION)
    except (NolaError, KeyError, TypeError):
        return False
    return (
        current
        and recorded == {split: result.digest.sha256 for split, result in raw.items()}
        and all((data_dir / output).is_file() for output in outputs)
    )


def convert_task(data_dir: Path, task: str, raw: dict[str, FetchResult]) -> dict:
    """Write the task's splits and reference files, then its manifest.

    Every split is converted and every file rendered in memory first, so malformed input raises
    before anything is written; the old manifest goes before the first write, so an interrupted
    write leaves no manifest and the next run converts again.
    """
    spec = task_spec(task)
    splits: dict[str, dict] = {}
    contents: dict[Path, str] = {}
    for split in SPLITS:
        converted = spec.convert(raw[split].path)
        contents[split_path(data_dir, task, split)] = render_examples(converted.examples)
        stats = {
            "examples": len(converted.examples),
            "contexts": len({example.context for example in converted.examples}),
            **converted.notes,
        }
        if split in EVAL_SPLITS:
            groups = group_references(converted.examples)
            files, reference_contents = render_reference_files(data_dir, task, split, groups)
            contents.update(reference_contents)
            stats["reference_groups"] = len(groups)
            stats["max_references"] = max(len(group.references) for group in groups)
            if files.categories is not None:
                stats["seen_groups"] = sum(bool(group.seen) for group in groups)
                stats["unseen_groups"] = len(groups) - stats["seen_groups"]
        splits[split] = stats
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "task": task,
        "converter_version": CONVERTER_VERSION,
        "raw": {
            split: {
                "path": str(result.path.relative_to(data_dir)),
                "sha256": result.digest.sha256,
                "origin": result.origin,
            }
            for split, result in raw.items()
        },
        "splits": splits,
        "outputs": [str(path.relative_to(data_dir)) for path in contents],
    }
    manifest_path(data_dir, task).unlink(missing_ok=True)
    for path, text in contents.items():
        write_text_atomic(path, text)
    write_json_atomic(manifest_path(data_dir, task), manifest)
    return manifest


def prepare(
    tasks: list[str],
    data_dir: str | Path,
    *,
    mirror: str | Path | None = None,
    sources: str | Path | None = None,
    tokenize: bool = True,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare each task; returns {task: manifest + timings} (see the module docstring)."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise NolaError(f"--data-dir {data_dir} is a file, not a directory; give a directory to prepare the data in")
    ensure_writable_dir(data_dir, what="--data-dir")
    mirror = Path(mirror) if mirror is not None else None
    if mirror is not None and not mirror.is_dir():
        raise NolaError(f"--mirror {mirror} is not a directory")
    files = load_sources(sources)
    fetch_group(files, "vocab", data_dir, mirror, progress)
    tokenizer = load_tokenizer(data_dir / "vocab") if tokenize else None
    summary = {}
    for task in tqdm(tasks, desc="prepare", unit="task", disable=not progress):
        start = time.perf_counter()
        spec = task_spec(task)
        fetched = fetch_group(files, task, data_dir, mirror, progress)
        missing = [path for path in spec.raw_files.values() if path not in fetched]
        if missing:
            raise NolaError(f"data/sources.json lacks {', '.join(missing)} for {task}")
        raw = {split: fetched[path] for split, path in spec.raw_files.items()}
        fetched_s = time.perf_counter() - start
        converted = force or not is_current(data_dir, task, raw)
        manifest = convert_task(data_dir, task, raw) if converted else read_json(manifest_path(data_dir, task))
        converted_s = time.perf_counter() - start - fetched_s
        if tokenizer is not None:
            for split in SPLITS:
                load_tokenized(data_dir, task, split, tokenizer, progress=progress)
        summary[task] = {
            **manifest,
            "converted": converted,
            "timings_s": {
                "fetch": round(fetched_s, 2),
                "convert": round(converted_s, 2),
                "tokenize": round(time.perf_counter() - start - fetched_s - converted_s, 2),
            },
        }
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nola.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="datasets to prepare")
    parser.add_argument("--data-dir", default="data", help="output directory (default: data)")
    parser.add_argument("--mirror", default=None, help="copy raw files from this directory instead of downloading")
    parser.add_argument("--sources", default=None, help="sources list (default: the checkout's data/sources.json)")
    parser.add_argument("--no-tokenize", action="store_true", help="skip building the tokenized caches")
    parser.add_argument("--force", action="store_true", help="convert again even if the outputs are current")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = prepare(
        args.tasks,
        args.data_dir,
        mirror=args.mirror,
        sources=args.sources,
        tokenize=not args.no_tokenize,
        force=args.force,
        progress=not args.quiet,
    )
    brief = {
        task: {"splits": entry["splits"], "converted": entry["converted"], "timings_s": entry["timings_s"]}
        for task, entry in summary.items()
    }
    json.dump(brief, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
