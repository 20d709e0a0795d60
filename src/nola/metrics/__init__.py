"""Built-in scoring that gives the official numbers of the LoRA/NOLA papers (eval/README.md).

- `score_e2e` (E2E): tuetschek/e2e-metrics `measure_scores.py -p` — BLEU, NIST, METEOR, ROUGE_L, CIDEr.
- `score_gem`, `score_webnlg` (DART, WebNLG): LoRA's `gpt2_decode.py --tokenize --lower --ref_num 6`
  then WebNLG/GenerationEval — BLEU, METEOR, TER (WebNLG also on seen/unseen categories).

METEOR and the PTB tokenizer run the jars of the pycocoevalcap wheel and need Java. Which task is
scored by which, and the per-context BLEU statistics each task's bootstrap uses, are the task
registry's (`nola.tasks`).
"""

from __future__ import annotations

from nola.metrics.e2e import score_e2e
from nola.metrics.gem import score_gem, score_webnlg

__all__ = ["score_e2e", "score_gem", "score_webnlg"]
