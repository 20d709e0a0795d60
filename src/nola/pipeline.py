"""One experiment end to end: train → choose the epoch → decode → score → results.json (`run`).

`python -m nola.run` is its shell; `python -m nola.run experiment=e2e/nola_gpt2m` is a paper-table cell:
1. train (`nola.training.job.train`, which resumes from the run's last checkpoint) into the run directory;
   skipped for `adapter=none` and once train_metrics.json records a finished (or budget-stopped) run;
   then choose the epoch to report (`train.select_epoch`: the lowest validation loss by default, or
   the best validation BLEU, or the last), as the papers report each run at its best epoch;
2. decode every reference group of `decode.split` with the chosen adapter merged into the base
   (`nola.decode.stage.decode_stage`, the same stage `python -m nola.decode` runs), writing
   `<split>_hypotheses.txt` (the scorers' format) and `.jsonl`; skipped when `decode.json` says
   the file was made from this very adapter, base, context list and settings;
3. score with the official-equivalent scorers (`nola.metrics`: E2E five metrics; WebNLG BLEU,
   METEOR, TER for all/seen/unseen categories; DART BLEU, METEOR, TER) and write results.json
   (schema in `nola.tables.schema`, metric scales in eval/README.md) with the per-context BLEU
   statistics and BLEU's 95% bootstrap interval (`nola.stats`); skipped when results.json already
   scores the current hypotheses against the current references.
Rerunning the same command therefore resumes wherever it stopped.
The run directory's files are named by `nola.layout.RunLayout`. `run_seeds` runs the configurations of
`nola.config.seed_configs` (`seeds=N`: train.seed, train.seed + 1, ...), each in `<run dir>/seed-<seed>`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from nola.adapters import read_adapter_config
from nola.adapters.checkpoint import WEIGHTS_FILE
from nola.config import Config
from nola.data import ReferenceGroup, load_reference_groups
from nola.decode.stage import decode_outputs, decode_settings, decode_stage
from nola.errors import NolaError
from nola.fileio import ensure_writable_dir, json_sha256, read_json, write_json_atomic
from nola.layout import RunLayout
from nola.machine import machine_description
from nola.adapters.count import count_adapter
from nola.runtime import read_environment
from nola.stats import bootstrap_record, record_bleu
from nola.tables import validate_result
from nola.tables.results import RESULTS_SCHEMA
from nola.tasks import bleu_segments, score_groups
from nola.training.config import TrainConfig
from nola.training.job import resume_record, train


def run(cfg: Config, run_dir: str | Path | None = None, *, experiment: str | None = None,
        tag: str | None = None) -> dict[str, Any]:
    """Train, decode and score per `cfg` in `run_dir` (default paths.runs_dir/name); return results.json."""
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.paths.runs_dir) / cfg.name
    ensure_writable_dir(run_dir, what="paths.runs_dir (or hydra.run.dir)")
    out = decode_outputs(cfg, run_dir)  # before training: a decode setting that cannot work fails now
    groups = load_reference_groups(cfg.task.data_dir, cfg.task.name, cfg.decode.split)
    final_adapter, training = train_stage(cfg, run_dir)
    adapter_dir, selection = select_epoch(cfg, run_dir, final_adapter, training)
    decoded = decode_stage(cfg, out, adapter_dir, groups)
    if decoded is None:  # another process of a torchrun job: the main process scores
        return {}
    hypotheses, decoding = decoded
    return score_stage(cfg, run_dir, groups, hypotheses, adapter_dir, training, decoding, experiment=experiment,
                       tag=tag, selection=selection)


def run_seeds(configs: list[Config], run_dir: str | Path, **labels: Any) -> list[dict[str, Any]]:
    """`run` for each configuration of `nola.config.seed_configs` (consecutive seeds from train.seed):
    one run directory `seed-<seed>` each under `run_dir` (a single seed runs in `run_dir` itself).
    Everything random in a run follows train.seed: batch order, dropout, the adapter's initialisation
    and NOLA's bases (adapter.base_seed is `${train.seed}` in conf/adapter/*.yaml unless pinned)."""
    if len(configs) == 1:
        return [run(configs[0], run_dir, **labels)]
    results = []
    for seeded in configs:
        tag = labels.get("tag")
        results.append(run(seeded, Path(run_dir) / f"seed-{seeded.train.seed}", **{
            **labels, "tag": f"{tag}/seed-{seeded.train.seed}" if tag else None}))
    return results


