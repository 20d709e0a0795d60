"""The training loop: optimizer steps over epochs, validation, checkpoints, and exact resumption.

One optimizer step (microsoft/LoRA `examples/NLG/src/gpt2_ft.py`, `train_validate`): every process
runs its share of the next `grad_accum` micro-batches forward and backward; with
`train.loss_normalization=batch_mean` (LoRA's) each micro-batch's loss is its token mean,
sum / (completion tokens + 1e-4), divided by grad_accum, the tokens counted over the whole
micro-batch (all processes' rows: the gradients summed over processes are one process's); with
`step_token_mean` the sum divided by the completion tokens of the whole step. One all-reduce sums
the gradients; they are optionally clipped; the optimizer updates the adapter with the learning
rate of this update (`nola.training.optim.Schedule`, counted in micro-batches as gpt2_ft.py counts
it). The loss is checked first: a NaN/inf loss (or gradient norm) stops the run with a NolaError
and the last good checkpoint left untouched. A final group of fewer than grad_accum micro-batches
is not applied, as in gpt2_ft.py (it stops at max_step before that update).

Determinism: the data order is a function of (seed, epoch) (`nola.training.data`) and the global
RNG (dropout) is reseeded before every step from (seed, step, rank), so the random state at any
step is a function of the step alone and a checkpoint needs only the step to restore it. A run
resumed from its checkpoint therefore computes bit-for-bit what an uninterrupted run does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from nola.build import BuiltModel
from nola.errors import NolaError
from nola.runtime import DistContext, all_reduce_gradients, all_reduce_sum, barrier
from nola.training import checkpoint as ckpt
from nola.training.config import TrainConfig
from nola.training.data import TrainingData
from nola.training.loss import completion_loss_sum
from nola.training.monitor import Monitor
from nola.training.optim import Schedule, autocast

LORA_MASK_EPSILON = 1e-4  # microsoft/LoRA model.py: loss.sum() / (lm_mask.sum() + 0.0001)


@dataclass
class TrainState:
    """Where a run is: optimizer steps done (which fixes the epoch and batch position), the
    completion tokens trained on, training seconds so far, and the validation history."""

    step: int = 0
    tokens: int = 0
    train_s: float = 0.0
    last_loss: float | None = None
    valid: list[dict] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> TrainState:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


@dataclass
class Update:
    """What one optimizer update needs besides its batches (`train_step`)."""

    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    train: TrainConfig  # the recipe: label_smoothing, loss_normalization, max_grad_norm
    ctx: DistContext
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None


class NonFiniteStep(Exception):
    """A NaN/inf loss or gradient norm at an update (the loop turns it into a NolaError)."""

    def __init__(self, loss: float, grad_norm: float) -> None:
        super().__init__(f"loss {loss}, gradient norm {grad_norm}")
        self.loss, self.grad_norm = loss, grad_norm


@dataclass
class TrainingJob:
    """Everything the loop works on."""

    train: TrainConfig
    ctx: DistContext
    built: BuiltModel
    data: TrainingData
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    checkpoint_dir: Path
    config_record: dict
    monitor: Monitor | None = None
    save_epoch_adapter: Callable[[int, TrainState], None] | None = None  # main process, at every epoch end

    @property
    def total_micro_batches(self) -> int:
        return self.train.epochs * self.data.micro_batches_per_epoch

    @property
    def total_steps(self) -> int:
        """Optimizer updates of the whole run (LoRA: max_step micro-batches // grad_acc)."""
        return self.total_micro_batches // self.train.grad_accum

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.built.trainable.values())

    def update_inputs(self) -> Update:
        return Update(self.built.model, self.params, self.optimizer, self.schedule, self.train, self.ctx,
                      self.amp_dtype, self.scaler)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The global RNG seed of optimizer step `step` on process `rank`."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def schedule_for(train, micro_batches_per_epoch: int) -> Schedule:
    """The run's learning-rate schedule (warmup and total in micro-batches, as gpt2_ft.py)."""
    return Schedule(train.lr, train.warmup_steps, train.epochs * micro_batches_per_epoch, train.grad_accum)


