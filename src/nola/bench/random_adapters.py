"""Adapters with random weights saved as training saves them: what the adapter and server benches load
(no trained adapter is needed to time routing, batching or serving)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from nola.adapters import inject_adapters, save_adapter
from nola.adapters.config import AdapterConfig
from nola.model import GPT2Config, base_fingerprint, init_gpt2

NOLA_S = dict(kind="nola", rank=8, alpha=8.0, num_basis_a=512, num_basis_b=512, base_seed=0)  # GPT-2 S q, v


def save_nola_adapters(base, root: Path, count: int, settings: dict, seed: int = 0) -> list[Path]:
    """`count` NOLA adapters with random coefficients and the same bases, saved as training saves them."""
    model = copy.deepcopy(base)
    inject_adapters(model, AdapterConfig(**settings))
    fingerprint = base_fingerprint(base)
    generator = torch.Generator().manual_seed(seed)
    params = [param for param in model.parameters() if param.requires_grad]
    paths = []
    for index in range(count):
        with torch.no_grad():
            for param in params:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        paths.append(save_adapter(model, root / f"adapter-{index:04d}", base_fingerprint=fingerprint,
                                  model_name="bench"))
    return paths


def mini_base_with_adapters(root: Path, count: int, seed: int, quick: bool):
    """A random tiny or mini base and `count` NOLA adapters for it saved under `root`, with their names."""
    base = init_gpt2(GPT2Config.named("tiny" if quick else "mini"), seed).eval().requires_grad_(False)
    save_nola_adapters(base, root, count, dict(NOLA_S, num_basis_a=32, num_basis_b=32, rank=4), seed)
    return base, [f"adapter-{i:04d}" for i in range(count)]


