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

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F


def completion_loss_sum(model, batch, label_smoothing: float, chunk_tokens: int = 0,
                        amp: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """The summed loss of one batch's completion tokens through `model` (a `nola.model.GPT2`),
    its forward run under `amp()` (the precision's autocast): the logits, then
    `masked_token_loss_sum` in float32 (chunk_tokens 0); or the hidden states and the output layer
    through `chunked_linear_loss_sum`, whose matmuls run under `amp()` too (train.loss_chunk_tokens)."""
    selected = batch.loss_mask > 0
    if chunk_tokens <= 0:
        with amp():
            logits = model(batch.input_ids, output_mask=selected)
        return masked_token_loss_sum(logits, batch.targets, batch.loss_mask, label_smoothing)
    with amp():
        hidden = model(batch.input_ids, output_mask=selected, hidden_only=True)
        return chunked_linear_loss_sum(hidden, model.lm_head.weight, batch.targets[selected],
                                       batch.loss_mask[selected], label_smoothing, chunk_tokens)


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


DEFAULT_CHUNK_TOKENS = 256  # a suggested train.loss_chunk_tokens: 256 × vocab fp32 logits at a time (51 MB for GPT-2)


def chunked_linear_loss_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    label_smoothing: float,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """Σᵢ wᵢ · smoothed CE(hidden_i · weightᵀ, targetᵢ) without ever holding all N × V logits.

    hidden (N, d): the final hidden states of the completion positions; weight (V, d): the output
    layer (GPT-2's tied embedding); targets (N,) long; token_weights (N,) (the loss mask's values).
    Equal to `masked_token_loss_sum` on the projected logits up to float rounding. The logits are
    formed `chunk_tokens` rows at a time, their log-sum-exp taken in float32 even under bf16
    autocast, and the gradients for hidden and weight (each only when it requires one) computed in
    the same pass from softmax − (1 − ε)·onehot − ε/V, so the backward is a multiply (the fused
    linear cross-entropy of Liger-Kernel; Wijmans et al., "Cut Your Losses", 2024).
    """
    if hidden.shape[0] == 0:  # no completion token: a zero that still joins the graph
        return (hidden.sum() + weight.sum()).float() * 0.0
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, token_weights, float(label_smoothing),
                                            int(chunk_tokens))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The chunked loss and its gradients in one pass. With P the softmax of a chunk's logits z = hWᵀ,
    W̄ the mean of W's rows and sᵢ the token weights:
        lossᵢ = lse(zᵢ) − (1 − ε)·zᵢ,ₜ − ε·hᵢ·W̄            (mean over the vocabulary of zᵢ = hᵢ·W̄)
        ∂/∂hᵢ = sᵢ·(PᵢW − (1 − ε)·W[tᵢ] − ε·W̄)
        ∂/∂W  = (P)ᵀ(s∘H) − (1 − ε)·Σᵢ sᵢ e_{tᵢ} hᵢᵀ − (ε/V)·1·(Σᵢ sᵢhᵢ)ᵀ
    so the onehot and smoothing terms cost rows × width, not rows × vocabulary: per chunk the logits
    are written once and read by the log-sum-exp and the softmax, whose output one matmul reads."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, label_smoothing, chunk_tokens):
        ctx.weight_dtype = weight.dtype
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wide = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
        keep = 1.0 - label_smoothing
        mean_row = weight.to(wide).mean(dim=0) if label_smoothing else None  # W̄ (d,), for the smoothing terms
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) if need_weight else None
        weighted_sum = torch.zeros(weight.shape[1], dtype=wide, device=weight.device)  # Σᵢ sᵢhᵢ
        total = torch.zeros((), dtype=wide, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            piece, target, scale = hidden[rows], targets[rows], token_weights[rows].to(wide)
            logits = (piece @ weight.t()).to(wide)  # (n, V); a bf16 matmul under autocast, then fp32
            per_token = torch.logsumexp(logits, dim=1) - keep * logits.gather(1, target.unsqueeze(1)).squeeze(1)
            if label_smoothing:
                per_token = per_token - label_smoothing * (piece.to(wide) @ mean_row)
            total += (per_token * scale).sum()
            if not (need_hidden or need_weight):
                continue
            probs = torch.softmax(logits, dim=1)
            del logits
            if need_hidden:
                grad = (probs @ weight.to(probs.dtype)).to(wide) - keep * weight[target].to(wide)
                if label_smoothing:
                    grad -= label_smoothing * mean_row
                grad_hidden[rows] = grad * scale.unsqueeze(1)
            if need_weight:
                scaled = piece.to(wide) * scale.unsqueeze(1)  # sᵢhᵢ
                grad_weight += (probs.t() @ scaled.to(probs.dtype)).to(wide)
                grad_weight.index_add_(0, target, scaled, alpha=-keep)
                weighted_sum += scaled.sum(dim=0)
        if need_weight and label_smoothing:
            grad_weight -= (label_smoothing / weight.shape[0]) * weighted_sum
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total.to(grad_hidden.dtype) if grad_hidden is not None else None,
                (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None,
                None, None, None, None)
