"""The checks and lookups shared by published rows and our results: metrics objects of a task's
shape (its metrics and groups, from the task registry `nola.tasks`), numbers, model labels.

Scales (eval/README.md): results.json holds each metric as the official tool prints it; tables
print the papers' scale (`Task.paper_scale`: E2E BLEU/METEOR/ROUGE-L x100, everything else as stored).
"""

from __future__ import annotations

import math
from typing import Any

from nola.errors import NolaError
from nola.tasks import get_task


def headline_bleu(task: str, metrics: dict[str, Any]) -> float:
    """The value of the BLEU `task` is judged by (`Task.bleu_key`) in a results.json metrics object."""
    return float(dotted_get(metrics, get_task(task).bleu_key))


MODEL_LABELS = {"gpt2": "GPT-2 S", "gpt2-medium": "GPT-2 M", "gpt2-large": "GPT-2 L", "gpt2-xl": "GPT-2 XL"}


def model_label(model: str) -> str:
    """The papers' short model name (GPT-2 M, GPT-2 L); other models keep their own name."""
    return MODEL_LABELS.get(model, model)


def metric_name(flat_key: str) -> str:
    """"unseen.BLEU" -> "BLEU"; "BLEU" -> "BLEU"."""
    return flat_key.rsplit(".", 1)[-1]


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
    spec = get_task(task)
    if spec.groups:
        groups = {split: metrics.get(split) for split in spec.groups}
        extra = sorted(set(metrics) - set(spec.groups))
        if extra:
            raise NolaError(f"{origin}: unknown key '{key}.{extra[0]}'; WebNLG metrics are grouped by all/seen/unseen")
    else:
        groups = {"": metrics}
    flat: dict[str, float | None] = {}
    for prefix, group in groups.items():
        where = f"{key}.{prefix}" if prefix else key
        if not isinstance(group, dict):
            raise NolaError(f"{origin}: key '{where}' must be an object with {', '.join(spec.metrics)}")
        extra = sorted(set(group) - set(spec.metrics))
        if extra:
            raise NolaError(f"{origin}: unknown metric '{where}.{extra[0]}' for task {task}")
        for name in spec.metrics:
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
