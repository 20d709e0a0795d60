"""Adapter layers: a frozen `nn.Linear` plus low-rank updates ΔW = (α/r)·B·A on row blocks of it.

`AdaptedLinear` wraps the original layer as `base_layer` (so the base weights keep their names under
`.base_layer.`) and holds one slot per adapted row block in `adapter` (q, k, v of the fused c_attn,
an enable mask as in microsoft/LoRA's MergedLinear; the single block "w" elsewhere). A slot only
supplies its factors A (r × d_in) and B (d_out × r):
- `LoraSlot` (Hu et al., 2022): A and B are the parameters; A ~ kaiming_uniform(a=√5), B = 0.
- `NolaSlot` (Koohpayegani et al., 2024, §3): A = A0 + Σᵢ αᵢAᵢ, B = Σⱼ βⱼBⱼ; only α, β train.
The forward is the low-rank path x·Aᵀ·Bᵀ (ΔW is never materialised in training); `merge()` folds
ΔW into the base weight for inference and `unmerge()` takes it out again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nola.adapters.bases import mix, random_basis, random_offset
from nola.errors import NolaError

NOLA_SEED_ROLES = ("offset_A", "basis_A", "basis_B")


class LoraSlot(nn.Module):
    """LoRA factors: trainable A (r × d_in), kaiming-uniform(a=√5) from `init_seed`, and B = 0."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, init_seed: int, device, dtype) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        if not self.lora_A.is_meta:
            with torch.no_grad():
                self.lora_A.copy_(random_offset(init_seed, rank, in_features))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B


