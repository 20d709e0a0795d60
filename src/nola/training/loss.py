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
    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, label_smoothing, chunk_tokens):
        vocab, ctx.weight_dtype = weight.shape[0], weight.dtype
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        wide = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=wide, device=hidden.device)
        keep = 1.0 - label_smoothing
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            piece, target, scale = hidden[rows], targets[rows], token_weights[rows].to(wide)
            logits = (piece @ weight.t()).to(wide)  # (n, V); a bf16 matmul under autocast, then fp32
            lse = torch.logsumexp(logits, dim=1)
            per_token = lse - keep * logits.gather(1, target.unsqueeze(1)).squeeze(1)
            if label_smoothing:
                per_token = per_token - label_smoothing * logits.mean(dim=1)
            total += (per_token * scale).sum()
            if need_hidden or need_weight:
                grad = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in the logits' memory
                if label_smoothing:
                    grad.sub_(label_smoothing / vocab)
                grad.scatter_add_(1, target.unsqueeze(1), torch.full_like(scale, -keep).unsqueeze(1))
                grad.mul_(scale.unsqueeze(1))
                grad = grad.to(piece.dtype) if grad.dtype != piece.dtype else grad
                if need_hidden:
                    grad_hidden[rows] = grad @ weight.to(grad.dtype)
                if need_weight:
                    grad_weight += (grad.t() @ piece.to(grad.dtype)).to(wide)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total.to(grad_hidden.dtype) if grad_hidden is not None else None,
                (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None,
                None, None, None, None)
