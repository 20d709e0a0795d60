"""Put adapters into a GPT-2, decide what trains, and merge them for inference.

`inject_adapters` replaces the configured projections of every block with `AdaptedLinear` and records
the config in the model's declared hook (`GPT2.adapter_config`). Every frozen NOLA matrix gets its own seed, derived
from `adapter.base_seed` and its name; with adapter.init=reference the bases are named without the
layer, so one `FrozenBasis` per adapted slot kind (q-A, q-B, v-A, v-B, ...) serves every layer. `adapter_params` is the one place that says which
tensors train and are saved: the parameters of the adapter slots (LoRA, NOLA), every weight (full),
or none — found by module type, not by matching names (as torchtune's `get_adapter_params`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from torch import nn

from nola.adapters.bases import derive_seed
from nola.adapters.config import MODULE_PATHS, AdapterConfig, as_adapter_config
from nola.adapters.layers import OFFSET_ROLES, AdaptedLinear, FrozenBasis, LoraSlot, NolaSlot
from nola.errors import NolaError
from nola.model.gpt2 import GPT2


def inject_adapters(model: GPT2, config: AdapterConfig | Any) -> None:
    """Adapt `model` in place as `config` says and freeze everything that is not trained."""
    config = replace(as_adapter_config(config))
    if model.adapter_config is not None and model.adapter_config.kind != "none":
        raise NolaError("the model already has adapters; build a fresh model to inject another configuration")
    if config.kind in ("lora", "nola"):
        shared: dict[str, FrozenBasis] = {}
        for index, block in enumerate(model.transformer.h):
            for module in config.modules:
                parent_path, _, attr = MODULE_PATHS[module].rpartition(".")
                parent = block.get_submodule(parent_path)
                name = f"transformer.h.{index}.{MODULE_PATHS[module]}"
                setattr(parent, attr, _adapt(getattr(parent, attr), name, module, config, shared))
        _check_distinct_seeds(model)
    for param in model.parameters():
        param.requires_grad_(config.kind == "full")
    model.adapter_config = config
    for param in adapter_params(model).values():
        param.requires_grad_(True)


def _adapt(base: nn.Module, name: str, module: str, config: AdapterConfig, shared: dict[str, FrozenBasis]) -> AdaptedLinear:
    if not isinstance(base, nn.Linear):
        raise NolaError(f"{name} is a {type(base).__name__}, not a plain nn.Linear; cannot adapt it")
    slot_names = config.slots(module)
    if module == "c_attn":
        width = base.out_features // 3
        rows = {slot: ("qkv".index(slot) * width, ("qkv".index(slot) + 1) * width) for slot in slot_names}
    else:
        rows = {"w": (0, base.out_features)}
    slots = {
        slot: _make_slot(base, f"{name}.adapter.{slot}", f"{MODULE_PATHS[module]}.adapter.{slot}", stop - start, config,
                         shared)
        for slot, (start, stop) in rows.items()
    }
    return AdaptedLinear(base, slots, rows, rank=config.rank, scale=config.scale, dropout=config.dropout)


def _make_slot(base: nn.Linear, name: str, kind_name: str, out_features: int, config: AdapterConfig,
               shared: dict[str, FrozenBasis]) -> nn.Module:
    """One slot; `kind_name` names the slot without its layer (the key of bases shared across layers)."""
    d_in, rank = base.in_features, config.rank
    if rank > min(d_in, out_features):
        raise NolaError(f"adapter.rank={rank} exceeds the size of {name} ({out_features} × {d_in})")
    place = dict(device=base.weight.device, dtype=base.weight.dtype)
    if config.kind == "lora":
        return LoraSlot(d_in, out_features, rank, init_seed=derive_seed(config.base_seed, name, "lora_A"), **place)
    sizes = {"basis_A": (config.num_basis_a, rank * d_in), "basis_B": (config.num_basis_b, out_features * rank)}
    for (role, (count, entries)), key in zip(sizes.items(), ("num_basis_a", "num_basis_b")):
        if count > entries:
            raise NolaError(
                f"adapter.{key}={count} is more bases than {name}'s {role[-1]} has entries ({entries}); "
                "NOLA compresses only with fewer"
            )
    frozen = {}
    for role, (count, numel) in sizes.items():
        if config.init == "reference":
            key = f"{kind_name}.{role}"
            if key not in shared:
                shared[key] = FrozenBasis(derive_seed(config.base_seed, kind_name, role), count, numel,
                                          cache=config.cache_bases, **place)
            frozen[role] = shared[key]
        else:
            frozen[role] = FrozenBasis(derive_seed(config.base_seed, name, role), count, numel,
                                       cache=config.cache_bases, **place)
    offset_seeds = {role: derive_seed(config.base_seed, name, role) for role in OFFSET_ROLES[config.init]}
    return NolaSlot(d_in, out_features, rank, frozen_A=frozen["basis_A"], frozen_B=frozen["basis_B"],
                    offset_seeds=offset_seeds, init=config.init, **place)


def _check_distinct_seeds(model: nn.Module) -> None:
    """Distinct frozen matrices must have distinct seeds (a basis shared by several slots is one matrix)."""
    seen: dict[int, tuple[object, str]] = {}
    for name, slot in nola_slots(model).items():
        frozen = {"basis_A": slot.frozen_A, "basis_B": slot.frozen_B}
        for role, seed in slot.seeds.items():
            matrix = frozen.get(role, f"{name}.{role}")
            first, owner = seen.setdefault(seed, (matrix, f"{name}.{role}"))
            if first != matrix:
                raise NolaError(f"derived seed collision between {owner} and {name}.{role}; change adapter.base_seed")


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            yield name, module


def adapter_config_of(model: GPT2) -> AdapterConfig:
    config = model.adapter_config
    if config is None:
        raise NolaError("the model has no adapter configuration; call inject_adapters(model, config) first")
    return config


def adapter_params(model: GPT2) -> dict[str, nn.Parameter]:
    """Exactly the tensors that train and that an adapter checkpoint holds, by their model names."""
    config = model.adapter_config
    if config is None or config.kind == "none":
        return {}
    if config.kind == "full":
        return dict(model.named_parameters())  # the tied lm_head appears once, as transformer.wte.weight
    return {
        f"{layer_name}.adapter.{name}": param
        for layer_name, layer in adapted_layers(model)
        for name, param in layer.adapter.named_parameters()
    }


def count_trainable(model: nn.Module) -> int:
    return sum(param.numel() for param in adapter_params(model).values())


def nola_seeds(model: nn.Module) -> dict[str, dict[str, int]]:
    """The seeds of every NOLA slot, by slot name (`….c_attn.adapter.q`), as recorded in checkpoints."""
    return {name: dict(slot.seeds) for name, slot in nola_slots(model).items()}


def basis_cache_bytes(model: nn.Module) -> int:
    """Bytes the cached NOLA bases take, each shared basis counted once (works on the meta device)."""
    bases = {id(module): module for module in model.modules() if isinstance(module, FrozenBasis)}
    return sum(b.basis.numel() * b.basis.element_size() for b in bases.values() if b.basis is not None)


def nola_slots(model: nn.Module) -> dict[str, NolaSlot]:
    return {
        f"{layer_name}.adapter.{name}": slot
        for layer_name, layer in adapted_layers(model)
        for name, slot in layer.adapter.items()
        if isinstance(slot, NolaSlot)
    }


def is_merged(model: nn.Module) -> bool:
    return any(layer.merged for _, layer in adapted_layers(model))


def merge_adapters(model: nn.Module) -> None:
    """Fold all adapters into the base weights (before decoding or export). Every layer's ΔW is
    checked to be finite first, so a corrupt adapter leaves the base untouched, not half-merged."""
    layers = list(adapted_layers(model))
    for name, layer in layers:
        bad = layer.non_finite_slot()
        if bad is not None:
            raise NolaError(f"the adapter of {name} (slot {bad!r}) holds NaN or infinite values; nothing was merged")
    for _, layer in layers:
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in adapted_layers(model):
        layer.unmerge()
