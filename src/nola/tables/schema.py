"""What the tables know about tasks, metrics and scales, shared by published rows and our results.

Scales (eval/README.md): results.json holds each metric as the official tool prints it. E2E metrics
come from e2e-metrics' `measure_scores.py`, which prints BLEU, METEOR and ROUGE-L as fractions
(BLEU 0.6593); the papers print them x100 (LoRA Table 3, NOLA Table 1: BLEU 70.4). WebNLG/DART
metrics come from GenerationEval, which prints BLEU 0-100 (multi-bleu-detok.perl's "BLEU = 46.52")
and METEOR/TER as fractions, exactly the scale of LoRA Tables 13 and 14. Tables print the papers'
scale, so E2E BLEU/METEOR/ROUGE-L are multiplied by 100 and everything else is printed as stored.
"""

from __future__ import annotations

import math
from typing import Any

from nola.errors import NolaError

TASKS = ("e2e", "dart", "webnlg")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "e2e": ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"),
    "dart": ("BLEU", "METEOR", "TER"),
    "webnlg": ("BLEU", "METEOR", "TER"),
}
WEBNLG_SPLITS = ("unseen", "seen", "all")

# results.json value x factor = the number the papers print.
PAPER_SCALE: dict[str, dict[str, float]] = {
    "e2e": {"BLEU": 100.0, "NIST": 1.0, "METEOR": 100.0, "ROUGE_L": 100.0, "CIDEr": 1.0},
    "dart": {"BLEU": 1.0, "METEOR": 1.0, "TER": 1.0},
    "webnlg": {"BLEU": 1.0, "METEOR": 1.0, "TER": 1.0},
}

# The BLEU a task is judged by (the figure's, the bootstrap's, a sweep's objective): WebNLG's over all categories.
BLEU_KEY = {"e2e": "BLEU", "dart": "BLEU", "webnlg": "all.BLEU"}


def headline_bleu(task: str, metrics: dict[str, Any]) -> float:
    """BLEU_KEY's value of a results.json metrics object, on results.json's scale."""
    return float(dotted_get(metrics, BLEU_KEY[task]))


MODEL_LABELS = {"gpt2": "GPT-2 S", "gpt2-medium": "GPT-2 M", "gpt2-large": "GPT-2 L", "gpt2-xl": "GPT-2 XL"}


def model_label(model: str) -> str:
    """The papers' short model name (GPT-2 M, GPT-2 L); other models keep their own name."""
    return MODEL_LABELS.get(model, model)


def metric_name(flat_key: str) -> str:
    """"unseen.BLEU" -> "BLEU"; "BLEU" -> "BLEU"."""
    return flat_key.rsplit(".", 1)[-1]


def check_task(task: Any, origin: str) -> str:
    if task not in TASKS:
        raise NolaError(f"{origin}: key 'task' is {task!r}; use one of {', '.join(TASKS)}")
    return task


def check_number(value: Any, origin: str, key: str) -> float:
    """A finite JSON number (bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NolaError(f"{origin}: key '{key}' must be a finite number, got {value!r}")
    return float(value)


def flatten_metrics(task: str, metrics: Any, origin: str, key: str, *, allow_null: bool) -> dict[str, float | None]:
    """Check a metrics object of `task`'s shape (WebNLG: {"all"|"seen"|"unseen": {...}}) and flatten it.

    Every metric must be present; with `allow_null` (published rows) a metric the source does not
    print may be null.
    """
    if not isinstance(metrics, dict):
        raise NolaError(f"{origin}: key '{key}' must be an object of metrics, got {type(metrics).__name__}")
    if task == "webnlg":
        groups = {split: metrics.get(split) for split in WEBNLG_SPLITS}
        extra = sorted(set(metrics) - set(WEBNLG_SPLITS))
        if extra:
            raise NolaError(f"{origin}: unknown key '{key}.{extra[0]}'; WebNLG metrics are grouped by all/seen/unseen")
    else:
        groups = {"": metrics}
    flat: dict[str, float | None] = {}
    for prefix, group in groups.items():
        where = f"{key}.{prefix}" if prefix else key
        if not isinstance(group, dict):
            raise NolaError(f"{origin}: key '{where}' must be an object with {', '.join(TASK_METRICS[task])}")
        extra = sorted(set(group) - set(TASK_METRICS[task]))
        if extra:
            raise NolaError(f"{origin}: unknown metric '{where}.{extra[0]}' for task {task}")
        for name in TASK_METRICS[task]:
            if name not in group:
                raise NolaError(f"{origin}: missing metric '{where}.{name}' for task {task}")
            flat_key = f"{prefix}.{name}" if prefix else name
            value = group[name]
            flat[flat_key] = None if value is None and allow_null else check_number(value, origin, f"{where}.{name}")
    return flat


def dotted_get(record: dict[str, Any], path: str) -> Any:
    """record["adapter"]["kind"] for "adapter.kind"; a missing step gives None."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
