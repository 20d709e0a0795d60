"""`nola.tokenizer` against GPT-2's reference BPE on the real datasets' text.

transformers 5 no longer ships the slow Python `GPT2Tokenizer` (its `GPT2Tokenizer` runs on the same
Rust `tokenizers` library we use), so the reference here is a plain-Python transcription of the
algorithm of OpenAI's `encoder.py`: split with GPT-2's regex, map bytes to printable characters,
then repeatedly merge the lowest-ranked adjacent pair of `vocab.bpe`. Like encoder.py (and unlike
transformers), '<|endoftext|>' in text is ordinary text; the datasets do not contain it.
"""

from __future__ import annotations

import json
import random
import shutil
from functools import cache
from pathlib import Path

import pytest

from nola.errors import NolaError
from nola.tokenizer import EOS_ID, load_tokenizer

regex = pytest.importorskip("regex")

GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SAMPLE_SIZE = 5000


def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character table: printable Latin-1 bytes map to
    themselves, the other 68 bytes (controls, space, ...) to chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for offset, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + offset)
    return table


class ReferenceBPE:
    def __init__(self, vocab_dir: Path) -> None:
        self.encoder: dict[str, int] = json.loads((vocab_dir / "encoder.json").read_text(encoding="utf-8"))
        merges = (vocab_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:-1]
        self.ranks = {tuple(line.split()): rank for rank, line in enumerate(merges)}
        self.byte_table = byte_to_char()
        self.word_ids = cache(self._word_ids)

    def _word_ids(self, word: str) -> tuple[int, ...]:
        symbols = [self.byte_table[b] for b in word.encode("utf-8")]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self.encoder[s] for s in symbols)

    def encode(self, text: str) -> list[int]:
        return [i for word in GPT2_SPLIT.findall(text) for i in self.word_ids(word)]


def linearise(triples: list[list[str]]) -> str:
    return " | ".join(" : ".join(triple) for triple in triples)


def dataset_texts(data: Path, splits: dict[str, tuple[str, ...]]) -> list[str]:
    """Every text of the three datasets, in file order, without duplicates.

    E2E: both sides of `||` (the completion also with the leading space the data layout adds);
    WebNLG: every lexicalisation and the modified triples (raw and with '_' as space);
    DART: every annotation and the triples.
    """
    texts: list[str] = []
    for split in splits["e2e"]:
        for line in (data / "e2e" / f"{split}.txt").read_text(encoding="utf-8").splitlines():
            context, completion = line.split("||", 1)
            texts += [context, completion, " " + completion]
    for split in splits["webnlg"]:
        for entry in json.loads((data / "webnlg_challenge_2017" / f"{split}.json").read_text(encoding="utf-8"))["entries"]:
            (item,) = entry.values()
            texts += [lex["lex"] for lex in item["lexicalisations"]]
            triples = [[t["subject"], t["property"], t["object"]] for t in item["modifiedtripleset"]]
            texts += [linearise(triples), linearise(triples).replace("_", " ")]
    for split in splits["dart"]:
        for entry in json.loads((data / "dart" / f"dart-v1.1.1-full-{split}.json").read_text(encoding="utf-8")):
            texts += [annotation["text"] for annotation in entry["annotations"]]
            texts.append(linearise(entry["tripleset"]))
    return list(dict.fromkeys(texts))


ALL_SPLITS = {"e2e": ("train", "valid", "test"), "webnlg": ("train", "dev", "test"), "dart": ("train", "dev", "test")}
TEST_SPLITS = {"e2e": ("test",), "webnlg": ("test",), "dart": ("test",)}


@pytest.fixture(scope="module")
def tokenizer(vocab_dir):
    return load_tokenizer(vocab_dir)


@pytest.fixture(scope="module")
def reference(vocab_dir):
    return ReferenceBPE(vocab_dir)


def assert_same_ids(tokenizer, reference, texts: list[str]) -> None:
    ours = tokenizer.encode_batch(texts)
    mismatches = [(t, o) for t, o in zip(texts, ours) if o != reference.encode(t)]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, first: {mismatches[0][0]!r}"
    assert all(tokenizer.decode(ids) == text for text, ids in zip(texts, ours))


def test_known_ids_and_vocabulary(tokenizer, reference):
    """Ids readable in encoder.json: 'Hello' = 15496, 'Ġworld' = 995, '<|endoftext|>' = 50256."""
    assert tokenizer.vocab_size == 50257
    assert reference.encoder["<|endoftext|>"] == EOS_ID == 50256
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.decode([EOS_ID]) == "<|endoftext|>"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "name : The Eagle | Type : coffee shop||The Eagle is a coffee shop . ",
        "don't  stop   me\n\nnow\t!",
        "Ōtsu, Shiga — 3,500 km²; naïve café; 東京; 🙂 ẞ",
        "<|endoftext|>",
        "I'm we'll they've THEY'LL",
    ],
)
def test_matches_reference_and_round_trips(tokenizer, reference, text):
    assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.integration
def test_sample_of_dataset_text_matches_reference(tokenizer, reference, shared_data):
    texts = dataset_texts(shared_data, TEST_SPLITS)
    sample = random.Random(0).sample(texts, SAMPLE_SIZE)
    assert_same_ids(tokenizer, reference, sample)


@pytest.mark.integration
@pytest.mark.slow
def test_all_dataset_text_matches_reference(tokenizer, reference, shared_data):
    assert_same_ids(tokenizer, reference, dataset_texts(shared_data, ALL_SPLITS))


def writable_copy(vocab_dir: Path, tmp_path: Path) -> Path:
    """The vocabulary files copied without their (read-only) permissions."""
    copy = tmp_path / "vocab"
    copy.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(vocab_dir / name, copy / name)
    return copy


def test_fingerprint_identifies_the_files(tokenizer, vocab_dir, tmp_path):
    copy = writable_copy(vocab_dir, tmp_path)
    assert load_tokenizer(copy).fingerprint == tokenizer.fingerprint
    lines = (copy / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    lines[-3], lines[-2] = lines[-2], lines[-3]  # swap the last two merges: still a valid file
    (copy / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    assert load_tokenizer(copy).fingerprint != tokenizer.fingerprint


@pytest.mark.parametrize("missing", ["encoder.json", "vocab.bpe"])
def test_vocab_dir_missing_a_file(vocab_dir, tmp_path, missing):
    copy = writable_copy(vocab_dir, tmp_path)
    (copy / missing).unlink()
    with pytest.raises(NolaError, match=f"missing {missing}") as error:
        load_tokenizer(copy)
    assert "\n" not in str(error.value)


def test_vocab_dir_that_does_not_exist(tmp_path):
    with pytest.raises(NolaError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


def test_corrupt_encoder_json(vocab_dir, tmp_path):
    copy = writable_copy(vocab_dir, tmp_path)
    (copy / "encoder.json").write_text('{"a": 0', encoding="utf-8")
    with pytest.raises(NolaError, match="cannot read GPT-2 vocabulary") as error:
        load_tokenizer(copy)
    assert "\n" not in str(error.value)
