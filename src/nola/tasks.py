"""The task → scorer dispatch, written once: how each dataset's hypotheses are scored and on which scale.

E2E is scored as tuetschek/e2e-metrics `measure_scores.py` does (BLEU, NIST, METEOR, ROUGE_L,
CIDEr); DART and WebNLG as GenerationEval `eval.py` does (BLEU, METEOR, TER), WebNLG for all, seen
and unseen categories when the categories are known. Each metric keeps the scale its official tool
prints (eval/README.md, "Scales"), which is how results.json and `python -m nola.score` report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nola.data import ReferenceGroup
from nola.data.config import check_task_name
from nola.errors import NolaError
from nola.metrics.e2e import score_e2e
from nola.metrics.gem import GEM_NUM_REFS, score_gem, score_webnlg

SCALES = {
    "e2e": "as e2e-metrics prints: BLEU, METEOR, ROUGE_L fractions; NIST, CIDEr as printed",
    "webnlg": "as GenerationEval prints: BLEU 0-100; METEOR, TER fractions",
    "dart": "as GenerationEval prints: BLEU 0-100; METEOR, TER fractions",
}


def score_task(task: str, references: Sequence[Sequence[str]], hypotheses: Sequence[str], *,
               seen: Sequence[bool] | None = None, num_refs: int = GEM_NUM_REFS) -> dict[str, Any]:
    """The metrics of one task's hypotheses (one per group of raw references).

    seen: WebNLG's seen/unseen flag per instance; with it the scores are given for all, seen and
    unseen instances (results.json's WebNLG layout), without it for all instances only.
    num_refs: GenerationEval's `-nr`, the number of reference columns (DART, WebNLG).
    """
    check_task_name(task)
    if seen is not None and task != "webnlg":
        raise NolaError(f"seen/unseen categories apply to task webnlg only, not {task}")
    if task == "e2e":
        return score_e2e(references, hypotheses)
    if seen is None:
        return score_gem(references, hypotheses, num_refs=num_refs)
    return score_webnlg(references, hypotheses, seen, num_refs=num_refs)


def score_groups(task: str, groups: list[ReferenceGroup], hypotheses: list[str]) -> dict[str, Any]:
    """The metrics object of results.json: E2E five metrics; WebNLG all/seen/unseen; DART three.

    Scales as eval/README.md fixes them (each metric as the official tool prints it, which is how
    `nola.metrics` returns them): E2E as e2e-metrics prints (fractions); WebNLG/DART BLEU 0–100 as
    GenerationEval prints it, METEOR and TER fractions.
    """
    seen = [bool(group.seen) for group in groups] if task == "webnlg" else None
    return score_task(task, [group.references for group in groups], hypotheses, seen=seen)
