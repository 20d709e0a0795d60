"""Reference groups and the official scorers' file formats, on hand-written examples.

Expected files are written out by hand from the formats: tuetschek/e2e-metrics multi-reference
(references one per line, groups separated by an empty line) and LoRA gpt2_decode.py
`--ref_num 6 --tokenize --lower` (lowercase, `re.split('(\\W)')`, first reference repeated to 6).
"""

from __future__ import annotations

import pytest

from nola.data.records import Example
from nola.data.references import (
    gem_tokenize,
    group_references,
    load_reference_groups,
    reference_files,
    write_reference_files,
)
from nola.errors import NolaError


def test_gem_tokenize_lowercases_and_splits_every_non_word_character():
    assert gem_tokenize("Abilene, Texas's airport (ABI) is 1,791 ft-high.") == (
        "abilene , texas ' s airport ( abi ) is 1 , 791 ft - high ."
    )
    assert gem_tokenize("  Café  Adriatic\tis £30 ") == "café adriatic is £ 30"
    assert gem_tokenize("") == ""


def test_groups_follow_first_appearance_and_strip_references():
    examples = [Example("B", " b1 "), Example("A", "a1"), Example("B", "b2"), Example("C", "c1"), Example("A", "a2")]
    groups = group_references(examples)
    assert [(g.context, g.references) for g in groups] == [("B", ["b1", "b2"]), ("A", ["a1", "a2"]), ("C", ["c1"])]


def test_group_takes_first_category_but_refuses_mixed_seen_flags():
    same_flag = [Example("x", "1", "Building", True), Example("x", "2", "Food", True)]
    assert group_references(same_flag)[0].category == "Building"
    with pytest.raises(NolaError, match="seen and an unseen category"):
        group_references([Example("x", "1", "Food", True), Example("x", "2", "Artist", False)])


def test_e2e_multi_reference_file_and_contexts(tmp_path):
    examples = [Example("name : A", "A is good ."), Example("name : B", "B ."), Example("name : A", "Try A .")]
    files = write_reference_files(tmp_path, "e2e", "test", group_references(examples))
    assert files.multi_ref.read_text(encoding="utf-8") == "A is good .\nTry A .\n\nB .\n\n"
    assert files.contexts.read_text(encoding="utf-8") == "name : A\nname : B\n"
    assert files.references == () and files.categories is None
    assert reference_files(tmp_path, "e2e", "test") == files
    assert [(g.context, g.references) for g in load_reference_groups(tmp_path, "e2e", "test")] == [
        ("name : A", ["A is good .", "Try A ."]),
        ("name : B", ["B ."]),
    ]


def test_gem_reference_files_pad_with_the_first_and_keep_six(tmp_path):
    examples = [Example("x : r : y", f"Ref {i}.") for i in range(8)] + [Example("z : r : w", "Only One!")]
    files = write_reference_files(tmp_path, "dart", "valid", group_references(examples))
    assert [p.name for p in files.references] == [f"reference{i}" for i in range(6)]
    contents = [p.read_text(encoding="utf-8") for p in files.references]
    assert contents == [f"ref {i} .\nonly one !\n" for i in range(6)]
    assert files.reference_prefix == tmp_path / "dart" / "valid_refs" / "reference"
    assert len(load_reference_groups(tmp_path, "dart", "valid")[0].references) == 8  # raw groups keep all


def test_webnlg_categories_and_seen_unseen_subsets(tmp_path):
    examples = [
        Example("s1", "Seen one.", "Airport", True),
        Example("u1", "Unseen one.", "Artist", False),
        Example("s1", "Seen again.", "Airport", True),
        Example("s2", "Seen two.", "Food", True),
    ]
    files = write_reference_files(tmp_path, "webnlg", "test", group_references(examples))
    assert files.categories.read_text(encoding="utf-8") == "seen\nunseen\nseen\n"
    assert files.references[1].read_text(encoding="utf-8") == "seen again .\nunseen one .\nseen two .\n"
    assert files.subsets["seen"][0].read_text(encoding="utf-8") == "seen one .\nseen two .\n"
    assert files.subsets["seen"][1].read_text(encoding="utf-8") == "seen again .\nseen two .\n"
    assert files.subsets["unseen"][5].read_text(encoding="utf-8") == "unseen one .\n"
    groups = load_reference_groups(tmp_path, "webnlg", "test")
    assert [(g.category, g.seen) for g in groups] == [("Airport", True), ("Artist", False), ("Food", True)]


def test_reference_files_of_an_unprepared_split_say_to_run_make_data(tmp_path):
    with pytest.raises(NolaError, match="make data"):
        reference_files(tmp_path, "webnlg", "valid")
    with pytest.raises(NolaError, match="valid and test only"):
        reference_files(tmp_path, "webnlg", "train")


def test_line_breaks_cannot_corrupt_line_based_files(tmp_path):
    groups = group_references([Example("name : A", "Line one\nline two")])
    with pytest.raises(NolaError, match=r"valid_refs\.txt: item 1 contains a line break"):
        write_reference_files(tmp_path, "e2e", "valid", groups)
    assert not (tmp_path / "e2e").exists() or not any((tmp_path / "e2e").iterdir())
