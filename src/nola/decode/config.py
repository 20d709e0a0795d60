"""Schema of the Hydra `decode` group (conf/decode/*.yaml): beam-search settings and what to decode.

Defaults are the paper scripts' `gpt2_beam.py` flags (microsoft/LoRA examples/NLG README; the NOLA
repository's `gpt/scripts/finetune_gpt2*_e2e_qv_nola.sh` pass the same ones): `--beam 10
--length_penalty 0.8 --no_repeat_ngram_size 4 --repetition_penalty 1.0 --eval_len 64
--eos_token_id 628` on top of the default eos 50256 (`action='append'`), i.e. eos ids {50256, 628}.
Hu et al. (ICLR 2022) Table 11 lists length penalty 0.9 for E2E; the released commands use 0.8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from nola.errors import NolaError

PAPER_EOS_IDS = (50256, 628)  # <|endoftext|> and "\n\n"


@dataclass
class DecodeConfig:
    """Beam search (DESIGN.md §3) and the split it decodes.

    beam: beams per input (1 = greedy).
    length_penalty: a finished hypothesis scores sum(log p) / n_generated ** length_penalty.
    no_repeat_ngram_size: no n-gram may occur twice among the generated tokens (0 disables).
    repetition_penalty: CTRL-style logit penalty on already generated tokens (1.0 disables).
    max_new_tokens: generated tokens at most (LoRA `--eval_len`).
    eos_ids: tokens that finish a hypothesis.
    batch_size: inputs decoded together (each with `beam` rows).
    split: valid | test.
    adapter_dir: a saved adapter to load and merge before decoding (null: the model as built).
    out_dir: where hypotheses go (null: the Hydra run directory).
    """

    beam: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    eos_ids: list[int] = field(default_factory=lambda: list(PAPER_EOS_IDS))
    batch_size: int = 16
    split: str = "test"
    adapter_dir: Optional[str] = None
    out_dir: Optional[str] = None

    def __post_init__(self) -> None:
        checks = {
            "beam": self.beam >= 1,
            "max_new_tokens": self.max_new_tokens >= 1,
            "batch_size": self.batch_size >= 1,
            "no_repeat_ngram_size": self.no_repeat_ngram_size >= 0,
            "repetition_penalty": self.repetition_penalty > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise NolaError(f"decode.{key}={getattr(self, key)!r} is out of range; see nola/decode/config.py")
        if self.split not in ("train", "valid", "test"):
            raise NolaError(f"decode.split={self.split!r}; choose valid or test")