def train_stage(cfg: Config, run_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    """The final adapter (None: the bare base) and the training record (train_metrics.json)."""
    if cfg.decode.adapter_dir is not None:
        return Path(cfg.decode.adapter_dir), {}
    if cfg.adapter.kind == "none":
        return None, {}
    layout = RunLayout(run_dir)
    metrics_path, adapter_dir = layout.train_metrics, layout.adapter
    if metrics_path.is_file() and (adapter_dir / WEIGHTS_FILE).is_file():
        record = read_json(metrics_path)
        if training_done(record, cfg.train):
            return adapter_dir, record
    return adapter_dir, train(cfg, run_dir)


def select_epoch(cfg: Config, run_dir: Path, final_adapter: Path | None,
                 training: dict[str, Any]) -> tuple[Path | None, dict[str, Any] | None]:
    """The adapter to report and how it was chosen (`train.select_epoch`), as results.json records it.

    Candidates are the per-epoch adapters the run saved (`epochs/epoch-<n>`); valid_loss takes the
    lowest validation loss (token mean), valid_bleu decodes the validation split with each candidate
    (the paper's search; hypotheses kept in the epoch's directory) and takes the highest BLEU; ties
    go to the earlier epoch. Without candidates (an adapter given by decode.adapter_dir, a run
    stopped before its first epoch ended) the final adapter is reported, and the record says so.
    """
    if final_adapter is None or not training:
        return final_adapter, None
    by = cfg.train.select_epoch
    layout = RunLayout(run_dir)
    saved = sorted({int(v["epoch"]) for v in training.get("valid", [])} | _saved_epochs(layout))
    candidates = [epoch for epoch in saved if (layout.epoch_adapter(epoch) / WEIGHTS_FILE).is_file()]
    losses = {int(v["epoch"]): float(v["loss"]) for v in training.get("valid", [])}
    if by == "valid_loss":
        candidates = [epoch for epoch in candidates if epoch in losses]
    if by == "last" or not candidates:
        return final_adapter, {"by": "last", "epoch": training.get("epochs_completed"), "candidates": {},
                               "adapter_dir": str(final_adapter)}
    if by == "valid_loss":
        values = {epoch: losses[epoch] for epoch in candidates}
        chosen = min(values, key=lambda epoch: (values[epoch], epoch))
    else:
        if read_environment(os.environ)[0] > 1:
            raise NolaError("train.select_epoch=valid_bleu decodes the validation split in one process; run the "
                            "selection without torchrun (python -m nola.run ...), or use select_epoch=valid_loss")
        values = {epoch: validation_bleu(cfg, layout.epoch_adapter(epoch)) for epoch in candidates}
        chosen = max(values, key=lambda epoch: (values[epoch], -epoch))
    return layout.epoch_adapter(chosen), {"by": by, "epoch": chosen, "candidates": {str(e): v for e, v in values.items()},
                                          "adapter_dir": str(layout.epoch_adapter(chosen))}


def _saved_epochs(layout: RunLayout) -> set[int]:
    parent = layout.epoch_adapter(1).parent
    if not parent.is_dir():
        return set()
    return {int(path.name.removeprefix("epoch-")) for path in parent.glob("epoch-*") if path.name[6:].isdigit()}


def validation_bleu(cfg: Config, adapter_dir: Path) -> float:
    """BLEU (results.json's scale) of the validation split decoded with `adapter_dir` by the paper's
    search; the hypotheses go into `adapter_dir` and are reused while nothing changed."""
    valid_cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, split="valid", out_dir=str(adapter_dir)))
    groups = load_reference_groups(cfg.task.data_dir, cfg.task.name, "valid")
    hypotheses, _ = decode_stage(valid_cfg, RunLayout(adapter_dir), adapter_dir, groups)
    return record_bleu(bleu_segments(cfg.task.name, [g.references for g in groups], hypotheses))


