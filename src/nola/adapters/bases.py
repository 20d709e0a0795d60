"""NOLA's frozen random bases: derived seeds, device-independent generation, coefficient mixing.

NOLA (Koohpayegani et al., ICLR 2024, §3) writes A = A0 + Σᵢ αᵢAᵢ and B = B0 + Σⱼ βⱼBⱼ. The
reference code (UCDvision/NOLA `gpt/examples/NLG/src/model_nola.py`) draws the bases with
`torch.manual_seed(seed)` + `uniform_(-1, 1)` on the coefficients' device and dtype, scaled by
1/√(number of bases). Its README's method initialises A0 with LoRA's `kaiming_uniform_(a=√5)`,
i.e. U(−1/√d_in, 1/√d_in), and B0 = 0 (`random_offset`, adapter.init=paper); what its GPT-2 code
runs is A0, B0 ~ N(0, 0.02) (`normal_offset`, adapter.init=reference; see nola.adapters.config).
Here the same distributions come from a private CPU `torch.Generator` in float32, then are moved
and cast, so a seed means the same bases on every device and in every dtype, and the global RNG
is never touched. (On CPU the result equals the reference's draw for the same seed: both use
torch's mt19937.)
"""

from __future__ import annotations

import hashlib
import math

import torch

SEED_BITS = 32  # torch's CPU generator (mt19937) uses only the low 32 bits of a seed


def derive_seed(base_seed: int, *parts: str) -> int:
    """A seed for one frozen matrix, from the run's base seed and the matrix's name (stable, hashed)."""
    text = ":".join(["nola-basis", str(base_seed), *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % (1 << SEED_BITS)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def random_basis(seed: int, count: int, numel: int) -> torch.Tensor:
    """`count` flattened bases of `numel` entries each, U(−1, 1)/√count, float32 on CPU: (count, numel)."""
    basis = torch.empty(count, numel, dtype=torch.float32).uniform_(-1.0, 1.0, generator=cpu_generator(seed))
    return basis * (1.0 / math.sqrt(count))


def random_offset(seed: int, rows: int, cols: int) -> torch.Tensor:
    """NOLA's frozen A0 (rows × cols): LoRA's kaiming_uniform(a=√5) init, U(−1/√cols, 1/√cols), float32."""
    bound = 1.0 / math.sqrt(cols)
    return torch.empty(rows, cols, dtype=torch.float32).uniform_(-bound, bound, generator=cpu_generator(seed))


REFERENCE_INIT_STD = 0.02  # model_nola.py GPT2LMModel._init_weights: normal_(mean=0.0, std=0.02)


def normal_offset(seed: int, rows: int, cols: int) -> torch.Tensor:
    """A frozen offset (rows × cols) as the reference GPT-2 code leaves it: N(0, 0.02), float32."""
    return torch.empty(rows, cols, dtype=torch.float32).normal_(0.0, REFERENCE_INIT_STD, generator=cpu_generator(seed))


class RegeneratedMix(torch.autograd.Function):
    """coefficients @ basis with the basis regenerated from its seed in forward and in backward.

    The memory-saving path (`cache_bases=False`): no basis outlives the call that needs it.
    """

    @staticmethod
    def forward(ctx, coefficients: torch.Tensor, seed: int, numel: int) -> torch.Tensor:
        ctx.seed, ctx.count, ctx.numel = seed, coefficients.shape[0], numel
        basis = random_basis(seed, coefficients.shape[0], numel).to(coefficients.device, coefficients.dtype)
        return coefficients @ basis  # (numel,)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        basis = random_basis(ctx.seed, ctx.count, ctx.numel).to(grad_output.device, grad_output.dtype)
        return basis @ grad_output, None, None


def mix(coefficients: torch.Tensor, basis: torch.Tensor | None, seed: int, numel: int) -> torch.Tensor:
    """Σᵢ cᵢ·basisᵢ as ONE matrix-vector product (count,) @ (count, numel) → (numel,).

    `basis` is the cached basis, or None to regenerate it from `seed` (forward and backward). Runs
    outside autocast: the product is memory-bound on the basis, and a per-step cast would copy it.
    """
    with torch.autocast(coefficients.device.type, enabled=False):
        if basis is not None:
            return coefficients @ basis
        return RegeneratedMix.apply(coefficients, seed, numel)
