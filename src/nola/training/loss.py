"""The training objective: label-smoothed cross-entropy on completion tokens.

microsoft/LoRA `examples/NLG/src/model.py` (GPT2LMModel.forward) computes, per position,
(1 - ε)·(-log p[target]) + ε·mean over the vocabulary of (-log p), multiplies by the loss mask
and divides the sum by the mask's sum. That mixture is cross-entropy against the target
distribution (1 - ε)·onehot + ε/V, which is what `F.cross_entropy(label_smoothing=ε)` computes.

Here the sum is divided by the number of completion tokens in the whole optimizer step (all
micro-batches on all processes), so the gradient does not depend on how the global batch is split;
with one process and no accumulation this is LoRA's per-batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_token_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Σ over positions with loss_mask > 0 of loss_mask · smoothed CE; fp32 scalar.

    logits (B, T, V), or (N, V) already restricted to the loss_mask > 0 positions in row-major
    order (what `model(ids, output_mask=loss_mask > 0)` returns, skipping the context tokens'
    vocabulary projection); targets (B, T) long; loss_mask (B, T) float.
    """
    selected = loss_mask > 0
    picked = (logits if logits.dim() == 2 else logits[selected]).float()  # (N, V)
    per_token = F.cross_entropy(picked, targets[selected], reduction="none", label_smoothing=label_smoothing)
    return (per_token * loss_mask[selected].float()).sum()
