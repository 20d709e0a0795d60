"""LoRA and NOLA adapters for GPT-2: config, injection, merge, adapter-only checkpoints, quantization.

LoRA: Hu et al., ICLR 2022. NOLA: Koohpayegani et al., "NOLA: Compressing LoRA using Linear
Combination of Random Basis", ICLR 2024. The README lists the reference code's hazards this package avoids.
"""

from nola.adapters.checkpoint import (
    adapter_file_bytes,
    adapter_tensors,
    load_adapter,
    quantize_adapter_,
    read_adapter_config,
    save_adapter,
)
from nola.adapters.config import AdapterConfig, as_adapter_config
from nola.adapters.inject import (
    adapted_layers,
    adapter_config_of,
    adapter_params,
    count_trainable,
    inject_adapters,
    is_merged,
    merge_adapters,
    nola_seeds,
    unmerge_adapters,
)
from nola.adapters.layers import AdaptedLinear, LoraSlot, NolaSlot

__all__ = [
    "AdaptedLinear",
    "AdapterConfig",
    "LoraSlot",
    "NolaSlot",
    "adapted_layers",
    "adapter_config_of",
    "adapter_file_bytes",
    "adapter_params",
    "adapter_tensors",
    "as_adapter_config",
    "count_trainable",
    "inject_adapters",
    "is_merged",
    "load_adapter",
    "merge_adapters",
    "nola_seeds",
    "quantize_adapter_",
    "read_adapter_config",
    "save_adapter",
    "unmerge_adapters",
]