def fit(job: TrainingJob, state: TrainState) -> str:
    """Train until the schedule ends or a budget stops it; return "finished", "max_steps" or "max_time"."""
    train = job.train
    accum, per_epoch = train.grad_accum, job.data.micro_batches_per_epoch
    started = time.perf_counter()
    if train.max_steps and state.step >= train.max_steps:
        return "max_steps"
    job.built.model.train()
    update = job.update_inputs()
    while state.step < job.total_steps:
        step_started = time.perf_counter()
        first = state.step * accum
        micro_batches = [job.data.micro_batch(index) for index in range(first, first + accum)]
        torch.manual_seed(step_seed(train.seed, state.step, job.ctx.rank))
        over_time = bool(train.max_time_s) and step_started - started >= train.max_time_s
        try:
            result = train_step(update, micro_batches, over_time, state.step)
        except NonFiniteStep as bad:
            raise NolaError(_non_finite_message(job, state.step + 1, bad.loss, bad.grad_norm)) from None
        state.step += 1
        state.tokens += result.completion_tokens
        state.last_loss = result.loss
        state.train_s += time.perf_counter() - step_started
        if job.monitor:
            job.monitor.step(state.step, loss=result.loss, lr=result.lr, grad_norm=result.grad_norm,
                             input_tokens=result.input_tokens)
        last = state.step == job.total_steps  # gpt2_ft.py never applies a final partial accumulation
        epochs_done = train.epochs if last else (first + accum) // per_epoch
        epoch_end = last or epochs_done > first // per_epoch
        if epoch_end and train.eval_every_epoch:
            losses = validation_loss(job.built.model, job.data.valid, job.ctx, job.amp_dtype, train.loss_chunk_tokens)
            state.valid.append({"epoch": epochs_done, "step": state.step, **losses})
            if job.monitor:
                job.monitor.validation(state.step, losses["loss"], losses["batch_mean_loss"])
        if epoch_end and job.save_epoch_adapter is not None and job.ctx.is_main:
            job.save_epoch_adapter(epochs_done, state)  # before the checkpoint: a resume redoes it
        reason = "max_steps" if train.max_steps and state.step >= train.max_steps else None
        reason = reason or ("max_time" if result.stop_requested else None)
        if reason or epoch_end or state.step % train.save_every == 0:
            save(job, state)
        if reason:
            return reason
    return "finished"


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    completion_tokens: int
    input_tokens: int
    stop_requested: bool


def train_step(update: Update, micro_batches, stop_requested: bool, step: int) -> StepResult:
    """Optimizer update `step` (0-based) over this process's micro-batches (see the module docstring)."""
    device, model, train = update.ctx.device, update.model, update.train
    # per micro-batch: completion tokens (summed over processes: the whole micro-batch's count), then
    # the step's completion and input tokens
    counts = torch.tensor(
        [float(b.loss_mask.sum()) for b in micro_batches]
        + [sum(float(b.loss_mask.sum()) for b in micro_batches), sum(int(b.attention_mask.sum()) for b in micro_batches)],
        dtype=torch.float64, device=device,
    )
    all_reduce_sum(update.ctx, counts)
    micro_tokens, step_tokens, input_tokens = counts[: len(micro_batches)].tolist(), float(counts[-2]), int(counts[-1])
    per_batch = train.loss_normalization == "batch_mean"
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    for batch, tokens in zip(micro_batches, micro_tokens):
        batch = batch.to(device)
        # Rows are right-padded: the causal mask alone keeps real tokens from seeing padding and
        # their positions are 0..T-1, so no attention mask is passed (SDPA keeps its fused kernel).
        total = completion_loss_sum(model, batch, train.label_smoothing, train.loss_chunk_tokens,
                                    amp=lambda: autocast(device, update.amp_dtype))
        if per_batch:
            part = total / (tokens + LORA_MASK_EPSILON) / len(micro_batches)
        else:
            part = total / max(step_tokens, 1.0)
        (update.scaler.scale(part) if update.scaler else part).backward()
        loss_sum += part.detach()
    all_reduce_gradients(update.ctx, update.params)
    flags = torch.stack([loss_sum.double(), torch.tensor(float(stop_requested), dtype=torch.float64, device=device)])
    all_reduce_sum(update.ctx, flags)
    loss = float(flags[0])
    if update.scaler:
        update.scaler.unscale_(update.optimizer)
    grad_norm = float(_grad_norm(update.params, train.max_grad_norm))
    if not math.isfinite(loss) or (update.scaler is None and not math.isfinite(grad_norm)):
        raise NonFiniteStep(loss, grad_norm)
    lr = update.schedule.apply(update.optimizer, step)
    if update.scaler:
        update.scaler.step(update.optimizer)
        update.scaler.update()
    else:
        update.optimizer.step()
    update.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, grad_norm, lr, int(step_tokens), input_tokens, bool(flags[1] > 0))


def _grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.nn.utils.get_total_norm(grads)


