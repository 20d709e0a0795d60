"""Shared by the many-adapter tests: a tiny random base and adapters "trained by hand" on it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from nola.adapters import inject_adapters, load_adapter, merge_adapters, save_adapter
from nola.adapters.config import AdapterConfig
from nola.model import GPT2Config, base_fingerprint, init_gpt2

ADAPTERS = {  # name -> adapter config; two NOLA adapters share their bases (same base_seed)
    "lora_qv": dict(kind="lora", rank=4, alpha=32, targets=["q", "v"], base_seed=1),
    "lora_r1": dict(kind="lora", rank=1, alpha=8, targets=["q"], base_seed=2),
    "lora_mlp": dict(kind="lora", rank=2, alpha=4, targets=["v"], modules=["c_attn", "mlp.c_fc", "mlp.c_proj"],
                     base_seed=3),
    "nola_a": dict(kind="nola", rank=4, alpha=4, num_basis_a=16, num_basis_b=16, base_seed=7),
    "nola_b": dict(kind="nola", rank=4, alpha=4, num_basis_a=16, num_basis_b=16, base_seed=7),
    "nola_paper": dict(kind="nola", rank=2, alpha=8, num_basis_a=8, num_basis_b=12, init="paper", base_seed=9),
    "nola_q4": dict(kind="nola", rank=4, alpha=4, num_basis_a=16, num_basis_b=16, quant_bits=4, base_seed=11),
    "nola_proj": dict(kind="nola", rank=2, alpha=2, num_basis_a=8, num_basis_b=8, modules=["attn.c_proj"],
                      base_seed=12),
}


def tiny_base() -> torch.nn.Module:
    """The tiny GPT-2 as `model=tiny model.source=random` builds it (init seed 0)."""
    return init_gpt2(GPT2Config.named("tiny"), 0).eval()


def save_random_adapters(base, root: Path, adapters: dict[str, dict] = ADAPTERS, seed: int = 1) -> Path:
    """Each adapter with random factors/coefficients (LoRA's B too, so none is a no-op), saved as training saves it."""
    fingerprint = base_fingerprint(base)
    generator = torch.Generator().manual_seed(seed)
    for name, settings in adapters.items():
        model = copy.deepcopy(base)
        inject_adapters(model, AdapterConfig(**settings))
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if "nola" in pname else 0.2))
        save_adapter(model, root / name, base_fingerprint=fingerprint, model_name="tiny")
    return root


def merged_model(base, directory: Path | None):
    """The plain single-adapter path: a fresh base with the adapter loaded and merged."""
    model = copy.deepcopy(base)
    if directory is not None:
        load_adapter(model, directory)
        merge_adapters(model)
    return model.eval()
