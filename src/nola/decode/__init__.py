"""Decoding: LoRA-semantics beam search (`beam`), a split to hypothesis files (`hypotheses`), the
Hydra entry point (`cli`, `python -m nola.decode`) and the `decode` config schema (`config`)."""

from nola.decode.beam import BeamHypothesis, beam_search, search
from nola.decode.config import DecodeConfig, SearchSettings, search_settings
from nola.decode.hypotheses import Hypothesis, decode_split, hypothesis_text, write_hypotheses

__all__ = [
    "BeamHypothesis",
    "DecodeConfig",
    "Hypothesis",
    "SearchSettings",
    "beam_search",
    "decode_split",
    "hypothesis_text",
    "search",
    "search_settings",
    "write_hypotheses",
]
