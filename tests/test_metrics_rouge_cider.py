"""ROUGE-L and CIDEr (pycocoevalcap definitions) on tiny hand-worked corpora."""

from __future__ import annotations

import math

import pytest

from nola.metrics.rouge_cider import cider_d, lcs_length, rouge_l, rouge_l_segment


def f_beta(precision: float, recall: float, beta: float = 1.2) -> float:
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("ABCBDAB", "BDCABA", 4),  # Cormen et al., Introduction to Algorithms, §15.4
    ("abc", "abc", 3),
    ("abc", "xyz", 0),
    ("", "abc", 0),
    ("aaaa", "aa", 2),
])
def test_lcs_length(a, b, expected):
    assert lcs_length(list(a), list(b)) == expected
    assert lcs_length(list(b), list(a)) == expected


def test_rouge_l_single_reference():
    # LCS("a b c d", "a c d e f") = "a c d": precision 3/4, recall 3/5
    assert rouge_l_segment(["a c d e f"], "a b c d") == pytest.approx(f_beta(3 / 4, 3 / 5))


def test_rouge_l_takes_best_precision_and_best_recall_separately():
    # reference 1 gives P 3/4, R 3/5; reference 2 ("a b") gives P 2/4, R 2/2 -> P 3/4 with R 1
    assert rouge_l_segment(["a c d e f", "a b"], "a b c d") == pytest.approx(f_beta(3 / 4, 1.0))


def test_rouge_l_corpus_mean_and_empty_hypothesis():
    assert rouge_l_segment(["a b"], "") == 0.0  # "" is one empty token, matching nothing
    corpus = rouge_l([["a c d e f"], ["x y"]], ["a b c d", "x y"])
    assert corpus == pytest.approx((f_beta(3 / 4, 3 / 5) + 1.0) / 2)


def test_cider_identical_sentences():
    # two images, N = 2: every n-gram occurs in one image's references, idf = ln 2 - ln 1.
    # Orders 1 and 2: cosine 1; orders 3 and 4: no n-grams, 0. Mean 0.5, times 10.
    assert cider_d([["a b"], ["c d"]], ["a b", "c d"]) == pytest.approx(5.0)


def test_cider_partial_match_and_length_penalty():
    # image 2: hypothesis "c" vs reference "c d": unigram cosine ln2*ln2 / (ln2 * sqrt(2) ln2) = 1/sqrt 2;
    # "length" is the bigram count (0 vs 1): Gaussian penalty exp(-1 / (2 * 6^2)).
    image2 = (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4 * 10
    assert cider_d([["a b"], ["c d"]], ["a b", "c"]) == pytest.approx((5.0 + image2) / 2)


def test_cider_ngrams_in_every_image_carry_no_weight():
    # "the" is in both images' references: idf ln 2 - ln 2 = 0, so only the other words and the
    # bigrams count. Image 1, hypothesis "the a": vs "the a" unigram vectors (0, ln2) -> cosine 1,
    # bigram 1; vs "the b" both 0; the two references are averaged. Image 2 matches its reference.
    score = cider_d([["the a", "the b"], ["the c"]], ["the a", "the c"])
    image1 = (1 + 1 + 0 + 0) / 4 / 2 * 10
    image2 = (1 + 1 + 0 + 0) / 4 * 10
    assert score == pytest.approx((image1 + image2) / 2)
