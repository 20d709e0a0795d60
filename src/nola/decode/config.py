"""Schema of the Hydra `decode` group (conf/decode/*.yaml): beam-search settings and what to decode.

Defaults are the paper scripts' `gpt2_beam.py` flags (microsoft/LoRA examples/NLG README; the NOLA
repository's `gpt/scripts/finetune_gpt2*_e2e_qv_nola.sh` pass the same ones): `--beam 10
--length_penalty 0.8 --no_repeat_ngram_size 4 --repetition_penalty 1.0 --eval_len 64
--eos_token_id 628` on top of the default eos 50256 (`action='append'`), i.e. eos ids {50256, 628}.
Hu et al. (ICLR 2022) Table 11 lists length penalty 0.9 for E2E; the released commands use 0.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from nola.errors import NolaError
from nola.tokenizer import DOUBLE_NEWLINE_ID, EOS_ID

PAPER_EOS_IDS = (EOS_ID, DOUBLE_NEWLINE_ID)  # <|endoftext|> and "\n\n"


@dataclass(frozen=True)
class SearchSettings:
    """The beam-search hyper-parameters (microsoft/LoRA `gpt2_beam.py`; defaults are the paper scripts', see above).

    Construction checks what needs no model; `nola.decode.beam.check_inputs` adds the model's
    vocabulary and context window.
    """

    beam: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    eos_ids: tuple[int, ...] = PAPER_EOS_IDS

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise NolaError(f"decode.beam={self.beam} must be between 1 and the model's vocabulary size")
        if self.max_new_tokens < 1:
            raise NolaError(f"decode.max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.no_repeat_ngram_size < 0:
            raise NolaError(f"decode.no_repeat_ngram_size={self.no_repeat_ngram_size} must be >= 0 (0 disables)")
        if not self.repetition_penalty > 0:
            raise NolaError(f"decode.repetition_penalty={self.repetition_penalty} must be > 0 (1.0 disables)")
        if not math.isfinite(self.length_penalty):
            raise NolaError(f"decode.length_penalty={self.length_penalty} must be a finite number")


PAPER_SETTINGS = SearchSettings()


@dataclass
class DecodeConfig:
    """Beam search (microsoft/LoRA examples/NLG) and the split it decodes.

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
    manifest: a YAML/JSON list of {name, task, split, adapter_dir} decoded together in one mixed run,
        each context with its entry's adapter (`nola.decode.mixed`); null: one split, one adapter.
    device: where decoding runs (`nola.runtime.pick_device`); by default the training device.
    """

    beam: int = PAPER_SETTINGS.beam
    length_penalty: float = PAPER_SETTINGS.length_penalty
    no_repeat_ngram_size: int = PAPER_SETTINGS.no_repeat_ngram_size
    repetition_penalty: float = PAPER_SETTINGS.repetition_penalty
    max_new_tokens: int = PAPER_SETTINGS.max_new_tokens
    eos_ids: list[int] = field(default_factory=lambda: list(PAPER_SETTINGS.eos_ids))
    batch_size: int = 16
    split: str = "test"
    adapter_dir: Optional[str] = None
    out_dir: Optional[str] = None
    manifest: Optional[str] = None
    device: str = "${train.device}"

    def __post_init__(self) -> None:
        search_settings(self)  # raises on a bad search setting
        if self.batch_size < 1:
            raise NolaError(f"decode.batch_size={self.batch_size} must be at least 1")
        if self.split not in ("valid", "test"):
            raise NolaError(f"decode.split={self.split!r}; choose valid or test (the splits with references to score)")


def search_settings(decode_cfg) -> SearchSettings:
    """The beam-search settings of a `decode` config (DecodeConfig or its Hydra node)."""
    return SearchSettings(
        beam=int(decode_cfg.beam),
        length_penalty=float(decode_cfg.length_penalty),
        no_repeat_ngram_size=int(decode_cfg.no_repeat_ngram_size),
        repetition_penalty=float(decode_cfg.repetition_penalty),
        max_new_tokens=int(decode_cfg.max_new_tokens),
        eos_ids=tuple(int(i) for i in decode_cfg.eos_ids),
    )
