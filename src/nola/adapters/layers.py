"""Adapter layers: a frozen `nn.Linear` plus low-rank updates ΔW = (α/r)·B·A on row blocks of it.

`AdaptedLinear` wraps the original layer as `base_layer` (so the base weights keep their names under
`.base_layer.`) and holds one slot per adapted row block in `adapter` (q, k, v of the fused c_attn,
an enable mask as in microsoft/LoRA's MergedLinear; the single block "w" elsewhere). A slot only
supplies its factors A (r × d_in) and B (d_out × r):
- `LoraSlot` (Hu et al., 2022): A and B are the parameters; A ~ kaiming_uniform(a=√5), B = 0.
- `NolaSlot` (Koohpayegani et al., 2024, §3): A = A0 + Σᵢ αᵢAᵢ, B = B0 + Σⱼ βⱼBⱼ; only α, β
  train. The bases live in `FrozenBasis` modules, which several slots may share (adapter.init=
  reference: one set for every layer, as the reference code's deep-copied block has).
The forward is the low-rank path x·Aᵀ·Bᵀ (ΔW is never materialised in training); `merge()` folds
ΔW into the base weight for inference and `unmerge()` takes it out again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nola.adapters.bases import mix, normal_offset, random_basis, random_offset
from nola.adapters.targets import OFFSET_ROLES, nola_seed_roles
from nola.errors import NolaError

Factors = tuple[torch.Tensor, torch.Tensor]


def draw_offset(init: str, seed: int, shape: tuple[int, int]) -> torch.Tensor:
    """NOLA's frozen A0 or B0 from its seed, float32 on CPU: N(0, 0.02) as the reference code leaves
    it (init=reference), LoRA's kaiming-uniform as the paper writes it (init=paper; its B0 is 0)."""
    draw = normal_offset if init == "reference" else random_offset
    return draw(seed, *shape)


def nola_factor(mixed: torch.Tensor, shape: tuple[int, int], offset: torch.Tensor | None) -> torch.Tensor:
    """A = A0 + reshape(Σᵢ αᵢAᵢ) (or B likewise) from the mixed bases; offset None: paper's B0 = 0.
    Used by a trained slot (`NolaSlot.factors`) and by the bank for any number of loaded adapters."""
    part = mixed.view(shape)
    return part if offset is None else offset + part


def stack_factors(pieces: list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]], out_features: int,
                  scale: float = 1.0) -> Factors:
    """A fused layer's slots (rows, A, B) as one LoRA pair in float32: A (slots·r × d_in) and scale·B
    zero-padded to (d_out × slots·r), so B·A equals the slots' B·A placed in their rows (peft's
    view of a fused layer; the bank's routed factors with scale = α/r)."""
    stacked_a = torch.cat([a.float() for _, a, _ in pieces])
    stacked_b = stacked_a.new_zeros(out_features, stacked_a.shape[0])
    column = 0
    for (start, stop), a, b in pieces:
        stacked_b[start:stop, column:column + a.shape[0]] = b.float() * scale
        column += a.shape[0]
    return stacked_a, stacked_b


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


