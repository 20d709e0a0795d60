"""A training run assembled from its typed configuration: `train(cfg, run_dir)`.

Order (each step can fail with a NolaError before the next, longer one starts): the training
settings against the process group, the base weights (offline without weights fails here), the run
directory (proved writable; the resolved configuration recorded), the data (missing files fail here,
before the model is built), the model with its adapter, the optimizer and schedule; then the loop
(`nola.training.loop.fit`), resuming from the run's last checkpoint if it has one. At the end the
adapter (`nola.adapters.save_adapter`) and train_metrics.json are written; the files are named by
`nola.layout.RunLayout`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf

from nola.adapters import save_adapter
from nola.adapters.config import AdapterConfig
from nola.build import build_model, resolve_weights
from nola.data.config import TaskConfig
from nola.errors import NolaError
from nola.fileio import (
    atomic_directory,
    ensure_writable_dir,
    write_json_atomic,
    write_text_atomic,
)
from nola.layout import RunLayout
from nola.model import GPT2Config
from nola.model.config import ModelConfig
from nola.paths_config import PathsConfig
from nola.runtime import (
    DistContext,
    barrier,
    broadcast_parameters,
    init_distributed,
    main_process_first,
    shutdown_distributed,
)
from nola.tokenizer import load_tokenizer
from nola.training import checkpoint as ckpt
from nola.training.config import TrainConfig, check_train_config
from nola.training.data import load_training_data
from nola.training.loop import TrainingJob, TrainState, fit, restore, schedule_for
from nola.training.monitor import Monitor
from nola.training.optim import (
    autocast_dtype,
    build_optimizer,
    exact_float32,
    grad_scaler,
)

# Settings that may differ when a run is resumed: budgets, logging, locations, memory trade-offs.
RESUME_FREE_KEYS = {
    "model": {"source", "gradient_checkpointing"},
    "adapter": {"cache_bases"},
    "task": {"data_dir"},
    "train": {
        "max_steps", "max_time_s", "log_every", "save_every", "keep_last", "resume", "device", "eval_every_epoch",
        "dist_timeout_s", "save_epoch_adapters", "select_epoch",
    },
}


class TrainingRun(Protocol):
    """The typed sections a training run reads (`nola.config.Config` has them all)."""

    name: str
    train: TrainConfig
    model: ModelConfig
    adapter: AdapterConfig
    task: TaskConfig
    paths: PathsConfig


def train(cfg: TrainingRun, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train per `cfg` into `run_dir` (default: paths.runs_dir/name); return the training metrics."""
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.paths.runs_dir) / cfg.name
    ctx = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        return _train(cfg, run_dir, ctx)
    finally:
        shutdown_distributed(ctx)


def _train(cfg: TrainingRun, run_dir: Path, ctx: DistContext) -> dict[str, Any]:
    check_train_config(cfg.train, ctx.world_size)
    weights = main_process_first(ctx, lambda: resolve_weights(cfg.model, cfg.paths.cache_dir))
    layout = RunLayout(run_dir)
    if not cfg.train.resume and ckpt.latest_name(layout.checkpoints):
        raise NolaError(
            f"train.resume=false but {layout.checkpoints} holds checkpoints; delete that directory to start "
            "over or choose another run name (name=...)"
        )
    if ctx.is_main:
        _prepare_run_dir(run_dir, cfg)
    tokenizer = load_tokenizer(cfg.paths.vocab_dir)
    max_len = min(cfg.task.max_seq_len, GPT2Config.named(cfg.model.name).n_positions)
    data = load_training_data(cfg.train, cfg.task, tokenizer, ctx, max_len)
    built = build_model(cfg, for_training=True, device=ctx.device, weights=weights, tokenizer=tokenizer)
    if built.model.config.n_positions < max_len:
        raise NolaError(f"{cfg.model.source} has a {built.model.config.n_positions}-token context, "
                        f"shorter than task.max_seq_len={max_len}; lower task.max_seq_len")
    broadcast_parameters(ctx, list(built.trainable.values()))
    amp_dtype = autocast_dtype(cfg.train.precision, ctx.device)
    if amp_dtype is None:
        exact_float32(ctx.device)
    optimizer = build_optimizer(list(built.trainable.values()), cfg.train)
    job = TrainingJob(
        train=cfg.train, ctx=ctx, built=built, data=data, optimizer=optimizer,
        schedule=schedule_for(cfg.train, data.micro_batches_per_epoch),
        scaler=grad_scaler(amp_dtype), amp_dtype=amp_dtype, checkpoint_dir=layout.checkpoints,
        config_record=resume_record(cfg, built.base_fingerprint),
    )
    if cfg.train.save_epoch_adapters:
        job.save_epoch_adapter = lambda epoch, state: write_adapter(
            job, cfg.model.name, layout.epoch_adapter(epoch),
            {"epoch": epoch, "steps": state.step, "valid": state.valid[-1] if state.valid else None})
    state = TrainState()
    latest = ckpt.load_latest(job.checkpoint_dir)
    if latest is not None:
        state = restore(job, latest)
    job.monitor = Monitor(layout.tensorboard if ctx.is_main else None, total_steps=job.total_steps,
                          start_step=state.step, log_every=cfg.train.log_every)
    try:
        reason = fit(job, state)
    finally:
        job.monitor.close()
    metrics = _metrics(cfg, job, state, reason, run_dir)
    if ctx.is_main:
        write_adapter(job, cfg.model.name, layout.adapter,
                      {k: metrics[k] for k in ("steps", "completed", "valid_loss", "train_loss")})
        write_json_atomic(layout.train_metrics, metrics)
    barrier(ctx)
    return metrics


