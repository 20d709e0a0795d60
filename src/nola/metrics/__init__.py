"""Built-in scoring that gives the official numbers of the LoRA/NOLA papers (eval/README.md).

- `score_e2e` (E2E): tuetschek/e2e-metrics `measure_scores.py -p` — BLEU, NIST, METEOR, ROUGE_L, CIDEr.
- `score_gem`, `score_webnlg` (DART, WebNLG): LoRA's `gpt2_decode.py --tokenize --lower --ref_num 6`
  then WebNLG/GenerationEval — BLEU, METEOR, TER (WebNLG also on seen/unseen categories).

METEOR and the PTB tokenizer run the jars of the pycocoevalcap wheel and need Java.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nola.metrics.bleu_nist import SEGMENT_FIELDS
from nola.metrics.e2e import e2e_bleu_segments, score_e2e
from nola.metrics.gem import GEM_BLEU_SCALE, gem_bleu_segments, score_gem, score_webnlg

__all__ = ["bleu_segments", "score_e2e", "score_gem", "score_webnlg"]


def bleu_segments(task: str, references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, Any]:
    """The per-context BLEU statistics behind a task's BLEU in results.json (WebNLG: all categories).

    {"variant": pymteval | multi-bleu-detok, "scale": results.json BLEU = scale x corpus_bleu,
    "fields": the statistics' names, "segments": one list per reference group}; `nola.stats`
    bootstraps BLEU from them.
    """
    if task == "e2e":
        variant, scale, segments = "pymteval", 1.0, e2e_bleu_segments(references, hypotheses)
    else:
        variant, scale, segments = "multi-bleu-detok", GEM_BLEU_SCALE, gem_bleu_segments(references, hypotheses)
    return {"variant": variant, "scale": scale, "fields": list(SEGMENT_FIELDS), "segments": [list(s) for s in segments]}