class FrozenBasis(nn.Module):
    """`count` frozen random bases of `numel` entries, U(−1, 1)/√count, rebuilt from `seed`.

    Cached as a non-persistent buffer (never saved) or, with cache=False, regenerated in every
    forward and backward. One instance may serve many slots: moving or casting the model converts
    it once (a repeated `.to` of a shared module is a no-op), and a dtype change rebuilds it from
    float32 rather than re-casting rounded values.
    """

    def __init__(self, seed: int, count: int, numel: int, *, cache: bool, device, dtype) -> None:
        super().__init__()
        self.seed, self.count, self.numel = int(seed), count, numel
        self.register_buffer("basis", torch.empty(count, numel, device=device, dtype=dtype) if cache else None,
                             persistent=False)
        self.rebuild()

    def rebuild(self) -> None:
        if self.basis is not None and not self.basis.is_meta:
            self.basis = random_basis(self.seed, self.count, self.numel).to(self.basis.device, self.basis.dtype)

    def set_seed(self, seed: int) -> None:
        if int(seed) != self.seed:
            self.seed = int(seed)
            self.rebuild()

    def _apply(self, fn, recurse: bool = True):
        dtype_before = None if self.basis is None else self.basis.dtype
        super()._apply(fn, recurse)
        if self.basis is not None and self.basis.dtype != dtype_before:
            self.rebuild()
        return self

    def mix(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Σᵢ cᵢ·basisᵢ: (numel,)."""
        return mix(coefficients, self.basis, self.seed, self.numel)


class NolaSlot(nn.Module):
    """NOLA factors from k + l trainable coefficients over frozen random bases.

    A = A0 + reshape(α @ basis_A), basis_A: (k, r·d_in); B = B0 + reshape(β @ basis_B), basis_B:
    (l, d_out·r). `init` decides the offsets (nola.adapters.config): reference: A0, B0 ~ N(0, 0.02);
    paper: A0 kaiming-uniform, B0 = 0. Offsets are non-persistent buffers rebuilt from
    `offset_seeds`; the bases are `FrozenBasis` modules (possibly shared with other slots).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        frozen_A: FrozenBasis,
        frozen_B: FrozenBasis,
        offset_seeds: dict[str, int],
        init: str,
        device,
        dtype,
    ) -> None:
        super().__init__()
        self.shape_A = (rank, in_features)
        self.shape_B = (out_features, rank)
        self.init = init
        if set(offset_seeds) != set(OFFSET_ROLES[init]):
            raise NolaError(f"NOLA init {init!r} needs offset seeds {', '.join(OFFSET_ROLES[init])}")
        self.offset_seeds = {role: int(seed) for role, seed in offset_seeds.items()}
        self.nola_coef_A = nn.Parameter(torch.zeros(frozen_A.count, device=device, dtype=dtype))
        self.nola_coef_B = nn.Parameter(torch.zeros(frozen_B.count, device=device, dtype=dtype))
        self.frozen_A, self.frozen_B = frozen_A, frozen_B
        self.register_buffer("offset_A", torch.empty(self.shape_A, device=device, dtype=dtype), persistent=False)
        offset_b = torch.empty(self.shape_B, device=device, dtype=dtype) if init == "reference" else None
        self.register_buffer("offset_B", offset_b, persistent=False)
        self.rebuild_offsets()

    @property
    def basis_A(self) -> torch.Tensor | None:
        return self.frozen_A.basis

    @property
    def basis_B(self) -> torch.Tensor | None:
        return self.frozen_B.basis

    @property
    def seeds(self) -> dict[str, int]:
        """Every frozen matrix's seed by role (what adapter files record)."""
        return {**self.offset_seeds, "basis_A": self.frozen_A.seed, "basis_B": self.frozen_B.seed}

    def rebuild_offsets(self) -> None:
        """(Re)generate A0 (and B0) from their seeds: float32 on CPU, then moved and cast."""
        if self.offset_A.is_meta:
            return
        like = self.offset_A
        self.offset_A = draw_offset(self.init, self.offset_seeds["offset_A"], self.shape_A).to(like.device, like.dtype)
        if self.offset_B is not None:
            offset_b = draw_offset(self.init, self.offset_seeds["offset_B"], self.shape_B)
            self.offset_B = offset_b.to(like.device, like.dtype)

    def set_seeds(self, seeds: dict[str, int]) -> None:
        """Take recorded seeds (an adapter file's); the roles must be those of this slot's init."""
        roles = nola_seed_roles(self.init)
        if set(seeds) != set(roles):
            raise NolaError(
                f"NOLA seeds of init={self.init} must name {', '.join(roles)}; got {', '.join(sorted(seeds))}"
            )
        offsets = {role: int(seeds[role]) for role in OFFSET_ROLES[self.init]}
        if offsets != self.offset_seeds:
            self.offset_seeds = offsets
            self.rebuild_offsets()
        self.frozen_A.set_seed(seeds["basis_A"])
        self.frozen_B.set_seed(seeds["basis_B"])

    def _apply(self, fn, recurse: bool = True):
        """After a dtype change, rebuild the offsets from float32 rather than re-cast them."""
        dtype_before = self.offset_A.dtype
        super()._apply(fn, recurse)
        if self.offset_A.dtype != dtype_before:
            self.rebuild_offsets()
        return self

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (nola_factor(self.frozen_A.mix(self.nola_coef_A), self.shape_A, self.offset_A),
                nola_factor(self.frozen_B.mix(self.nola_coef_B), self.shape_B, self.offset_B))


class LinearWrapper(nn.Module):
    """A module around an `nn.Linear` (`base_layer`) that shows its weight, bias and sizes under
    nn.Linear's names, so what reads a base model's weights by name (`nola.model.base_fingerprint`,
    export) sees through the wrapper. The adapter layers below and the bank's `RoutedLinear` are such."""

    base_layer: nn.Linear

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight (for `AdaptedLinear`: merged with the adapters while `merged`)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features


class AdaptedLinear(LinearWrapper):
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
        pieces = [(rows, *(t.detach() for t in slot.factors())) for rows, slot in zip(self.rows.values(), self.adapter.values())]
        return stack_factors(pieces, self.out_features)

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
    def non_finite_slot(self) -> str | None:
        """The first slot whose ΔW holds a NaN or an infinity (None: all finite)."""
        return next((name for name in self.rows if not torch.isfinite(self.delta_weight(name)).all()), None)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every slot's ΔW into the base weight (inference: no adapter cost per token); a
        non-finite ΔW is refused before the weight is touched (as peft's `safe_merge`)."""
        if self.merged:
            raise NolaError("adapters are already merged; call unmerge() first")
        bad = self.non_finite_slot()
        if bad is not None:
            raise NolaError(f"adapter slot {bad!r} holds NaN or infinite values; it was not merged into the base")
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