class NolaSlot(nn.Module):
    """NOLA factors from k + l trainable coefficients over frozen random bases.

    A = A0 + reshape(α @ basis_A), basis_A: (k, r·d_in); B = reshape(β @ basis_B), basis_B: (l, d_out·r).
    The bases (and A0) are non-persistent buffers: rebuilt from `seeds`, never saved. With
    `cache_bases=False` only A0 is kept and the bases are regenerated in every forward and backward.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        num_basis_a: int,
        num_basis_b: int,
        seeds: dict[str, int],
        cache_bases: bool,
        device,
        dtype,
    ) -> None:
        super().__init__()
        self.shape_A = (rank, in_features)
        self.shape_B = (out_features, rank)
        self.cache_bases = cache_bases
        self.seeds = dict(seeds)
        self.nola_coef_A = nn.Parameter(torch.zeros(num_basis_a, device=device, dtype=dtype))
        self.nola_coef_B = nn.Parameter(torch.zeros(num_basis_b, device=device, dtype=dtype))
        self.register_buffer("offset_A", torch.empty(self.shape_A, device=device, dtype=dtype), persistent=False)
        self.basis_A: torch.Tensor | None
        self.basis_B: torch.Tensor | None
        for name, count, numel in self._basis_specs():
            buffer = torch.empty(count, numel, device=device, dtype=dtype) if cache_bases else None
            self.register_buffer(name, buffer, persistent=False)
        self.rebuild_frozen()

    def _basis_specs(self) -> list[tuple[str, int, int]]:
        rank, d_in = self.shape_A
        return [
            ("basis_A", self.nola_coef_A.shape[0], rank * d_in),
            ("basis_B", self.nola_coef_B.shape[0], self.shape_B[0] * rank),
        ]

    def rebuild_frozen(self) -> None:
        """(Re)generate A0 and the cached bases from the seeds: float32 on CPU, then moved and cast."""
        if self.offset_A.is_meta:
            return
        like = self.offset_A
        self.offset_A = random_offset(self.seeds["offset_A"], *self.shape_A).to(like.device, like.dtype)
        if self.cache_bases:
            for name, count, numel in self._basis_specs():
                setattr(self, name, random_basis(self.seeds[name], count, numel).to(like.device, like.dtype))

    def set_seeds(self, seeds: dict[str, int]) -> None:
        if set(seeds) != set(NOLA_SEED_ROLES):
            raise NolaError(f"NOLA seeds must name {', '.join(NOLA_SEED_ROLES)}; got {', '.join(sorted(seeds))}")
        if seeds != self.seeds:
            self.seeds = {role: int(seeds[role]) for role in NOLA_SEED_ROLES}
            self.rebuild_frozen()

    def _apply(self, fn, recurse: bool = True):
        """After a dtype change, rebuild the frozen tensors from float32 rather than re-cast them."""
        dtype_before = self.offset_A.dtype
        super()._apply(fn, recurse)
        if self.offset_A.dtype != dtype_before:
            self.rebuild_frozen()
        return self

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        (_, _, numel_a), (_, _, numel_b) = self._basis_specs()
        delta_a = mix(self.nola_coef_A, self.basis_A, self.seeds["basis_A"], numel_a)
        b = mix(self.nola_coef_B, self.basis_B, self.seeds["basis_B"], numel_b)
        return self.offset_A + delta_a.view(self.shape_A), b.view(self.shape_B)


class AdaptedLinear(nn.Module):
    """`base_layer(x)` plus (α/r)·dropout(x)·Aₛᵀ·Bₛᵀ added to the output rows of each slot s."""

    def __init__(
        self,
        base_layer: nn.Linear,
        slots: dict[str, nn.Module],
        rows: dict[str, tuple[int, int]],
        *,
        rank: int,
        scale: float,
        dropout: float,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = nn.ModuleDict(slots)
        self.rows = dict(rows)
        self.rank = rank
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._covers_all = len(rows) == 1 and next(iter(rows.values())) == (0, base_layer.out_features)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        factors = [slot.factors() for slot in self.adapter.values()]
        x = self.dropout(x)
        if self._covers_all:
            a, b = factors[0]
            return y + F.linear(F.linear(x, a) * self.scale, b)
        hidden = F.linear(x, torch.cat([a for a, _ in factors])) * self.scale  # (..., slots·r)
        # The update is assembled with one cat (zeros for rows no slot adapts) and added once: adding
        # into output slices in place would make backward copy the whole output gradient per slot.
        pieces, filled = [], 0
        ordered = sorted(zip(self.rows.values(), factors, hidden.split(self.rank, dim=-1)), key=lambda item: item[0])
        for (start, stop), (_, b), h in ordered:
            if start > filled:
                pieces.append(h.new_zeros(*h.shape[:-1], start - filled))
            pieces.append(F.linear(h, b))
            filled = stop
        if filled < self.out_features:
            pieces.append(hidden.new_zeros(*hidden.shape[:-1], self.out_features - filled))
        return y + torch.cat(pieces, dim=-1)

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔWₛ = (α/r)·Bₛ·Aₛ (d_out_s × d_in) in float32, for merging and export."""
        a, b = self.adapter[name].factors()
        return (b.float() @ a.float()) * self.scale

    def stacked_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One LoRA pair for the whole layer: A (slots·r × d_in) and zero-padded B (d_out × slots·r).

        B·A·(α/r) equals the sum of the slots' ΔW placed in their rows (peft's view of a fused layer).
        """
        factors = [tuple(t.detach().float() for t in slot.factors()) for slot in self.adapter.values()]
        stacked_a = torch.cat([a for a, _ in factors])
        stacked_b = stacked_a.new_zeros(self.out_features, stacked_a.shape[0])
        for index, ((start, stop), (_, b)) in enumerate(zip(self.rows.values(), factors)):
            stacked_b[start:stop, index * self.rank : (index + 1) * self.rank] = b
        return stacked_a, stacked_b

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """A new tensor W + Σₛ ΔWₛ (the base weight is not touched), added in float32."""
        weight = self.base_layer.weight
        if self.merged:
            return weight.detach().clone()
        merged = weight.detach().float().clone()
        for name, (start, stop) in self.rows.items():
            merged[start:stop] += self.delta_weight(name)
        return merged.to(weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every slot's ΔW into the base weight (inference: no adapter cost per token)."""
        if self.merged:
            raise NolaError("adapters are already merged; call unmerge() first")
        self.base_layer.weight.copy_(self.merged_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract what merge() added (exact up to the rounding of the add)."""
        if not self.merged:
            raise NolaError("adapters are not merged; nothing to unmerge")
        weight = self.base_layer.weight
        for name, (start, stop) in self.rows.items():
            weight[start:stop] = (weight[start:stop].float() - self.delta_weight(name)).to(weight.dtype)
        self.merged = False
