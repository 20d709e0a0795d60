"""Put adapters into a GPT-2, decide what trains, and merge them for inference.

`inject_adapters` replaces the layers of the config's schema (`nola.adapters.targets.plan_layers`)
with `AdaptedLinear` and records the config in the model's declared hook (`GPT2.adapter_config`).
Every frozen NOLA matrix gets its own seed, derived from `adapter.base_seed` and its name; with
adapter.init=reference the bases are named without the layer, so one `FrozenBasis` per adapted slot
kind (q-A, q-B, v-A, v-B, ...) serves every layer. `adapter_params` is the one place that says which
tensors train and are saved: the parameters of the adapter slots (LoRA, NOLA), every weight (full),
or none — found by module type, not by matching names (as torchtune's `get_adapter_params`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from torch import nn

from nola.adapters.config import AdapterConfig, as_adapter_config
from nola.adapters.layers import AdaptedLinear, FrozenBasis, LoraSlot, NolaSlot
from nola.adapters.targets import OFFSET_ROLES, SlotPlan, plan_layers, swap_layers
from nola.errors import NolaError
from nola.model.gpt2 import GPT2


def inject_adapters(model: GPT2, config: AdapterConfig | Any) -> None:
    """Adapt `model` in place as `config` says and freeze everything that is not trained."""
    config = replace(as_adapter_config(config))
    if model.adapter_config is not None and model.adapter_config.kind != "none":
        raise NolaError("the model already has adapters; build a fresh model to inject another configuration")
    if config.kind in ("lora", "nola"):
        plans = {plan.path: plan for plan in plan_layers(model, config)}
        shared: dict[str, FrozenBasis] = {}

        def adapt(path: str, base: nn.Module) -> AdaptedLinear:
            if not isinstance(base, nn.Linear):
                raise NolaError(f"{path} is a {type(base).__name__}, not a plain nn.Linear; cannot adapt it")
            plan = plans[path]
            slots = {slot.short_name: _make_slot(base, slot, config, shared) for slot in plan.slots}
            rows = {slot.short_name: slot.rows for slot in plan.slots}
            return AdaptedLinear(base, slots, rows, rank=config.rank, scale=config.scale, dropout=config.dropout)

        swap_layers(model, plans, adapt)
        _check_distinct_seeds(model)
    for param in model.parameters():
        param.requires_grad_(config.kind == "full")
    model.adapter_config = config
    for param in adapter_params(model).values():
        param.requires_grad_(True)


def _make_slot(base: nn.Linear, slot: SlotPlan, config: AdapterConfig, shared: dict[str, FrozenBasis]) -> nn.Module:
    """The trainable slot of `slot`'s plan; with init=reference, bases of the same layer-free name are
    one `FrozenBasis` (held in `shared`)."""
    place = dict(device=base.weight.device, dtype=base.weight.dtype)
    seeds = slot.derived_seeds(config)
    if config.kind == "lora":
        return LoraSlot(slot.in_features, slot.shape_B[0], slot.rank, init_seed=seeds["lora_A"], **place)
    frozen = {}
    for role, (count, numel) in slot.basis_sizes(config).items():
        key = f"{slot.basis_owner(config)}.{role}"
        if key not in shared:
            shared[key] = FrozenBasis(seeds[role], count, numel, cache=config.cache_bases, **place)
        frozen[role] = shared[key]
    offset_seeds = {role: seeds[role] for role in OFFSET_ROLES[config.init]}
    return NolaSlot(slot.in_features, slot.shape_B[0], slot.rank, frozen_A=frozen["basis_A"],
                    frozen_B=frozen["basis_B"], offset_seeds=offset_seeds, init=config.init, **place)


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
