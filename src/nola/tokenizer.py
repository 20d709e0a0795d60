"""GPT-2 byte-level BPE from `encoder.json` + `vocab.bpe`, on Hugging Face `tokenizers` (Rust).

The two files are the ones OpenAI released with GPT-2 and microsoft/LoRA ships under
`examples/NLG/vocab/`; `nola.data.download` fetches them for users. Ids equal OpenAI's reference
`encoder.py` (tested against a plain-Python transcription of that algorithm on all three datasets).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from nola.errors import NolaError

VOCAB_FILES = ("encoder.json", "vocab.bpe")
EOS_ID = 50256  # <|endoftext|>, used as both bos and eos in the LoRA data layout (microsoft/LoRA examples/NLG)
DOUBLE_NEWLINE_ID = 628  # "\n\n", the second eos of the paper scripts (`gpt2_beam.py --eos_token_id 628`)


@dataclass(frozen=True)
class GPT2Tokenizer:
    """Encode/decode text with GPT-2's BPE; `fingerprint` identifies the vocabulary files."""

    backend: Tokenizer
    fingerprint: str

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(vocab_dir: str | Path) -> GPT2Tokenizer:
    """Build the tokenizer from `vocab_dir/encoder.json` and `vocab_dir/vocab.bpe`."""
    vocab_dir = Path(vocab_dir)
    if not vocab_dir.is_dir():
        raise NolaError(f"vocab directory {vocab_dir} does not exist; run `make data` to fetch it")
    paths = [vocab_dir / name for name in VOCAB_FILES]
    for path in paths:
        if not path.is_file():
            raise NolaError(
                f"vocab directory {vocab_dir} is missing {path.name} (needs {' and '.join(VOCAB_FILES)}); "
                "run `make data` to fetch it"
            )
    encoder_path, merges_path = paths
    try:
        json.loads(encoder_path.read_text(encoding="utf-8"))
        model = models.BPE.from_file(str(encoder_path), str(merges_path))
    except Exception as err:  # json raises ValueError; tokenizers raises plain Exception
        raise NolaError(f"cannot read GPT-2 vocabulary from {vocab_dir}: {err}") from None
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return GPT2Tokenizer(backend=backend, fingerprint=digest.hexdigest()[:16])
