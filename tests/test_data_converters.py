"""The three converters on tiny fixtures, and their errors on malformed input.

Expected contexts follow microsoft/LoRA's examples/NLG/src/format_converting_{e2e,webnlg,dart}.py:
E2E `line.strip().split('||')`; WebNLG `subj : property : obj` joined by ' | ' from
modifiedtripleset, "good" lexicalisations only; DART the same with the relation lowercased.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nola.data.dart import convert_dart
from nola.data.e2e import convert_e2e
from nola.data.records import Example, load_examples, write_examples
from nola.data.webnlg import convert_webnlg
from nola.errors import NolaError

MIRROR = Path(__file__).resolve().parent / "fixtures" / "data" / "mirror"


def test_e2e_splits_mr_and_reference_and_strips_the_line():
    examples = convert_e2e(MIRROR / "e2e" / "train.txt").examples
    assert len(examples) == 4
    assert examples[0] == Example(
        context="name : Alimentum | area : city centre | family friendly : no",
        completion="Alimentum is not family-friendly.",  # trailing space of the line removed
    )
    assert examples[1].context == "name : Aromi | eatType : coffee shop"
    assert all(example.category is None and example.seen is None for example in examples)


def test_webnlg_keeps_good_lexicalisations_with_linearised_triples():
    converted = convert_webnlg(MIRROR / "webnlg_challenge_2017" / "train.json")
    assert converted.notes == {"lexicalisations_not_good": 1}
    context = (
        'Aarhus_Airport : cityServed : "Aarhus, Denmark" | '
        "Aarhus_Airport : elevationAboveTheSeaLevel_(in_metres) : 25.0"
    )
    assert converted.examples == [
        Example(context, "Aarhus Airport serves Aarhus, Denmark and is 25 metres above sea level.", "Airport", True),
        Example(context, "Aarhus airport, 25 m high, serves Aarhus.", "Airport", True),
        Example("Ajoblanco : country : Spain", "Ajoblanco is from Spain.", "Food", True),
    ]


def test_webnlg_marks_unseen_categories():
    examples = convert_webnlg(MIRROR / "webnlg_challenge_2017" / "test.json").examples
    assert [(e.category, e.seen) for e in examples] == [("Airport", True)] * 2 + [("Artist", False)] * 3 + [
        ("City", True)
    ]


def test_dart_lowercases_relations_and_makes_one_example_per_annotation():
    converted = convert_dart(MIRROR / "dart" / "dart-v1.1.1-full-train.json")
    assert converted.examples == [
        Example(
            "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina",
            "A school from Mars Hill, North Carolina, joined in 1973.",
        ),
        Example(
            "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina",
            "Mars Hill College joined in 1973.",
        ),
        Example("[TABLECONTEXT] : [title] : Jeff Daniels", "Jeff Daniels."),
    ]


def test_dart_keeps_and_counts_an_empty_annotation():
    converted = convert_dart(MIRROR / "dart" / "dart-v1.1.1-full-test.json")
    assert len(converted.examples) == 5
    assert converted.examples[1].completion == ""
    assert converted.notes == {"empty_completions": 1}


def test_prepared_jsonl_round_trips(tmp_path):
    examples = convert_webnlg(MIRROR / "webnlg_challenge_2017" / "test.json").examples
    write_examples(tmp_path / "webnlg" / "test.jsonl", examples)
    assert load_examples(tmp_path, "webnlg", "test") == examples
    first = json.loads((tmp_path / "webnlg" / "test.jsonl").read_text(encoding="utf-8").split("\n")[0])
    assert first == {
        "context": "Abilene_Regional_Airport : cityServed : Abilene,_Texas",
        "completion": "Abilene Regional Airport serves Abilene, Texas.",
        "category": "Airport",
        "seen": True,
    }


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name : A||Text.\nname : B Text without separator\n", r"bad\.txt:2: expected one `\|\|`.*found no"),
        ("name : A||Text.\n||Orphan reference.\n", r"bad\.txt:2: empty MR"),
        ("name : A||Text.\nname : B||Text.\nname : C||   \n", r"bad\.txt:3: empty reference"),
        ("name : A||Text.||More.\n", r"bad\.txt:1: expected one `\|\|`.*found 2"),
        ("name : A||Text.\n\nname : B||Text.\n", r"bad\.txt:2: empty line"),
    ],
    ids=["no-separator", "empty-mr", "empty-reference", "two-separators", "blank-line"],
)
def test_e2e_bad_lines_name_file_and_line(tmp_path, content, message):
    with pytest.raises(NolaError, match=message):
        convert_e2e(write(tmp_path, "bad.txt", content))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path, "latin1.txt", b"name : A||Fine.\n" + "name : Café||Bad.\n".encode("latin-1"))
    with pytest.raises(NolaError, match=r"latin1\.txt:2: not valid UTF-8 \(byte 0xe9\)"):
        convert_e2e(path)


def test_invalid_json_names_line_and_column(tmp_path):
    path = write(tmp_path, "dart.json", '[\n  {"tripleset": [["a", "b", "c"]],\n  "annotations": [}\n]\n')
    with pytest.raises(NolaError, match=r"dart\.json:3:\d+: invalid JSON"):
        convert_dart(path)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {
                "entries": [
                    {
                        "1": {
                            "category": "Food",
                            "lexicalisations": [{"comment": "good"}],
                            "modifiedtripleset": [{"subject": "a", "property": "b", "object": "c"}],
                        }
                    }
                ]
            },
            r"entries\[0\]\.1\.lexicalisations\[0\] is missing the key 'lex'",
        ),
        (
            {"entries": [{"1": {"lexicalisations": [], "modifiedtripleset": []}}]},
            r"entries\[0\]\.1 is missing the key 'category'",
        ),
        (
            {
                "entries": [
                    {
                        "1": {
                            "category": "Food",
                            "lexicalisations": [],
                            "modifiedtripleset": [{"subject": "a", "object": "c"}],
                        }
                    }
                ]
            },
            r"modifiedtripleset\[0\] is missing the key 'property'",
        ),
        ({"data": []}, r"the top level is missing the key 'entries'"),
        ({"entries": [{"1": {"category": 3}}]}, r"entries\[0\]\.1\.category should be str, found int"),
    ],
    ids=["lex", "category", "property", "entries", "category-type"],
)
def test_webnlg_missing_keys_are_named(tmp_path, document, message):
    with pytest.raises(NolaError, match=message):
        convert_webnlg(write(tmp_path, "webnlg.json", json.dumps(document)))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([{"tripleset": [["a", "B", "c"]]}], r"\[0\] is missing the key 'annotations'"),
        (
            [{"tripleset": [["a", "B", "c"]], "annotations": [{"source": "x"}]}],
            r"\[0\]\.annotations\[0\] is missing the key 'text'",
        ),
        ([{"tripleset": [["a", "B"]], "annotations": [{"text": "t"}]}], r"\[0\]\.tripleset\[0\] should be \[subject"),
        ({"entries": []}, r"the top level should be list, found dict"),
    ],
    ids=["annotations", "text", "short-triple", "not-a-list"],
)
def test_dart_missing_keys_are_named(tmp_path, document, message):
    with pytest.raises(NolaError, match=message):
        convert_dart(write(tmp_path, "dart.json", json.dumps(document)))


def test_prepared_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "e2e" / "valid.jsonl"
    path.parent.mkdir()
    path.write_text('{"context": "a", "completion": "b"}\n{"context": "a"}\n', encoding="utf-8")
    with pytest.raises(NolaError, match=r"valid\.jsonl: line 2 is missing the key 'completion'"):
        load_examples(tmp_path, "e2e", "valid")
    path.write_text('{"context": "a", "completion": "b"}\n{"context": \n', encoding="utf-8")
    with pytest.raises(NolaError, match=r"valid\.jsonl:2: invalid JSON"):
        load_examples(tmp_path, "e2e", "valid")


def test_missing_prepared_split_says_to_run_make_data(tmp_path):
    with pytest.raises(NolaError, match="make data"):
        load_examples(tmp_path, "dart", "train")