def training_done(record: dict[str, Any], train_cfg: TrainConfig) -> bool:
    """Whether a finished train_metrics.json satisfies this run's budget (else training resumes).

    A run the schedule finished is done; one stopped by max_steps is done while max_steps is not
    raised; one stopped by its wall-time budget is done while a time budget is still set.
    """
    if record.get("completed"):
        return True
    reason = record.get("stop_reason")
    if reason == "max_steps":
        return bool(train_cfg.max_steps) and record.get("steps", 0) >= train_cfg.max_steps
    return reason == "max_time" and train_cfg.max_time_s > 0


def score_stage(cfg: Config, run_dir: Path, groups: list[ReferenceGroup], hypotheses: list[str],
                adapter_dir: Path | None, training: dict[str, Any], decoding: dict[str, Any], *,
                experiment: str | None, tag: str | None, selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the hypotheses and write results.json, unless it already scores exactly these."""
    path = RunLayout(run_dir).results
    scored = {"hypotheses_sha256": decoding["sha256"], "references_sha256": json_sha256([g.references for g in groups]),
              "decode": decoding["key"]["settings"]}
    if path.is_file():
        existing = read_json(path)
        if existing.get("scored") == scored and existing.get("selection") == selection and "bleu_segments" in existing:
            return validate_result(existing, str(path))
    started = time.perf_counter()
    metrics = score_groups(cfg.task.name, groups, hypotheses)
    segments = bleu_segments(cfg.task.name, [group.references for group in groups], hypotheses)
    score_s = time.perf_counter() - started
    adapter = dataclasses.asdict(cfg.adapter)
    results = {
        "schema": RESULTS_SCHEMA,
        "experiment": experiment,
        "task": cfg.task.name,
        "split": cfg.decode.split,
        "model": cfg.model.name,
        "adapter": adapter,
        "trainable_params": int(read_adapter_config(adapter_dir)["trainable_params"]) if adapter_dir is not None else 0,
        "adapter_file_bytes": (adapter_dir / WEIGHTS_FILE).stat().st_size if adapter_dir is not None else 0,
        "metrics": metrics,
        "timings": {"train_s": round(float(training.get("train_s", 0.0)), 3), "decode_s": decoding["decode_s"],
                    "score_s": round(score_s, 3)},
        "device": decoding["device"],
        "machine": machine_description(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "run_dir": str(run_dir),
        "tag": tag,
        "contexts": len(groups),
        "hypotheses": decoding["hypotheses"],
        "training": {key: training[key] for key in ("steps", "total_steps", "completed", "stop_reason", "train_loss",
                                                    "valid_loss", "precision") if key in training},
        "seed": int(cfg.train.seed) if training else None,
        "config_key": config_key(cfg, decoding["key"]["base_fingerprint"]),
        "selection": selection,
        "bleu_interval": bootstrap_record([segments]),
        "bleu_segments": segments,
        "scored": scored,
    }
    if adapter_dir is not None and adapter.get("quant_bits"):
        results["quantization"] = quantization_record(cfg, adapter_dir)
    validate_result(results, str(path))
    write_json_atomic(path, results)
    return results


def config_key(cfg: Config, base_fingerprint: str) -> str:
    """What makes two runs the same experiment except for their seed: the training recipe as a resumed
    run must match it (`nola.training.job.resume_record`: no budgets, paths or logging) without train.seed
    and adapter.base_seed, plus the task, split and search settings. The tables average runs that
    share it into one mean ± sd row."""
    record = resume_record(cfg, base_fingerprint)
    record["train"].pop("seed", None)
    record["adapter"].pop("base_seed", None)
    record["decode"] = {"split": cfg.decode.split, **decode_settings(cfg.decode)}
    return json_sha256(record)[:16]


def quantization_record(cfg: Config, adapter_dir: Path) -> dict[str, Any]:
    """NOLA with quantized coefficients (NOLA §4): bits, stored size, and the float size it replaces.

    The metrics are those of the stored (quantized) adapter: loading restores its dequantized values.
    """
    saved = read_adapter_config(adapter_dir)
    unquantized = dataclasses.replace(cfg.adapter, quant_bits=None)
    return {"bits": saved.get("coefficient_bits"), "file_bytes": (adapter_dir / WEIGHTS_FILE).stat().st_size,
            "float_file_bytes": count_adapter(cfg.model.name, unquantized)["adapter_file_bytes"]}
