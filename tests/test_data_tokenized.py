"""Token layout (microsoft/LoRA examples/NLG) and the tokenize-once cache.

The tiny fixture vocabulary has GPT-2's 256 byte symbols with GPT-2's ids (e.g. 'a' = 64, 'Ġ' = 220)
plus two merges, 'Ġ t' -> 256 and 'e s' -> 257, so expected ids can be worked out by hand.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from nola.data.records import Example, write_examples
from nola.data.tokenized import TokenLayout, load_tokenized, tokenize_examples
from nola.tokenizer import EOS_ID, load_tokenizer

TINY_VOCAB = Path(__file__).resolve().parent / "fixtures" / "data" / "mirror" / "vocab"
EXAMPLES = [Example("name : x", "test"), Example("a", "es t")]


@pytest.fixture()
def tiny_tokenizer():
    return load_tokenizer(TINY_VOCAB)


@pytest.fixture()
def prepared(tmp_path):
    write_examples(tmp_path / "e2e" / "valid.jsonl", EXAMPLES)
    return tmp_path


def test_layout_appends_bos_to_context_and_prefixes_a_space_to_the_completion(tiny_tokenizer):
    tokenized = tokenize_examples(EXAMPLES, tiny_tokenizer)
    # n a m e Ġ : Ġ x  (bytes - 33 for printable ASCII, 'Ġ' = 220) + bos
    assert tokenized.context(0).tolist() == [77, 64, 76, 68, 220, 25, 220, 87, EOS_ID]
    # ' test' -> Ġ t e s t -> Ġt e s t -> Ġt es t, + eos
    assert tokenized.completion(0).tolist() == [256, 257, 83, EOS_ID]
    assert tokenized.context(1).tolist() == [64, EOS_ID]
    assert tokenized.completion(1).tolist() == [220, 257, 256, EOS_ID]  # ' es t' -> Ġ es Ġt
    assert tokenized.context_lengths.tolist() == [9, 2]
    assert tokenized.completion_lengths.tolist() == [4, 4]


def test_cache_is_reused_until_the_data_changes(prepared, tiny_tokenizer):
    first = load_tokenized(prepared, "e2e", "valid", tiny_tokenizer)
    assert not first.from_cache
    cache_files = list((prepared / "e2e" / "cache").glob("valid.*.npz"))
    assert [p.name for p in cache_files] == [f"valid.{first.cache_key}.npz"]
    second = load_tokenized(prepared, "e2e", "valid", tiny_tokenizer)
    assert second.from_cache and second.cache_key == first.cache_key
    np.testing.assert_array_equal(second.completion_ids, first.completion_ids)

    write_examples(prepared / "e2e" / "valid.jsonl", [*EXAMPLES, Example("a", "b")])
    third = load_tokenized(prepared, "e2e", "valid", tiny_tokenizer)
    assert not third.from_cache and len(third) == 3 and third.cache_key != first.cache_key
    assert [p.name for p in (prepared / "e2e" / "cache").glob("valid.*.npz")] == [f"valid.{third.cache_key}.npz"]


def test_cache_is_invalidated_by_another_tokenizer(prepared, tiny_tokenizer, tmp_path):
    load_tokenized(prepared, "e2e", "valid", tiny_tokenizer)
    other_vocab = tmp_path / "other_vocab"
    shutil.copytree(TINY_VOCAB, other_vocab)
    (other_vocab / "vocab.bpe").write_text("#version: 0.2\n", encoding="utf-8")  # no merges
    other = load_tokenizer(other_vocab)
    assert other.fingerprint != tiny_tokenizer.fingerprint
    retokenized = load_tokenized(prepared, "e2e", "valid", other)
    assert not retokenized.from_cache
    assert retokenized.completion(0).tolist() == [220, 83, 68, 82, 83, EOS_ID]  # Ġ t e s t unmerged


def test_cache_is_invalidated_by_another_layout(prepared, tiny_tokenizer):
    load_tokenized(prepared, "e2e", "valid", tiny_tokenizer)
    layout = TokenLayout(bos_id=7, eos_id=9, completion_prefix="")
    changed = load_tokenized(prepared, "e2e", "valid", tiny_tokenizer, layout=layout)
    assert not changed.from_cache
    assert changed.context(1).tolist() == [64, 7]
    assert changed.completion(0).tolist() == [83, 257, 83, 9]  # 'test' without the leading space


def test_unreadable_cache_is_rebuilt(prepared, tiny_tokenizer):
    first = load_tokenized(prepared, "e2e", "valid", tiny_tokenizer)
    (prepared / "e2e" / "cache" / f"valid.{first.cache_key}.npz").write_bytes(b"not a zip file")
    rebuilt = load_tokenized(prepared, "e2e", "valid", tiny_tokenizer)
    assert not rebuilt.from_cache
    assert load_tokenized(prepared, "e2e", "valid", tiny_tokenizer).from_cache


def test_real_vocabulary_matches_hugging_face_gpt2_tokenizer(vocab_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.GPT2Tokenizer(str(vocab_dir / "encoder.json"), str(vocab_dir / "vocab.bpe"))
    examples = [
        Example("name : The Vaults | Type : pub | price : more than £ 30", "The Vaults pub near Café Adriatic."),
        Example("Abilene_Regional_Airport : cityServed : Abilene,_Texas", "Abilene, Texas is served by it."),
    ]
    tokenized = tokenize_examples(examples, load_tokenizer(vocab_dir))
    for index, example in enumerate(examples):
        assert tokenized.context(index).tolist() == reference.encode(example.context) + [EOS_ID]
        assert tokenized.completion(index).tolist() == reference.encode(" " + example.completion) + [EOS_ID]
