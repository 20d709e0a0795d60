"""E2E scores as tuetschek/e2e-metrics `measure_scores.py -p` computes them (eval/README.md).

The LoRA and NOLA papers score E2E with `measure_scores.py e2e_ref.txt e2e_pred.txt -p`:
- BLEU and NIST: the Python mteval port on lowercased mteval-v13a tokens (`bleu_nist`);
- METEOR, ROUGE-L, CIDEr: pycocoevalcap on Stanford-PTB-tokenized, lowercased text without
  punctuation (`tokenize.ptb_tokenize`, `meteor`, `rouge_cider`).
Scores are fractions, as the script prints them (BLEU 0.66 = 66.0 in the papers' tables).

The two Java programs run beside the Python metrics: METEOR loads its paraphrase table while the
PTB tokenizer and BLEU/NIST run, and scores while ROUGE-L and CIDEr are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from nola.errors import NolaError
from nola.metrics.bleu_nist import bleu_segment_stats, e2e_bleu, e2e_nist
from nola.metrics.meteor import MeteorProcess
from nola.metrics.rouge_cider import cider_d, rouge_l
from nola.metrics.tokenize import mteval_13a, ptb_tokenize

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def check_groups(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> None:
    """Same number of reference groups and hypotheses, at least one of each, no empty group."""
    if len(references) != len(hypotheses):
        raise NolaError(f"{len(hypotheses)} hypotheses for {len(references)} reference groups: "
                        "give exactly one hypothesis per group, in the groups' order")
    if not hypotheses:
        raise NolaError("nothing to score: no hypotheses")
    empty = [index for index, refs in enumerate(references, 1) if not refs]
    if empty:
        raise NolaError(f"reference group {empty[0]} has no references ({len(empty)} empty groups in all)")


def _lowercase_mteval(text: str) -> list[str]:
    """pymteval is case-insensitive: it lowercases each token when it forms n-grams."""
    return [token.lower() for token in mteval_13a(text)]


def e2e_bleu_segments(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> list[tuple[int, ...]]:
    """Per-context BLEU statistics (`bleu_segment_stats`) on the tokens `score_e2e`'s BLEU uses."""
    check_groups(references, hypotheses)
    return [bleu_segment_stats([_lowercase_mteval(ref) for ref in refs], _lowercase_mteval(hyp))
            for refs, hyp in zip(references, hypotheses)]


def score_e2e(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, float]:
    """BLEU, NIST, METEOR, ROUGE_L and CIDEr of `hypotheses` (one per group of raw references)."""
    check_groups(references, hypotheses)
    flat_refs = [ref for refs in references for ref in refs]
    with MeteorProcess() as meteor, ThreadPoolExecutor(max_workers=1) as background:
        tokenizing = background.submit(ptb_tokenize, flat_refs + list(hypotheses))
        mteval_refs = [[_lowercase_mteval(ref) for ref in refs] for refs in references]
        mteval_hyps = [_lowercase_mteval(hyp) for hyp in hypotheses]
        scores = {"BLEU": e2e_bleu(mteval_refs, mteval_hyps), "NIST": e2e_nist(mteval_refs, mteval_hyps)}

        tokenized = tokenizing.result()
        ptb_hyps = tokenized[len(flat_refs):]
        ptb_refs, start = [], 0
        for refs in references:
            ptb_refs.append(tokenized[start:start + len(refs)])
            start += len(refs)
        scoring = background.submit(meteor.score, ptb_refs, ptb_hyps)
        rouge, cider = rouge_l(ptb_refs, ptb_hyps), cider_d(ptb_refs, ptb_hyps)
        scores["METEOR"] = scoring.result()["all"]
    scores.update(ROUGE_L=rouge, CIDEr=cider)
    return {name: scores[name] for name in E2E_METRICS}