def resume_record(cfg: TrainingRun, fingerprint: str) -> dict[str, Any]:
    """What a checkpoint must agree on with the run resuming it (see RESUME_FREE_KEYS)."""
    record = {
        group: {key: value for key, value in dataclasses.asdict(getattr(cfg, group)).items() if key not in free}
        for group, free in RESUME_FREE_KEYS.items()
    }
    record["base_fingerprint"] = fingerprint
    return record


def _prepare_run_dir(run_dir: Path, cfg: TrainingRun) -> None:
    """Create the run directory, prove it is writable, and record the resolved configuration."""
    ensure_writable_dir(run_dir, what="paths.runs_dir (or hydra.run.dir)")
    write_text_atomic(RunLayout(run_dir).config, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _metrics(cfg: TrainingRun, job: TrainingJob, state: TrainState, reason: str, run_dir: Path) -> dict[str, Any]:
    """train_metrics.json: train_loss is the last optimizer step's loss, valid the per-epoch
    validation losses; completed is False when a budget (max_steps, max_time_s) stopped the run."""
    return {
        "schema": 1,
        "name": cfg.name,
        "task": cfg.task.name,
        "model": cfg.model.name,
        "adapter": dataclasses.asdict(cfg.adapter),
        "trainable_params": sum(p.numel() for p in job.params),
        "base_fingerprint": job.built.base_fingerprint,
        "completed": reason == "finished",
        "stop_reason": reason,
        "steps": state.step,
        "total_steps": job.total_steps,
        "micro_batches_per_epoch": job.data.micro_batches_per_epoch,
        "epochs_completed": state.step * cfg.train.grad_accum // job.data.micro_batches_per_epoch,
        "train_loss": state.last_loss,
        "valid": state.valid,
        "valid_loss": state.valid[-1]["loss"] if state.valid else None,
        "valid_batch_mean_loss": state.valid[-1]["batch_mean_loss"] if state.valid else None,
        "completion_tokens": state.tokens,
        "train_s": state.train_s,
        "world_size": job.ctx.world_size,
        "device": str(job.ctx.device),
        "precision": str(job.amp_dtype).removeprefix("torch.") if job.amp_dtype else "float32",
        "run_dir": str(run_dir),
        "adapter_dir": str(RunLayout(run_dir).adapter),
    }


def write_adapter(job: TrainingJob, model_name: str, target: Path, train_record: dict[str, Any]) -> None:
    """save_adapter into a staging directory that then takes `target`'s place (a reader never sees half
    an adapter); `train_record` goes into adapter_config.json's extra.train."""
    with atomic_directory(target) as staging:
        save_adapter(job.built.model, staging, base_fingerprint=job.built.base_fingerprint, model_name=model_name,
                     extra={"train": train_record})
