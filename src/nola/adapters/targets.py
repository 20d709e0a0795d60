"""Which layers an adapter config adapts, and what its file holds, from the config and the base alone.

An adapter's schema (every adapted layer, its row blocks, each block's factor shapes, the names
of the stored tensors and the seeds a new adapter derives) depends only on the `AdapterConfig` and
the sizes of the base's linear layers. `plan_layers` computes it once; `nola.adapters.inject`
builds the trainable slots from it, the strict reader (`nola.adapters.checkpoint`) checks a file
against it, and the bank (`nola.adapters.bank`) loads many adapters by it, so none of them has to
build a model and inject into it to learn what a file must contain. `swap_layers` is the one
module-surgery routine (a layer replaced by a wrapper at its path), used by injection and by the bank.

Slot names, as in the files: `transformer.h.<i>.<module path>.adapter.<slot>`, where the module path
is one of `MODULE_PATHS` and the slot q, k, v for GPT-2's fused `c_attn` (microsoft/LoRA's
MergedLinear enable mask) or `w` for a whole projection. Layers come in the model's module order,
which is the order `adapter_params` (and so a quantized file's coefficient stream) follows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from nola.adapters.bases import derive_seed
from nola.adapters.config import MODULE_PATHS, QKV_SLOTS, AdapterConfig
from nola.errors import NolaError

LORA_TENSORS = ("lora_A", "lora_B")
NOLA_TENSORS = ("nola_coef_A", "nola_coef_B")
BASIS_ROLES = ("basis_A", "basis_B")
OFFSET_ROLES = {"reference": ("offset_A", "offset_B"), "paper": ("offset_A",)}  # paper: B0 = 0


def nola_seed_roles(init: str) -> tuple[str, ...]:
    """The frozen matrices of a NOLA slot with this `adapter.init`, each with a recorded seed."""
    return OFFSET_ROLES[init] + BASIS_ROLES


@dataclass(frozen=True)
class SlotPlan:
    """One adapted row block of one layer: ΔW's rows [start, stop) get (α/r)·B·A."""

    name: str  # transformer.h.0.attn.c_attn.adapter.q
    kind_name: str  # attn.c_attn.adapter.q: the slot without its layer (bases shared across layers)
    rows: tuple[int, int]
    in_features: int
    rank: int

    @property
    def short_name(self) -> str:
        """q, k, v or w: the slot's key inside its layer."""
        return self.name.rpartition(".")[2]

    @property
    def shape_A(self) -> tuple[int, int]:
        return self.rank, self.in_features

    @property
    def shape_B(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.rank

    def tensor_shapes(self, config: AdapterConfig) -> dict[str, tuple[int, ...]]:
        """The trainable tensors of this slot by name (LoRA's factors or NOLA's coefficients)."""
        if config.kind == "lora":
            return {f"{self.name}.lora_A": self.shape_A, f"{self.name}.lora_B": self.shape_B}
        return {f"{self.name}.nola_coef_A": (config.num_basis_a,), f"{self.name}.nola_coef_B": (config.num_basis_b,)}

    def basis_sizes(self, config: AdapterConfig) -> dict[str, tuple[int, int]]:
        """(count, entries) of the two NOLA bases: k bases of r·d_in for A, l of d_out·r for B."""
        return {"basis_A": (config.num_basis_a, self.rank * self.in_features),
                "basis_B": (config.num_basis_b, self.shape_B[0] * self.rank)}

    def basis_owner(self, config: AdapterConfig) -> str:
        """Whose name a basis seed derives from: the layer-free slot name when one set of bases serves
        every layer (init=reference, as the reference code's deep-copied block), else the slot's."""
        return self.kind_name if config.init == "reference" else self.name

    def derived_seeds(self, config: AdapterConfig) -> dict[str, int]:
        """The seeds a new adapter draws its frozen matrices from (NOLA) or LoRA's A init from."""
        if config.kind == "lora":
            return {"lora_A": derive_seed(config.base_seed, self.name, "lora_A")}
        offsets = {role: derive_seed(config.base_seed, self.name, role) for role in OFFSET_ROLES[config.init]}
        owner = self.basis_owner(config)
        return {**offsets, **{role: derive_seed(config.base_seed, owner, role) for role in BASIS_ROLES}}


@dataclass(frozen=True)
class LayerPlan:
    """One adapted linear layer: its path, its sizes and its slots in row order of the config."""

    path: str
    in_features: int
    out_features: int
    slots: tuple[SlotPlan, ...]


def target_paths(model: nn.Module, modules: Iterable[str]) -> list[str]:
    """The paths of the layers `modules` (config names, `MODULE_PATHS`) name in every block, in the
    model's module order."""
    wanted = {f"transformer.h.{index}.{MODULE_PATHS[module]}"
              for index in range(len(model.transformer.h)) for module in modules}
    return [name for name, _ in model.named_modules() if name in wanted]


def plan_layers(model: nn.Module, config: AdapterConfig) -> list[LayerPlan]:
    """The schema of `config` on `model` (a GPT-2 whose target layers are `nn.Linear` or wrappers
    showing nn.Linear's sizes); a rank or basis count the layer cannot hold is a NolaError."""
    if config.kind not in ("lora", "nola"):
        return []
    plans = []
    for path in target_paths(model, config.modules):
        layer = model.get_submodule(path)
        module_path = path.split(".", 3)[3]  # transformer.h.<i>.<module path>
        module = next(name for name, where in MODULE_PATHS.items() if where == module_path)
        d_in, d_out = layer.in_features, layer.out_features
        if module == "c_attn":
            width = d_out // 3
            rows = {slot: (QKV_SLOTS.index(slot) * width, (QKV_SLOTS.index(slot) + 1) * width)
                    for slot in config.slots(module)}
        else:
            rows = {"w": (0, d_out)}
        slots = tuple(SlotPlan(f"{path}.adapter.{slot}", f"{module_path}.adapter.{slot}", span, d_in, config.rank)
                      for slot, span in rows.items())
        for slot in slots:
            _check_fits(slot, config)
        plans.append(LayerPlan(path, d_in, d_out, slots))
    return plans


def _check_fits(slot: SlotPlan, config: AdapterConfig) -> None:
    out_features = slot.shape_B[0]
    if config.rank > min(slot.in_features, out_features):
        raise NolaError(f"adapter.rank={config.rank} exceeds the size of {slot.name} ({out_features} × {slot.in_features})")
    if config.kind == "nola":
        for (role, (count, entries)), key in zip(slot.basis_sizes(config).items(), ("num_basis_a", "num_basis_b")):
            if count > entries:
                raise NolaError(f"adapter.{key}={count} is more bases than {slot.name}'s {role[-1]} has entries "
                                f"({entries}); NOLA compresses only with fewer")


def tensor_shapes(plans: Iterable[LayerPlan], config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """Every trainable adapter tensor by name, in `adapter_params` order."""
    return {name: shape for plan in plans for slot in plan.slots for name, shape in slot.tensor_shapes(config).items()}


def check_saved_seeds(saved: object, plans: list[LayerPlan], config: AdapterConfig, where: str) -> dict[str, dict[str, int]]:
    """The recorded seeds of a NOLA file (`seeds` of adapter_config.json), checked against the schema:
    one entry per slot, the roles of its init, integers, and one seed per basis shared by several
    slots (init=reference). A NolaError names `where` and the first difference."""
    slots = [slot for plan in plans for slot in plan.slots] if config.kind == "nola" else []
    if not isinstance(saved, dict):
        raise NolaError(f"{where}: 'seeds' must be an object of slot name -> seeds")
    names = {slot.name for slot in slots}
    if set(saved) != names:
        difference = sorted(names - set(saved)) or sorted(set(saved) - names)
        raise NolaError(f"{where}: seeds do not match the adapter's NOLA matrices (first difference: {difference[0]})")
    roles = nola_seed_roles(config.init) if slots else ()
    seeds: dict[str, dict[str, int]] = {}
    shared: dict[str, tuple[int, str]] = {}
    for slot in slots:
        entry = saved[slot.name]
        if not isinstance(entry, dict) or set(entry) != set(roles):
            got = ", ".join(sorted(entry)) if isinstance(entry, dict) else type(entry).__name__
            raise NolaError(f"{where}: seeds of {slot.name}: NOLA seeds of init={config.init} must name "
                            f"{', '.join(roles)}; got {got}")
        if not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in entry.values()):
            raise NolaError(f"{where}: seeds of {slot.name} must be non-negative integers")
        seeds[slot.name] = {role: int(entry[role]) for role in roles}
        for role in BASIS_ROLES:
            key = f"{slot.basis_owner(config)}.{role}"
            first, owner = shared.setdefault(key, (seeds[slot.name][role], slot.name))
            if first != seeds[slot.name][role]:
                raise NolaError(f"{where}: seeds of {slot.name} conflict with {owner}'s for their shared {role}")
    return seeds


def swap_layers(model: nn.Module, paths: Iterable[str], wrap: Callable[[str, nn.Module], nn.Module]) -> None:
    """Replace the module at each path by `wrap(path, module)` (the module keeps its place in the
    parent's order, so parameter names and their order stay what they were, under the wrapper)."""
    for path in paths:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, attr, wrap(path, getattr(parent, attr)))
