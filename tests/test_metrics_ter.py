"""TER: hand-worked cases, and equality with `pyter` (the implementation GenerationEval runs)."""

from __future__ import annotations

import random

import pytest

from nola.metrics.ter import corpus_ter, min_ter, ter


def test_pyter_docstring_example():
    # pyter's own doctest: 4 edits (1 shift "THIS WEEK", substitutions) over 13 reference words
    ref = "SAUDI ARABIA denied THIS WEEK information published in the AMERICAN new york times".split()
    hyp = "THIS WEEK THE SAUDIS denied information published in the new york times".split()
    assert ter(hyp, ref) == pytest.approx(4 / 13)


@pytest.mark.parametrize(("hyp", "ref", "expected"), [
    ("a b c", "a b c", 0.0),
    ("c a b", "a b c", 1 / 3),  # one shift of "a b" (distance 2 -> 0)
    ("a b c d", "a b c", 1 / 3),  # one deletion
    ("x", "a b", 2 / 2),  # substitution + insertion
    ("", "a b c", 1.0),  # empty output: every reference word inserted
    ("a b", "", 1.0),  # empty reference: GenerationEval scores 1 (pyter would divide by zero)
])
def test_ter_hand_worked(hyp, ref, expected):
    assert ter(hyp.split(), ref.split()) == pytest.approx(expected)


def test_min_ter_and_corpus_mean():
    refs = [["a", "b", "c"], ["c", "a", "b"], ["a", "b", "c"]]
    assert min_ter(["c", "a", "b"], refs) == 0.0
    assert min_ter(["z"], [[], ["a", "b"]]) == 1.0
    assert corpus_ter([refs, [["x", "y"]]], [["c", "a", "b"], ["x"]]) == pytest.approx((0.0 + 0.5) / 2)


def test_equal_to_pyter_on_random_sentences():
    pyter = pytest.importorskip("pyter")
    rng = random.Random(2024)
    for _ in range(400):
        vocab = "abcdef"[: rng.randint(1, 6)]  # few word types: many ties between shifts
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 10))]
        refs = [[rng.choice(vocab) for _ in range(rng.randint(1, 10))] for _ in range(3)]
        assert ter(hyp, refs[0]) == pyter.ter(hyp, refs[0]), (hyp, refs[0])
        assert min_ter(hyp, refs) == min(pyter.ter(hyp, ref) for ref in refs), (hyp, refs)


def test_equal_to_pyter_on_a_long_sentence():
    pyter = pytest.importorskip("pyter")
    ref = ("the leader of aarhus is jacob bundsgaard and the city is served by aarhus airport , "
           "which is 25 metres above sea level and has a runway named 10l / 28r").split()
    hyp = ("aarhus airport , which serves the city of aarhus , is 25 metres above sea level ; "
           "its runway is named 10l / 28r and the leader of aarhus is jacob bundsgaard").split()
    assert ter(hyp, ref) == pyter.ter(hyp, ref)
