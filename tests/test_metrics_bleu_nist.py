"""BLEU (pymteval and multi-bleu-detok flavours) and NIST on tiny hand-worked corpora."""

from __future__ import annotations

import math

import pytest

from nola.metrics.bleu_nist import e2e_bleu, e2e_nist, multi_bleu_detok, nist_length_penalty

REFS = [["the", "cat", "is", "on", "the", "mat"], ["there", "is", "a", "cat", "on", "the", "mat"]]


def test_bleu_all_orders_matched():
    # "a cat is on the mat": 1-grams 6/6, 2-grams 5/5, 3-grams 3/4 (not "a cat is"),
    # 4-grams 2/3 (not "a cat is on"); closest reference length 6 = output length, no penalty.
    hyp = ["a", "cat", "is", "on", "the", "mat"]
    expected = (1 * 1 * 0.75 * (2 / 3)) ** 0.25
    assert e2e_bleu([REFS], [hyp]) == pytest.approx(expected, rel=1e-12)
    assert multi_bleu_detok([REFS], [hyp]) == pytest.approx(expected, rel=1e-12)


def test_bleu_zero_four_gram_precision_flavours_differ():
    # "the cat sat on the mat": 5/6, 3/5, 1/4 ("on the mat"), 0/3. pymteval floors 0 hits at 1e-15;
    # multi-bleu-detok takes log(0) as -9999999999, i.e. BLEU 0.
    hyp = ["the", "cat", "sat", "on", "the", "mat"]
    expected = math.exp(0.25 * (math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1e-15 / 3)))
    assert e2e_bleu([REFS], [hyp]) == pytest.approx(expected, rel=1e-12)
    assert multi_bleu_detok([REFS], [hyp]) == 0.0


def test_bleu_brevity_penalty_and_clipping():
    # "the the the": unigram hits clipped to 2 (max count in one reference), 2-grams 0/2, 3-grams 0/1,
    # 4-grams: pymteval's total is 3 - 3 = 0 (floored to 1e-9). Closest ref length 6, output 3.
    hyp = ["the", "the", "the"]
    logs = math.log(2 / 3) + math.log(1e-15 / 2) + math.log(1e-15 / 1) + math.log(1e-15 / 1e-9)
    expected = math.exp(1 - 6 / 3) * math.exp(0.25 * logs)
    assert e2e_bleu([REFS], [hyp]) == pytest.approx(expected, rel=1e-12)


def test_closest_reference_length_tie_takes_shorter():
    # Output length 4, references of lengths 3 and 5: tie, the shorter (3) is used -> no penalty in
    # multi-bleu-detok (4 > 3); all n-grams match the 5-word reference.
    refs = [["a", "b", "c"], ["w", "x", "y", "z", "v"]]
    hyp = ["w", "x", "y", "z"]
    assert multi_bleu_detok([refs], [hyp]) == pytest.approx(1.0)


def test_multi_bleu_detok_corpus_counts_and_degenerate_input():
    # corpus level: counts add up over sentences before dividing
    refs = [[["a", "b", "c", "d"]], [["e", "f", "g", "h"]]]
    hyps = [["a", "b", "c", "d"], ["e", "f", "x", "h"]]
    precisions = [7 / 8, 4 / 6, 2 / 4, 1 / 2]
    assert multi_bleu_detok(refs, hyps) == pytest.approx(math.exp(sum(map(math.log, precisions)) / 4))
    assert multi_bleu_detok([[["a"]]], [[]]) == 0.0  # the perl script dies on empty output


def test_nist_hand_computed():
    # references "a b c d e f" and "a b c x y z" (12 words); information of an n-gram:
    # log2(count of its prefix / its count). Hits: a b c (log2 12/2 each), d e f (log2 12/1 each);
    # bigrams: only "c d" informative (log2 2/1); trigrams: "b c d" (1); 4-grams: "a b c d" (1).
    refs = [["a", "b", "c", "d", "e", "f"], ["a", "b", "c", "x", "y", "z"]]
    hyp = ["a", "b", "c", "d", "e", "f"]
    expected = (3 * math.log2(6) + 3 * math.log2(12)) / 6 + 1 / 5 + 1 / 4 + 1 / 3 + 0 / 2
    assert e2e_nist([refs], [hyp]) == pytest.approx(expected, rel=1e-12)


def test_nist_length_penalty():
    beta = -math.log(0.5) / math.log(1.5) ** 2
    assert nist_length_penalty(2, 3.0) == pytest.approx(0.5)  # mteval's design point: 2/3 length -> 0.5
    assert nist_length_penalty(1, 4.0) == pytest.approx(math.exp(-beta * math.log(0.25) ** 2))
    assert nist_length_penalty(5, 4.0) == 1.0
    assert nist_length_penalty(0, 4.0) == 0.0