def _non_finite_message(job: TrainingJob, step: int, loss: float, grad_norm: float) -> str:
    latest = ckpt.latest_name(job.checkpoint_dir)
    if latest:
        kept = f"the last good checkpoint {job.checkpoint_dir / latest} is kept"
    else:
        kept = "no checkpoint was written yet"
    return (
        f"training stopped at step {step}: loss {loss}, gradient norm {grad_norm} (not finite); {kept}. "
        f"Lower train.lr (now {job.train.lr}), enable train.max_grad_norm or use train.precision=fp32, then rerun"
    )


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches, ctx: DistContext, amp_dtype: torch.dtype | None = None,
                    chunk_tokens: int = 0) -> dict[str, float]:
    """Cross-entropy (no label smoothing, as LoRA's `evaluate`) over this run's validation batches.

    loss: the token mean over all batches; batch_mean_loss: LoRA's figure, the mean over batches of
    each batch's sum / (completion tokens + 1e-4) (gpt2_ft.py `evaluate`, an AverageMeter of
    per-batch means).
    """
    device = ctx.device
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, tokens, sum of batch means, batches
    for batch in batches:
        batch = batch.to(device)
        total = completion_loss_sum(model, batch, 0.0, chunk_tokens, amp=lambda: autocast(device, amp_dtype)).double()
        tokens = batch.loss_mask.sum().double()
        sums += torch.stack([total, tokens, total / (tokens + LORA_MASK_EPSILON), torch.ones_like(total)])
    all_reduce_sum(ctx, sums)
    model.train()
    return {"loss": float(sums[0] / sums[1].clamp(min=1.0)), "batch_mean_loss": float(sums[2] / sums[3].clamp(min=1.0))}


def save(job: TrainingJob, state: TrainState) -> None:
    """Write a checkpoint of `state` (main process) and wait for it on every process."""
    if job.ctx.is_main:
        trainer = {
            "optimizer": job.optimizer.state_dict(),
            "scaler": job.scaler.state_dict() if job.scaler else {},
        }
        micro_batches = state.step * job.train.grad_accum
        record = {
            **asdict(state),
            "position": dict(zip(("epoch", "micro_batch"), divmod(micro_batches, job.data.micro_batches_per_epoch))),
            "micro_batches_per_epoch": job.data.micro_batches_per_epoch,
            "total_steps": job.total_steps,
            "world_size": job.ctx.world_size,
            "rng": {"scheme": "reseeded every step from (train.seed, step, rank)", "seed": job.train.seed},
            "config": job.config_record,
        }
        ckpt.save_checkpoint(job.checkpoint_dir, state.step, dict(job.built.trainable), trainer, record,
                             keep_last=job.train.keep_last)
    barrier(job.ctx)


def restore(job: TrainingJob, checkpoint: ckpt.Checkpoint) -> TrainState:
    """Load a checkpoint into the job after checking it belongs to this configuration and data."""
    where = checkpoint.path
    _check_same_config(checkpoint.state.get("config", {}), job.config_record, where)
    saved_per_epoch = checkpoint.state.get("micro_batches_per_epoch")
    if saved_per_epoch != job.data.micro_batches_per_epoch:
        raise NolaError(
            f"{where} was written with {saved_per_epoch} micro-batches per epoch, the data now gives "
            f"{job.data.micro_batches_per_epoch}; the training data changed: use a new run name or delete {where.parent}"
        )
    expected, found = set(job.built.trainable), set(checkpoint.tensors)
    if expected != found:
        missing = sorted(expected - found) or sorted(found - expected)
        raise NolaError(f"{where}: trainable tensors do not match the model (first differing: {missing[0]!r})")
    with torch.no_grad():
        for name, param in job.built.trainable.items():
            saved = checkpoint.tensors[name]
            if saved.shape != param.shape:
                raise NolaError(
                    f"{where}: tensor {name!r} has shape {tuple(saved.shape)}, the model {tuple(param.shape)}"
                )
            param.copy_(saved)
    job.optimizer.load_state_dict(checkpoint.trainer["optimizer"])
    if job.scaler and checkpoint.trainer.get("scaler"):
        job.scaler.load_state_dict(checkpoint.trainer["scaler"])
    return TrainState.from_json(checkpoint.state)


def _check_same_config(saved: dict, current: dict, where: Path, prefix: str = "") -> None:
    for key in sorted(set(saved) | set(current)):
        left, right = saved.get(key), current.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            _check_same_config(left, right, where, f"{prefix}{key}.")
        elif left != right:
            raise NolaError(
                f"{where} was trained with {prefix}{key}={left!r}, this run has {right!r}; rerun with the same "
                f"setting to resume, or choose another run name (name=...) to start a new run"
            )
