"""The NOLA reference ALGORITHM, re-implemented for benchmarks and equivalence tests.

UCDvision/NOLA `gpt/src/model_nola.py` computes each factor of ΔW = (α/r)·B·A as a frozen weight
plus a custom autograd function of the coefficients that, in its forward AND in its backward,
re-seeds the global RNG (`torch.manual_seed(seed)`), redraws all k bases with `uniform_(−1, 1)` in
the coefficients' dtype on their device, scales them by 1/√k and mixes them with an einsum; it then
re-seeds the global RNG from a value it drew first. The factors are applied as x·Aᵀ then ·Bᵀ.
This module does the same (written from that description, not copied) so `make bench` can time it
against `NolaSlot`; on CPU it draws exactly the bases `nola.adapters.bases.random_basis` draws for
the same seed (both use torch's mt19937), so outputs and gradients can be compared.
"""

from __future__ import annotations

import math

import torch
from torch import nn

RESTORE_SEED_RANGE = 10**10


class _RedrawnBasesMix(torch.autograd.Function):
    """Σᵢ cᵢ·Wᵢ (out × in) with the bases Wᵢ redrawn from the global RNG in forward and backward."""

    @staticmethod
    def forward(ctx, coefficients: torch.Tensor, out_features: int, in_features: int, seed: int) -> torch.Tensor:
        ctx.save_for_backward(coefficients)
        ctx.shape_seed = (out_features, in_features, seed)
        bases = _redraw(coefficients, out_features, in_features, seed)
        return torch.einsum("b,boi->oi", coefficients, bases)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (coefficients,) = ctx.saved_tensors
        bases = _redraw(coefficients, *ctx.shape_seed)
        return torch.einsum("oi,boi->b", grad_output, bases), None, None, None


def _redraw(coefficients: torch.Tensor, out_features: int, in_features: int, seed: int) -> torch.Tensor:
    restore = int(torch.randint(RESTORE_SEED_RANGE, (1,)))
    torch.manual_seed(seed)
    count = coefficients.shape[0]
    bases = torch.empty(count, out_features, in_features, device=coefficients.device, dtype=coefficients.dtype)
    bases = bases.uniform_(-1.0, 1.0) * (1.0 / math.sqrt(count))
    torch.manual_seed(restore)
    return bases


class ReferenceNolaLinear(nn.Module):
    """The reference's NOLA adapter of one matrix: forward(x) = (α/r)·x·Aᵀ·Bᵀ (the delta only).

    A = offset_A + Σᵢ αᵢAᵢ, B = offset_B + Σⱼ βⱼBⱼ (offset_B None: B's frozen weight is zero, as
    the paper's init has it). Coefficients start at zero; only they train.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        alpha: float,
        num_basis_a: int,
        num_basis_b: int,
        seed_a: int,
        seed_b: int,
        offset_A: torch.Tensor,
        offset_B: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scale = alpha / rank
        self.seed_a, self.seed_b = seed_a, seed_b
        self.coef_A = nn.Parameter(torch.zeros(num_basis_a, dtype=offset_A.dtype, device=offset_A.device))
        self.coef_B = nn.Parameter(torch.zeros(num_basis_b, dtype=offset_A.dtype, device=offset_A.device))
        self.register_buffer("offset_A", offset_A.detach().clone())
        self.register_buffer("offset_B", None if offset_B is None else offset_B.detach().clone())

    @classmethod
    def like(cls, slot, scale: float) -> ReferenceNolaLinear:
        """The reference computation of one `NolaSlot` (same seeds, offset and coefficients)."""
        rank, in_features = slot.shape_A
        reference = cls(
            in_features,
            slot.shape_B[0],
            rank=rank,
            alpha=scale * rank,
            num_basis_a=slot.nola_coef_A.numel(),
            num_basis_b=slot.nola_coef_B.numel(),
            seed_a=slot.seeds["basis_A"],
            seed_b=slot.seeds["basis_B"],
            offset_A=slot.offset_A,
            offset_B=slot.offset_B,
        )
        with torch.no_grad():
            reference.coef_A.copy_(slot.nola_coef_A)
            reference.coef_B.copy_(slot.nola_coef_B)
        return reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = _RedrawnBasesMix.apply(self.coef_A, self.rank, self.in_features, self.seed_a) + self.offset_A
        b = _RedrawnBasesMix.apply(self.coef_B, self.out_features, self.rank, self.seed_b)
        if self.offset_B is not None:
            b = b + self.offset_B
        return (x @ a.t()) @ b.t() * self.scale
