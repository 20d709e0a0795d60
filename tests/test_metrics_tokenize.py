"""Tokenizers of the official scorers, on hand-worked inputs (nola.metrics.tokenize)."""

from __future__ import annotations

import shutil

import pytest

from nola.metrics.gem import lora_references
from nola.metrics.tokenize import mteval_13a, mteval_13a_perl, ptb_tokenize, treebank_tokenize

requires_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime")


def test_mteval_13a_punctuation_rules():
    # ' , - . are outside the punctuation class; "," splits unless between digits, "." likewise,
    # "-" splits after a digit, brackets always; &amp; is unescaped first.
    assert mteval_13a("It's £20-25, e.g. 3.5 (ok) &amp; 1,000.") == [
        "It's", "£20", "-", "25", ",", "e", ".", "g", ".", "3.5", "(", "ok", ")", "&", "1,000", "."]


def test_mteval_13a_empty_and_whitespace_flavours():
    assert mteval_13a("") == [""]  # pymteval: one empty token, it counts in lengths
    assert mteval_13a_perl("") == []  # perl `split` on an empty line: no words
    assert mteval_13a("a\u00a0b") == ["a", "b"]  # Python's \s is Unicode
    assert mteval_13a_perl("a\u00a0b") == ["a\u00a0b"]  # perl on bytes: only ASCII whitespace
    assert mteval_13a_perl("  x\ty  ") == ["x", "y"]


def test_treebank_tokenize_on_lora_split_text():
    assert treebank_tokenize('he said " it cannot be " , ok') == [
        "he", "said", "``", "it", "can", "not", "be", "``", ",", "ok"]
    assert treebank_tokenize("it ' s gonna rain .") == ["it", "'", "s", "gon", "na", "rain", "."]


def test_lora_references_pad_with_first_and_drop_extras():
    refs = lora_references([["A-B said: Hi!"], ["one", "two", "three"]], num_refs=2)
    assert refs == [["a - b said : hi !", "a - b said : hi !"], ["one", "two"]]


@requires_java
def test_ptb_tokenize_lowercases_and_drops_punctuation():
    out = ptb_tokenize(['Prices £20-25 at Café "Rouge" -- it\'s fine.', "", "(x) Cannot!", "a\rb\u2028c"])
    # PTB writes £ as "#", splits "it's"/"cannot"; pycocoevalcap's filter is case-sensitive, so the
    # lowercased "-lrb-"/"-rrb-" stay while `` '' -- . ! go; a line break inside a text stays inside.
    assert out == ["prices # 20-25 at café rouge it 's fine", "", "-lrb- x -rrb- can not", "a b c"]
    assert ptb_tokenize([]) == []
