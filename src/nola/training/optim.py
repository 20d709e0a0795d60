"""Optimizer, learning-rate schedule and numeric precision of a training run.

Optimizer (`train.optimizer`):
- `lora_adamw` (default; every paper recipe): the AdamW of microsoft/LoRA
  `examples/NLG/src/optimizer.py`, which the LoRA and NOLA GPT-2 scripts run with `--correct_bias`.
  Per parameter at step t: m ← β₁m + (1-β₁)g, v ← β₂v + (1-β₂)g², then
  p ← p - lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · m / (√v + ε) and, after that update, p ← p - lr·wd·p.
  ε is added to the raw √v with the bias correction folded into the step size, so its effective
  ε is ε/√(1-β₂ᵗ) (≈ 32× larger at step 1 with β₂ = 0.999); the decay uses the updated weight.
- `adamw`: torch.optim.AdamW (ε added to the bias-corrected √v̂, decay before the update). Its
  updates differ from LoRA's by up to a few per cent of the largest update, most on parameters
  with small gradients (NOLA's coefficients); kept for comparison.

Schedule (LoRA `get_linear_schedule_with_warmup`, advanced as `gpt2_ft.py` advances it): factor
t / warmup while t < warmup, then (total - t) / (total - warmup), floor 0, where t counts
*micro-batches*: gpt2_ft.py steps the scheduler after every micro-batch, including those that only
accumulate, and sets its total (`max_step`) from micro-batches. The update that closes micro-batch
n (1-based) therefore uses factor(n - 1); with `grad_accum` g, update u uses factor(u·g - 1).
The learning rate is a pure function of the update index, so resuming needs no scheduler state.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from nola.errors import NolaError

OPTIMIZERS = ("lora_adamw", "adamw")


class LoraAdamW(torch.optim.Optimizer):
    """microsoft/LoRA's AdamW (examples/NLG/src/optimizer.py); see the module docstring for the update."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                 correct_bias: bool = True) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(eps)
                step_size = lr
                if group["correct_bias"]:
                    step = state["step"]
                    step_size = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
                param.addcdiv_(exp_avg, denom, value=-step_size)
                if decay > 0.0:
                    param.add_(param, alpha=-lr * decay)
        return loss


def build_optimizer(params: list[torch.nn.Parameter], train) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names, with the recipe's lr, β, ε and weight decay."""
    settings = dict(lr=train.lr, betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_eps,
                    weight_decay=train.weight_decay)
    if train.optimizer == "lora_adamw":
        return LoraAdamW(params, correct_bias=True, **settings)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, **settings)
    raise NolaError(f"train.optimizer={train.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """The LR factor after t scheduler steps (LoRA `get_linear_schedule_with_warmup`)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


@dataclass(frozen=True)
class Schedule:
    """Linear warmup and decay counted in micro-batches, as gpt2_ft.py counts them.

    warmup_micro_batches, total_micro_batches: LoRA's `--warmup_step` and `max_step` (both in
    micro-batches); grad_accum: micro-batches per update.
    """

    lr: float
    warmup_micro_batches: int
    total_micro_batches: int
    grad_accum: int

    def lr_at(self, update: int) -> float:
        """The learning rate of update `update` (0-based): lr · factor((update + 1)·grad_accum - 1)."""
        factor = linear_warmup_decay(self.warmup_micro_batches, self.total_micro_batches)
        return self.lr * factor((update + 1) * self.grad_accum - 1)

    def apply(self, optimizer: torch.optim.Optimizer, update: int) -> float:
        """Set every parameter group's lr for update `update`; return it."""
        lr = self.lr_at(update)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device`; None means plain float32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise NolaError("train.precision=fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def exact_float32(device: torch.device) -> None:
    """Turn TF32 off for CUDA matmuls and convolutions: `precision=fp32` (the paper recipes' setting;
    the LoRA and NOLA scripts train in float32) then means float32 on every GPU. No effect on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context that runs the forward in `dtype` (mixed precision), or does nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
