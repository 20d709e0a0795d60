"""Export for other tools: a merged Hugging Face GPT-2 directory, or a peft LoRA adapter directory.

- `export_hf_model`: base + ΔW of every adapter (merged copies; the model itself is not touched) as
  `config.json` + `model.safetensors` that `transformers.GPT2LMHeadModel.from_pretrained` loads.
- `export_peft_adapter`: LoRA, or NOLA materialised to its A and B, as `adapter_config.json` +
  `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads onto the HF base. A fused
  c_attn with several adapted slots becomes one LoRA of rank slots·r: A stacked, B block-placed in
  the slots' rows (zero elsewhere), lora_alpha scaled by the same factor so α/r is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from nola.fileio import atomic_path, write_text_atomic
from nola.adapters import adapted_layers, adapter_config_of
from nola.adapters.config import MODULE_PATHS
from nola.errors import NolaError
from nola.model import GPT2, hf_config_dict, to_hf_state_dict
from nola.model.loading import base_state_items

HF_WEIGHTS = "model.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def export_hf_model(model: nn.Module, directory: str | Path) -> Path:
    """Write the model with all adapters merged as a Hugging Face GPT-2 directory."""
    state = {name: value.detach() for name, value in base_state_items(model)}
    for name, layer in adapted_layers(model):
        state[f"{name}.weight"] = layer.merged_weight()
    state["lm_head.weight"] = state["transformer.wte.weight"]
    with torch.device("meta"):
        plain = GPT2(model.config)
    plain.load_state_dict(state, strict=True, assign=True)
    tensors = {name: value.cpu() for name, value in to_hf_state_dict(plain).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / HF_WEIGHTS) as path:
        save_file(tensors, str(path), metadata={"format": "pt"})
    _write_json(directory / "config.json", hf_config_dict(model.config))
    return directory


def export_peft_adapter(model: nn.Module, directory: str | Path, *, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA/NOLA adapters as a peft LoRA adapter directory (float32 A, B)."""
    config = adapter_config_of(model)
    if config.kind not in ("lora", "nola"):
        raise NolaError(f"only LoRA and NOLA adapters export to peft; this model's adapter kind is {config.kind!r}")
    tensors = {}
    for name, layer in adapted_layers(model):
        stacked_a, stacked_b = layer.stacked_factors()
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = stacked_a.cpu().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = stacked_b.cpu().contiguous()
    qkv_slots = len(config.slots("c_attn")) if "c_attn" in config.modules else 1
    wide = {"c_attn": qkv_slots} if qkv_slots > 1 else {}  # only the fused c_attn carries several slots
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(MODULE_PATHS[module] for module in config.modules),
        "rank_pattern": {key: slots * config.rank for key, slots in wide.items()},
        "alpha_pattern": {key: slots * config.alpha for key, slots in wide.items()},
        "fan_in_fan_out": True,  # HF GPT-2 projections are Conv1D (in × out)
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / PEFT_WEIGHTS) as path:
        save_file(tensors, str(path), metadata={"format": "pt"})
    _write_json(directory / PEFT_CONFIG, peft_config)
    return directory


def _write_json(path: Path, document: dict) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
