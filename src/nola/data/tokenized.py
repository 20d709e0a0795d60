"""Tokenize a prepared split once and cache the ids beside the data.

Token layout (LoRA `gpt2_encode.py --add_bos --add_eos`): context ids =
encode(context) + [bos], completion ids = encode(' ' + completion) + [eos], with bos = eos =
<|endoftext|> (50256). The cache file `<data_dir>/<task>/cache/<split>.<key>.npz` is keyed by the
tokenizer's fingerprint, the sha256 of the split's .jsonl and the layout, so changing any of them
re-tokenizes; truncation and batching happen later and do not invalidate it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nola.fileio import atomic_path, sha256_file
from nola.data.records import Example, load_examples, split_path
from nola.tokenizer import EOS_ID, GPT2Tokenizer

CACHE_FORMAT = 1
ENCODE_CHUNK = 4096
ARRAYS = ("context_ids", "context_offsets", "completion_ids", "completion_offsets")


@dataclass(frozen=True)
class TokenLayout:
    """How an example becomes tokens (microsoft/LoRA examples/NLG): bos after the context, eos after the completion."""

    bos_id: int = EOS_ID
    eos_id: int = EOS_ID
    completion_prefix: str = " "


@dataclass(frozen=True)
class TokenizedSplit:
    """Token ids of every example, stored flat: example i's context is
    `context_ids[context_offsets[i]:context_offsets[i + 1]]` (likewise the completion)."""

    context_ids: np.ndarray
    context_offsets: np.ndarray
    completion_ids: np.ndarray
    completion_offsets: np.ndarray
    cache_key: str = ""
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.context_offsets) - 1

    def context(self, index: int) -> np.ndarray:
        return self.context_ids[self.context_offsets[index] : self.context_offsets[index + 1]]

    def completion(self, index: int) -> np.ndarray:
        return self.completion_ids[self.completion_offsets[index] : self.completion_offsets[index + 1]]

    @property
    def context_lengths(self) -> np.ndarray:
        return np.diff(self.context_offsets)

    @property
    def completion_lengths(self) -> np.ndarray:
        return np.diff(self.completion_offsets)


def _flatten(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(sequences), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def tokenize_examples(
    examples: list[Example], tokenizer: GPT2Tokenizer, layout: TokenLayout = TokenLayout(), *, progress: bool = False
) -> TokenizedSplit:
    """Encode every example with the layout (no caching)."""
    contexts: list[list[int]] = []
    completions: list[list[int]] = []
    with tqdm(total=len(examples), desc="tokenize", unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, len(examples), ENCODE_CHUNK):
            chunk = examples[start : start + ENCODE_CHUNK]
            contexts += [ids + [layout.bos_id] for ids in tokenizer.encode_batch([e.context for e in chunk])]
            completions += [
                ids + [layout.eos_id]
                for ids in tokenizer.encode_batch([layout.completion_prefix + e.completion for e in chunk])
            ]
            bar.update(len(chunk))
    context_ids, context_offsets = _flatten(contexts)
    completion_ids, completion_offsets = _flatten(completions)
    return TokenizedSplit(context_ids, context_offsets, completion_ids, completion_offsets)


def cache_key(data_sha256: str, tokenizer: GPT2Tokenizer, layout: TokenLayout) -> str:
    """What the cached ids depend on, hashed."""
    recipe = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer.fingerprint,
        "data_sha256": data_sha256,
        "layout": asdict(layout),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def load_tokenized(
    data_dir: str | Path,
    task: str,
    split: str,
    tokenizer: GPT2Tokenizer,
    *,
    layout: TokenLayout = TokenLayout(),
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> TokenizedSplit:
    """The split's token ids, from the cache when it is current, else tokenized and cached."""
    jsonl = split_path(data_dir, task, split)
    examples = load_examples(data_dir, task, split)  # a missing or malformed split fails here
    key = cache_key(sha256_file(jsonl), tokenizer, layout)
    cache_dir = Path(cache_dir) if cache_dir is not None else jsonl.parent / "cache"
    cache_file = cache_dir / f"{split}.{key}.npz"
    cached = _read_cache(cache_file, key)
    if cached is not None and len(cached) == len(examples):
        return cached
    tokenized = tokenize_examples(examples, tokenizer, layout, progress=progress)
    _write_cache(cache_file, key, tokenized)
    for stale in cache_dir.glob(f"{split}.*.npz"):
        if stale != cache_file:
            stale.unlink(missing_ok=True)
    return TokenizedSplit(*(getattr(tokenized, name) for name in ARRAYS), cache_key=key, from_cache=False)


def _write_cache(path: Path, key: str, tokenized: TokenizedSplit) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, key=np.array(key), **{name: getattr(tokenized, name) for name in ARRAYS})


def _read_cache(path: Path, key: str) -> TokenizedSplit | None:
    """The cached split, or None if absent, for another key, or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["key"]) != key:
                return None
            arrays = [archive[name] for name in ARRAYS]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        tqdm.write(f"{path} is unreadable; tokenizing again", file=sys.stderr)
        return None
    return TokenizedSplit(*arrays, cache_key=key, from_cache=True)
