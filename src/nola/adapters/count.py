"""What an adapter configuration costs, without allocating any weights: trainable parameters, the
adapter file's size and the NOLA bases' memory (`python -m nola.params` prints it)."""

from __future__ import annotations

import torch

from nola.adapters.checkpoint import adapter_file_bytes
from nola.adapters.config import AdapterConfig
from nola.adapters.inject import basis_cache_bytes, count_trainable, inject_adapters
from nola.model import GPT2, GPT2Config


def count_adapter(model_name: str, adapter: AdapterConfig) -> dict[str, int]:
    """{"trainable": N, "adapter_file_bytes": B, "basis_cache_bytes": C} for GPT-2 `model_name`
    adapted by `adapter` (C: the float32 NOLA bases held in memory while training and merging)."""
    with torch.device("meta"):
        model = GPT2(GPT2Config.named(model_name))
    inject_adapters(model, adapter)
    return {
        "trainable": count_trainable(model),
        "adapter_file_bytes": adapter_file_bytes(model, adapter.quant_bits),
        "basis_cache_bytes": basis_cache_bytes(model),
    }
