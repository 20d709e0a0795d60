"""Fine-tune GPT-2 with an adapter: `python -m nola.train [hydra overrides]`.

`python -m nola.train task=e2e adapter=nola model=gpt2-medium` is the NOLA paper's GPT-2 M E2E run
(the default); `experiment=e2e/lora_gpt2m` selects a paper-table cell; `-m adapter=lora,nola` sweeps;
`--cfg job` prints the composed configuration. Rerunning the same command continues from the run's
last checkpoint. Under `torchrun --nproc_per_node=N` the configured batch is the global batch.

The run directory (hydra.run.dir = runs/<name>, files named by `nola.layout.RunLayout`) receives
config.yaml (resolved), tensorboard/, checkpoints/, adapter/ (the final adapter,
`nola.adapters.save_adapter`) and train_metrics.json.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nola.adapters import save_adapter
from nola.build import build_model, resolve_weights
from nola.config import CONF_DIR, launch, typed_config
from nola.fileio import ensure_writable_dir, write_json_atomic, write_text_atomic
from nola.allocator import keep_freed_memory
from nola.errors import NolaError, exit_on_user_error
from nola.layout import RunLayout
from nola.model import GPT2Config
from nola.tokenizer import load_tokenizer
from nola.training import checkpoint as ckpt
from nola.training.config import check_train_config
from nola.training.data import load_training_data
from nola.training.distributed import (
    DistContext,
    barrier,
    broadcast_parameters,
    init_distributed,
    main_process_first,
    shutdown_distributed,
)
from nola.training.loop import TrainingJob, TrainState, fit, restore, schedule_for
from nola.training.monitor import Monitor
from nola.training.optim import autocast_dtype, build_optimizer, exact_float32, grad_scaler

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


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train per `cfg` into `run_dir` (default: paths.runs_dir/name); return the training metrics.

    Order: configuration checks, then the base weights (offline without weights fails here, before
    any other work), the run directory, the data (missing files fail here, before the model is
    loaded), the model; then the loop, resuming if a checkpoint exists.
    """
    typed_config(cfg)  # every schema check, before the process group, the weights or the data
    run_dir = Path(run_dir) if run_dir is not None else Path(cfg.paths.runs_dir) / str(cfg.name)
    ctx = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        return _train(cfg, run_dir, ctx)
    finally:
        shutdown_distributed(ctx)


def _train(cfg: DictConfig, run_dir: Path, ctx: DistContext) -> dict:
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
    data = load_training_data(cfg, tokenizer, ctx, max_len)
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
        cfg=cfg, ctx=ctx, built=built, data=data, optimizer=optimizer,
        schedule=schedule_for(cfg.train, data.micro_batches_per_epoch),
        scaler=grad_scaler(amp_dtype), amp_dtype=amp_dtype, checkpoint_dir=layout.checkpoints,
        config_record=resume_record(cfg, built.base_fingerprint),
    )
    if cfg.train.save_epoch_adapters:
        job.save_epoch_adapter = lambda epoch, state: write_adapter(
            job, layout.epoch_adapter(epoch), {"epoch": epoch, "steps": state.step,
                                               "valid": state.valid[-1] if state.valid else None})
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
    metrics = _metrics(job, state, reason, run_dir)
    if ctx.is_main:
        write_adapter(job, layout.adapter, {k: metrics[k] for k in ("steps", "completed", "valid_loss", "train_loss")})
        write_json_atomic(layout.train_metrics, metrics)
    barrier(ctx)
    return metrics


def resume_record(cfg: DictConfig, fingerprint: str) -> dict:
    """What a checkpoint must agree on with the run resuming it (see RESUME_FREE_KEYS)."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    record = {
        group: {key: value for key, value in resolved[group].items() if key not in free}
        for group, free in RESUME_FREE_KEYS.items()
    }
    record["base_fingerprint"] = fingerprint
    return record


def _prepare_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Create the run directory, prove it is writable, and record the resolved configuration."""
    ensure_writable_dir(run_dir, what="paths.runs_dir (or hydra.run.dir)")
    write_text_atomic(RunLayout(run_dir).config, OmegaConf.to_yaml(cfg, resolve=True))


class RunDirCheck(Callback):
    """Hydra callback: an unwritable run/sweep directory is a one-line error before Hydra creates it.

    Enabled in conf/config.yaml under `hydra.callbacks` (`_target_: nola.train.RunDirCheck`).
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        exit_on_user_error(ensure_writable_dir)(Path(config.hydra.run.dir), what="paths.runs_dir (or hydra.run.dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        exit_on_user_error(ensure_writable_dir)(Path(config.hydra.sweep.dir), what="paths.runs_dir (or hydra.sweep.dir)")


def _metrics(job: TrainingJob, state: TrainState, reason: str, run_dir: Path) -> dict:
    """train_metrics.json: train_loss is the last optimizer step's loss, valid the per-epoch
    validation losses; completed is False when a budget (max_steps, max_time_s) stopped the run."""
    cfg = job.cfg
    return {
        "schema": 1,
        "name": str(cfg.name),
        "task": cfg.task.name,
        "model": cfg.model.name,
        "adapter": OmegaConf.to_container(cfg.adapter, resolve=True),
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


def write_adapter(job: TrainingJob, target: Path, train_record: dict) -> None:
    """save_adapter into a temporary directory, then swap it in for the previous one (a reader never
    sees half an adapter); `train_record` goes into adapter_config.json's extra.train."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}-tmp-{os.getpid()}"
    old = target.parent / f".{target.name}-old-{os.getpid()}"
    for leftover in (temp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    temp.mkdir()
    try:
        save_adapter(job.built.model, temp, base_fingerprint=job.built.base_fingerprint, model_name=job.cfg.model.name,
                     extra={"train": train_record})
        if target.exists():
            os.replace(target, old)
        os.replace(temp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """The objective a Hydra sweeper minimises: the final validation loss (token mean)."""
    from hydra.core.hydra_config import HydraConfig

    keep_freed_memory()
    return train(cfg, HydraConfig.get().runtime.output_dir)["valid_loss"]


if __name__ == "__main__":
    launch(main)
