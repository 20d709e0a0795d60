"""Optimizer, learning-rate schedule and numeric precision of a training run.

AdamW over the trainable (adapter) parameters only, with the recipe's β, ε and decoupled weight
decay; bias correction is always on (LoRA's `--correct_bias`). Two differences from LoRA's own
`examples/NLG/src/optimizer.py` AdamW remain by design (torch's is used): torch adds ε to the
bias-corrected √v̂ (LoRA to √v, i.e. an ε larger by 1/√(1-β₂ᵗ) early on) and decays the weights
before the Adam update (LoRA after it). With the papers' ε = 1e-6 both are far below the update size.

Schedule (LoRA `get_linear_schedule_with_warmup`): factor t / warmup during warmup, then
(total - t) / (total - warmup) down to 0, t counted in optimizer steps.
"""

from __future__ import annotations

import contextlib

import torch
from torch.optim.lr_scheduler import LambdaLR

from nola.errors import NolaError


def build_optimizer(params: list[torch.nn.Parameter], train) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        params,
        lr=train.lr,
        betas=(train.adam_beta1, train.adam_beta2),
        eps=train.adam_eps,
        weight_decay=train.weight_decay,
    )


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """The LR factor at optimizer step t (0-based count of updates already made)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device`; None means plain fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise NolaError("train.precision=fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context that runs the forward in `dtype` (mixed precision), or does nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
