"""Post-training quantization of NOLA coefficients (Koohpayegani et al., ICLR 2024, §4 / Table 4).

Each coefficient vector (one per adapted matrix) is quantized on its own with uniform min–max
levels: q = round((c − min) / step), step = (max − min) / (2^bits − 1), stored as a bit-packed
uint8 stream plus the float32 `min` and `step`; loading restores c' = min + q·step (|c − c'| ≤ step/2).
A file holds all vectors in three tensors (bytes of each vector back to back, one min and one step
per vector), so its header stays a few hundred bytes whatever the number of adapted matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nola.errors import NolaError



def packed_length(count: int, bits: int) -> int:
    """Bytes holding `count` values of `bits` bits each."""
    return (count * bits + 7) // 8


def quantize(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 (packed_length,), min float32 (), step float32 ()) of a 1-D tensor."""
    values = values.detach().float().reshape(-1)
    low, high = values.min(), values.max()
    top = (1 << bits) - 1
    step = (high - low) / top
    safe_step = torch.where(step > 0, step, torch.ones_like(step))
    levels = torch.round((values - low) / safe_step).clamp(0, top).to(torch.int64)
    return pack_bits(levels, bits), low, step


def quantize_vectors(vectors: list[torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    """{packed: uint8 (Σ packed_length,), min: float32 (n,), step: float32 (n,)} for n vectors."""
    packed, low, step = zip(*(quantize(vector, bits) for vector in vectors))
    return {"packed": torch.cat(packed), "min": torch.stack(low), "step": torch.stack(step)}


def dequantize_vectors(stored: dict[str, torch.Tensor], bits: int, counts: list[int]) -> list[torch.Tensor]:
    """The float32 vectors that `quantize_vectors` stored, given each vector's length."""
    lengths = [packed_length(count, bits) for count in counts]
    if stored["packed"].dtype != torch.uint8 or stored["packed"].shape != (sum(lengths),):
        raise NolaError(
            f"packed coefficients are {stored['packed'].dtype} {tuple(stored['packed'].shape)}; "
            f"{sum(counts)} coefficients at {bits} bits need uint8 ({sum(lengths)},)"
        )
    chunks = stored["packed"].split(lengths)
    return [
        stored["min"][index].float() + unpack_bits(chunk, bits, count).float() * stored["step"][index].float()
        for index, (chunk, count) in enumerate(zip(chunks, counts))
    ]


def pack_bits(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """Little-endian bit stream of the `bits` low bits of each level, in bytes: uint8 (packed_length,)."""
    shifts = torch.arange(bits, device=levels.device)
    stream = ((levels[:, None] >> shifts) & 1).reshape(-1)  # (count·bits,)
    stream = F.pad(stream, (0, (-stream.numel()) % 8)).view(-1, 8)
    return (stream << torch.arange(8, device=levels.device)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: int64 (count,)."""
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8, device=packed.device)) & 1).reshape(-1)
    stream = stream[: count * bits].view(count, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(dim=1)


@torch.no_grad()
def quantize_coefficients_(params: dict[str, nn.Parameter], bits: int) -> None:
    """Replace each coefficient vector by its `bits`-bit quantized value (evaluate a quantized adapter)."""
    vectors = list(params.values())
    restored = dequantize_vectors(quantize_vectors(vectors, bits), bits, [v.numel() for v in vectors])
    for param, value in zip(vectors, restored):
        param.copy_(value.view_as(param))
