"""`python -m nola.data.prepare` end to end on the tiny fixture mirror, and its failure modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nola.data import load_examples, load_reference_groups, reference_files
from nola.fileio import digest_file
from nola.data.prepare import main, prepare
from nola.data.sources import load_sources
from nola.data.tasks import TASK_SPECS
from mirror_support import MIRROR, sources_for_mirror
from nola.errors import NolaError




@pytest.fixture()
def mirror(tmp_path) -> Path:
    copy = tmp_path / "mirror"
    shutil.copytree(MIRROR, copy)
    return copy


def run_prepare(mirror: Path, data_dir: Path, **kwargs) -> dict:
    sources = sources_for_mirror(mirror, mirror.parent / "sources.json")
    return prepare(["e2e", "webnlg", "dart"], data_dir, mirror=mirror, sources=sources, progress=False, **kwargs)


def test_repository_sources_list_every_raw_file_with_a_checksum():
    files = load_sources()
    listed = {raw.path for raw in files}
    for spec in TASK_SPECS.values():
        assert set(spec.raw_files.values()) <= listed
    assert {"vocab/encoder.json", "vocab/vocab.bpe"} <= listed
    for raw in files:
        assert raw.url.startswith(
            "https://raw.githubusercontent.com/microsoft/LoRA/c4593f060e6a368d7bb5af5273b8e42810cdef90/"
        )
        assert any(entry.sha256 for entry in raw.accept)


def test_prepare_writes_splits_references_caches_and_manifests(mirror, tmp_path):
    data = tmp_path / "data"
    summary = run_prepare(mirror, data)
    assert {task: entry["converted"] for task, entry in summary.items()} == {"e2e": True, "webnlg": True, "dart": True}
    assert summary["e2e"]["splits"]["test"] == {
        "examples": 4,
        "contexts": 3,
        "reference_groups": 3,
        "max_references": 2,
    }
    assert summary["webnlg"]["splits"]["train"]["lexicalisations_not_good"] == 1
    assert summary["webnlg"]["splits"]["test"]["seen_groups"] == 2
    assert summary["dart"]["splits"]["test"]["empty_completions"] == 1
    assert (data / "vocab" / "encoder.json").is_file() and (data / "raw" / "e2e" / "train.txt").is_file()
    assert [e.completion for e in load_examples(data, "e2e", "valid")] == [
        "Aromi is a coffee shop.",
        "There is a coffee shop called Aromi.",
        "Bibimbap House serves English food.",
    ]
    groups = load_reference_groups(data, "dart", "test")
    assert [len(g.references) for g in groups] == [4, 1]
    assert reference_files(data, "webnlg", "test").subsets["unseen"][0].read_text(encoding="utf-8") == (
        "aaron turner plays post - metal .\n"
    )
    assert sorted(p.name.split(".")[0] for p in (data / "dart" / "cache").iterdir()) == ["test", "train", "valid"]
    manifest = json.loads((data / "e2e" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["raw"]["train"]["sha256"] == digest_file(MIRROR / "e2e" / "train.txt").sha256


def test_prepare_again_skips_current_tasks_unless_forced(mirror, tmp_path):
    data = tmp_path / "data"
    run_prepare(mirror, data, tokenize=False)
    assert not any(entry["converted"] for entry in run_prepare(mirror, data, tokenize=False).values())
    (data / "webnlg" / "test_categories.txt").unlink()
    again = run_prepare(mirror, data, tokenize=False)
    assert [task for task, entry in again.items() if entry["converted"]] == ["webnlg"]
    assert all(entry["converted"] for entry in run_prepare(mirror, data, tokenize=False, force=True).values())


def test_bad_raw_line_fails_before_any_output_is_written(mirror, tmp_path):
    with (mirror / "e2e" / "test.txt").open("a", encoding="utf-8") as handle:
        handle.write("name : Zizzi a line without the separator\n")
    data = tmp_path / "data"
    with pytest.raises(NolaError, match=r"test\.txt:5: expected one `\|\|`"):
        run_prepare(mirror, data, tokenize=False)
    assert not (data / "e2e").exists()


def test_checksum_mismatch_in_the_mirror_leaves_no_raw_copy(mirror, tmp_path):
    sources = sources_for_mirror(mirror, tmp_path / "sources.json")
    (mirror / "dart" / "dart-v1.1.1-full-dev.json").write_text("[]", encoding="utf-8")
    data = tmp_path / "data"
    with pytest.raises(NolaError, match=r"checksum mismatch for raw/dart/dart-v1\.1\.1-full-dev\.json"):
        prepare(["dart"], data, mirror=mirror, sources=sources, progress=False)
    assert sorted(p.name for p in (data / "raw" / "dart").iterdir()) == ["dart-v1.1.1-full-train.json"]


def test_cli_reports_a_user_error_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--tasks", "e2e", "--data-dir", str(tmp_path / "data"), "--mirror", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --mirror")


def test_cli_prints_a_json_summary(mirror, tmp_path, capsys):
    sources = sources_for_mirror(mirror, tmp_path / "sources.json")
    main(
        [
            "--tasks",
            "dart",
            "--data-dir",
            str(tmp_path / "data"),
            "--mirror",
            str(mirror),
            "--sources",
            str(sources),
            "--no-tokenize",
            "--quiet",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["dart"]["splits"]["train"]["examples"] == 3
