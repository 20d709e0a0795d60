"""Many adapters on one base: an adapter bank and a different adapter for every row of a batch.

NOLA's point (Koohpayegani et al., ICLR 2024) is that an adapter weighs a few KB, so one model can
hold thousands of them. `AdapterBank` loads any number of saved LoRA and NOLA adapters onto one
frozen base (each checked against the base's architecture and fingerprint) and keeps only what they
store resident: LoRA's A and B, NOLA's coefficients and seeds. What a forward needs, each adapted
layer's A (R × d_in) and (α/r)·B (d_out × R), is materialised on demand and kept in an LRU cache
under a byte bound (`cache_bytes`). NOLA adapters whose slots use the same bases (the same basis
seed, count and size) share one basis in memory, and a group of them is materialised together by
one product of their stacked coefficients (n × k) with that basis (k × r·d).

A batch is routed without merging (Punica's BGMV, Chen et al., MLSys 2024; S-LoRA): every adaptable
linear layer of the base becomes a `RoutedLinear`, which adds x·Aᵤᵀ·Bᵤᵀ to each row from the
factors of that row's adapter u, gathered per row and applied with batched matmuls; a row without an
adapter gets the base alone. `AdapterBank.routes(adapters)` stacks the factors of the adapters a
batch uses into slots; `Routes.select_slots(row_slots)` says which slot every row of the next forward
uses, so the KV cache and beam search work unchanged (`nola.decode.engine.BeamBatch`: beams inherit
their prompt's adapter). Each loaded adapter is one immutable version: replacing a directory loads
a new `BankedAdapter`, and a search that began with the old one keeps its factors to the end.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nola.adapters.bases import random_basis
from nola.adapters.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    IncompleteAdapter,
    adapter_digest,
    adapter_files_signature,
    open_adapter,
    read_adapter_tensors,
)
from nola.adapters.config import MODULE_PATHS, AdapterConfig
from nola.adapters.layers import Factors, LinearWrapper, draw_offset, nola_factor, stack_factors
from nola.adapters.targets import check_saved_seeds, plan_layers, swap_layers, target_paths, tensor_shapes
from nola.errors import NolaError
from nola.model import GPT2

DEFAULT_CACHE_BYTES = 256 * 2**20


class UnknownAdapter(NolaError):
    """A name that no loaded adapter has."""

# Factors of a layer here: A (R × d_in) and the scaled (α/r)·B (d_out × R).


@dataclass(frozen=True)
class NolaFactors:
    """What a NOLA slot stores: coefficients, the seeds of its frozen matrices, the factor shapes."""

    coef_A: torch.Tensor
    coef_B: torch.Tensor
    seeds: dict[str, int]
    shape_A: tuple[int, int]
    shape_B: tuple[int, int]
    init: str

    def basis_key(self, role: str) -> tuple[int, int, int]:
        """(seed, count, numel) of the basis of `role` (A or B): equal keys mean the same basis."""
        coef, shape = (self.coef_A, self.shape_A) if role == "A" else (self.coef_B, self.shape_B)
        return self.seeds[f"basis_{role}"], coef.numel(), shape[0] * shape[1]

    def offset(self, role: str) -> torch.Tensor | None:
        """A0 (or B0) from its seed, as a trained slot draws it (`draw_offset`); None for paper's B0 = 0."""
        name, shape = (f"offset_{role}", self.shape_A if role == "A" else self.shape_B)
        if name not in self.seeds:
            return None
        return draw_offset(self.init, self.seeds[name], shape)


@dataclass(frozen=True)
class BankSlot:
    """One adapted row block (q, k, v of c_attn, or a whole projection) of one layer."""

    rows: tuple[int, int]
    lora: Factors | None = None  # LoRA's A (r × d_in), B (d_out_s × r)
    nola: NolaFactors | None = None


@dataclass
class BankedAdapter:
    """A loaded adapter: its config, its slots by layer path, and what it weighs."""

    name: str
    directory: Path
    config: AdapterConfig
    layers: dict[str, list[BankSlot]]
    out_features: dict[str, int]  # each adapted layer's output width
    file_bytes: int
    signature: tuple  # `adapter_files_signature` of its directory when loaded
    digest: str  # `adapter_digest` of the files it was loaded from: this version's name for clients
    version: int = 0  # distinct for every load of the bank: the key of its materialised factors

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.version

    @property
    def resident_bytes(self) -> int:
        """Bytes of the tensors kept for it at all times (LoRA factors, NOLA coefficients)."""
        total = 0
        for slots in self.layers.values():
            for slot in slots:
                tensors = slot.lora if slot.lora is not None else (slot.nola.coef_A, slot.nola.coef_B)
                total += sum(t.numel() * t.element_size() for t in tensors)
        return total


@dataclass
class Routes:
    """The factors of one batch's adapters, stacked in slots, and each row's slot for the next forward."""

    factors: dict[str, Factors]  # layer path -> A (U, R, d_in), B (U, d_out, R); U adapters of the batch
    router: Router
    rows: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    slots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def select_slots(self, row_slots: torch.Tensor) -> None:
        """Row i of the next forward uses slot `row_slots[i]` (-1: the base alone)."""
        self.rows = (row_slots >= 0).nonzero().squeeze(1)
        self.slots = row_slots[self.rows]

    @contextmanager
    def active(self) -> Iterator[Routes]:
        """Route the forwards run inside the block."""
        self.router.current = self
        try:
            yield self
        finally:
            self.router.current = None


class Router:
    """Shared by a model's `RoutedLinear` layers: the routes of the batch being decoded, if any."""

    def __init__(self) -> None:
        self.current: Routes | None = None


class RoutedLinear(LinearWrapper):
    """A frozen linear layer plus, per row, the low-rank update of that row's adapter (gather + bmm)."""

    def __init__(self, base_layer: nn.Linear, router: Router, path: str) -> None:
        super().__init__()
        self.base_layer, self.router, self.path = base_layer, router, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        routes = self.router.current
        if routes is None or routes.rows.numel() == 0 or self.path not in routes.factors:
            return y
        a, b = routes.factors[self.path]
        picked = x[routes.rows]  # (S, T, d_in)
        hidden = torch.bmm(picked, a[routes.slots].transpose(1, 2))  # (S, T, R)
        return y.index_add(0, routes.rows, torch.bmm(hidden, b[routes.slots].transpose(1, 2)))


class AdapterBank:
    """Adapters by name on one base model; see the module docstring.

    `model` is a plain GPT-2 (no adapters injected); the bank wraps its adaptable layers in place.
    `base_fingerprint` is the base's `nola.model.base_fingerprint`, against which every adapter is
    checked. Adding and removing adapters is thread-safe; decoding is one batch at a time.
    """

    def __init__(self, model: GPT2, base_fingerprint: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if model.adapter_config is not None and model.adapter_config.kind != "none":
            raise NolaError("the adapter bank needs the bare base model; build it with adapter=none")
        self.model, self.fingerprint, self.cache_bytes = model, base_fingerprint, int(cache_bytes)
        self.router = Router()
        self.adapters: dict[str, BankedAdapter] = {}
        self._bases: dict[tuple[int, int, int], torch.Tensor] = {}
        self._basis_users: Counter[tuple[int, int, int]] = Counter()  # loaded adapters per basis key
        self._cache: OrderedDict[tuple[str, int], dict[str, Factors]] = OrderedDict()  # by BankedAdapter.key
        self._cached_bytes = 0
        self._loads = 0
        self.cache_hits = self.cache_misses = 0  # factor lookups served from the cache / materialised
        self._lock = threading.RLock()
        self.device = model.transformer.wte.weight.device
        self.dtype = model.transformer.wte.weight.dtype
        swap_layers(model, target_paths(model, MODULE_PATHS), lambda path, layer: RoutedLinear(layer, self.router, path))
        model.adapter_bank = self

    # ----------------------------------------------------------------- loading
    def add(self, name: str, directory: str | Path) -> BankedAdapter:
        """Load the adapter saved in `directory` under `name` (replacing one of that name).

        Files that change while they are read raise `IncompleteAdapter`: a version is loaded only
        from a directory that held it whole from the first read to the last."""
        directory = Path(directory)
        signature = adapter_files_signature(directory)
        document, config = open_adapter(directory, self.model.config, self.fingerprint)
        if config.kind not in ("lora", "nola"):
            raise NolaError(f"{directory / CONFIG_FILE}: a {config.kind!r} adapter cannot be served from a bank; "
                            "the bank holds LoRA and NOLA adapters (full fine-tuning replaces the base)")
        plans = plan_layers(self.model, config)
        weights = directory / WEIGHTS_FILE
        values = read_adapter_tensors({name: (torch.float32, shape) for name, shape in tensor_shapes(plans, config).items()},
                                      weights, document)
        seeds = check_saved_seeds(document["seeds"], plans, config, str(directory / CONFIG_FILE))
        layers: dict[str, list[BankSlot]] = {}
        for plan in plans:
            if config.kind == "lora":
                layers[plan.path] = [BankSlot(slot.rows, lora=(values[f"{slot.name}.lora_A"].float(),
                                                                values[f"{slot.name}.lora_B"].float()))
                                     for slot in plan.slots]
            else:
                layers[plan.path] = [BankSlot(slot.rows, nola=NolaFactors(
                    values[f"{slot.name}.nola_coef_A"].float(), values[f"{slot.name}.nola_coef_B"].float(),
                    seeds[slot.name], slot.shape_A, slot.shape_B, config.init)) for slot in plan.slots]
        widths = {plan.path: plan.out_features for plan in plans}
        digest = adapter_digest(directory)
        if adapter_files_signature(directory) != signature:
            raise IncompleteAdapter(f"{directory}: the adapter's files changed while they were read; "
                                    "they are being written")
        with self._lock:
            self._loads += 1
            adapter = BankedAdapter(name, directory, config, layers, widths, weights.stat().st_size, signature,
                                    digest, self._loads)
            self._basis_users.update(_basis_keys(adapter))
            self.remove(name)
            self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> None:
        """Unload adapter `name` (a search still running with it keeps its version to the end); a basis
        no loaded adapter uses any more is forgotten (it is regenerated from its seed if needed:
        `random_basis` is deterministic)."""
        with self._lock:
            self._evict(name)
            removed = self.adapters.pop(name, None)
            if removed is not None:
                self._basis_users.subtract(_basis_keys(removed))
                for key in [key for key, users in self._basis_users.items() if users <= 0]:
                    del self._basis_users[key]
                    self._bases.pop(key, None)

    # ------------------------------------------------------------ materialising
    def basis(self, key: tuple[int, int, int]) -> torch.Tensor:
        """The shared basis (count, numel) of (seed, count, numel), generated once (`random_basis`)."""
        with self._lock:
            if key in self._bases:
                return self._bases[key]
            basis = random_basis(*key).to(self.device)
            if self._basis_users[key] > 0:  # kept only while a loaded adapter uses it
                self._bases[key] = basis
            return basis

    @property
    def basis_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bases.values())

    def resolve(self, name: str) -> BankedAdapter:
        """The loaded version of adapter `name`."""
        with self._lock:
            if name not in self.adapters:
                raise UnknownAdapter(f"no adapter named {name!r}; loaded: {', '.join(sorted(self.adapters)) or 'none'}")
            return self.adapters[name]

    def factors(self, adapters: Sequence[str | BankedAdapter]) -> list[dict[str, Factors]]:
        """Every layer's (A, scaled B) of each adapter (a name: its loaded version), from the cache or
        materialised (the missing ones together, one coefficient-by-basis product per shared basis)."""
        with self._lock:
            versions = [self.resolve(a) if isinstance(a, str) else a for a in adapters]
            missing = list({v.key: v for v in versions if v.key not in self._cache}.values())
            self.cache_misses += len(missing)
            self.cache_hits += len({v.key for v in versions}) - len(missing)
            if missing:
                for adapter, layers in zip(missing, self._materialise(missing)):
                    self._cache[adapter.key] = layers
                    self._cached_bytes += _bytes(layers)
            for adapter in versions:
                self._cache.move_to_end(adapter.key)
            found = [self._cache[adapter.key] for adapter in versions]
            self._shrink(keep={adapter.key for adapter in versions})
            return found

    def _materialise(self, adapters: list[BankedAdapter]) -> list[dict[str, Factors]]:
        mixed = self._mix_nola(adapters)
        out = []
        for index, adapter in enumerate(adapters):
            layers = {}
            for path, slots in adapter.layers.items():
                pieces = []
                for position, slot in enumerate(slots):
                    if slot.lora is not None:
                        pieces.append((slot.rows, *slot.lora))
                    else:
                        a, b = mixed[(index, path, position)]
                        pieces.append((slot.rows, a, b))
                layers[path] = self._stack(pieces, adapter.config.scale, adapter.out_features[path])
            out.append(layers)
        return out

    def _mix_nola(self, adapters: list[BankedAdapter]) -> dict[tuple[int, str, int], Factors]:
        """A and B of every NOLA slot: per shared basis, one (n × k) @ (k × numel) product."""
        groups: dict[tuple[str, tuple[int, int, int]], list[tuple[int, str, int, torch.Tensor]]] = {}
        for index, adapter in enumerate(adapters):
            for path, slots in adapter.layers.items():
                for position, slot in enumerate(slots):
                    if slot.nola is None:
                        continue
                    for role, coef in (("A", slot.nola.coef_A), ("B", slot.nola.coef_B)):
                        groups.setdefault((role, slot.nola.basis_key(role)), []).append((index, path, position, coef))
        mixed: dict[tuple[int, str, int], dict[str, torch.Tensor]] = {}
        for (role, key), members in groups.items():
            coefficients = torch.stack([coef for *_, coef in members]).to(self.device)  # (n, k)
            products = coefficients @ self.basis(key)  # (n, numel)
            for (index, path, position, _), product in zip(members, products):
                mixed.setdefault((index, path, position), {})[role] = product
        factors = {}
        for (index, path, position), parts in mixed.items():
            nola = adapters[index].layers[path][position].nola
            offsets = {role: nola.offset(role) for role in ("A", "B")}
            factors[(index, path, position)] = tuple(
                nola_factor(parts[role], shape, None if offsets[role] is None else offsets[role].to(self.device))
                for role, shape in (("A", nola.shape_A), ("B", nola.shape_B)))
        return factors

    def _stack(self, pieces: list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]], scale: float,
               layer_out: int) -> Factors:
        """One layer's slots as a single pair (`stack_factors`), on the bank's device and dtype."""
        a, b = stack_factors([(rows, a.to(self.device), b.to(self.device)) for rows, a, b in pieces], layer_out, scale)
        return a.to(self.dtype), b.to(self.dtype)

    def _evict(self, name: str) -> None:
        """Drop the materialised factors of every version of `name`."""
        for key in [key for key in self._cache if key[0] == name]:
            self._cached_bytes -= _bytes(self._cache.pop(key))

    def _shrink(self, keep: set[tuple[str, int]]) -> None:
        """Evict least recently used factors until the cache fits its bound (the batch's stay)."""
        for key in list(self._cache):
            if self._cached_bytes <= self.cache_bytes:
                break
            if key not in keep:
                self._cached_bytes -= _bytes(self._cache.pop(key))

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def clear_cache(self) -> None:
        """Drop every materialised factor (coefficients and shared bases stay)."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    @property
    def cached_names(self) -> list[str]:
        """Adapters whose factors are materialised, least recently used first."""
        return [name for name, _ in self._cache]

    @property
    def shared_bases(self) -> int:
        return len(self._bases)

    # ----------------------------------------------------------------- routing
    def routes(self, adapters: Sequence[str | BankedAdapter]) -> Routes:
        """Routes whose slot i holds adapters[i] (a name: its loaded version); rows select slots."""
        layer_factors = self.factors(adapters)
        stacked: dict[str, Factors] = {}
        for path in {path for layers in layer_factors for path in layers}:
            ranks = [layers[path][0].shape[0] if path in layers else 0 for layers in layer_factors]
            width = max(ranks)
            d_in = next(layers[path][0].shape[1] for layers in layer_factors if path in layers)
            d_out = next(layers[path][1].shape[0] for layers in layer_factors if path in layers)
            a = torch.zeros(len(layer_factors), width, d_in, device=self.device, dtype=self.dtype)
            b = torch.zeros(len(layer_factors), d_out, width, device=self.device, dtype=self.dtype)
            for slot, (layers, rank) in enumerate(zip(layer_factors, ranks)):
                if rank:
                    a[slot, :rank], b[slot, :, :rank] = layers[path]
            stacked[path] = (a, b)
        return Routes(stacked, self.router)


def _basis_keys(adapter: BankedAdapter) -> set[tuple[int, int, int]]:
    """The keys of the bases an adapter's NOLA slots use."""
    return {slot.nola.basis_key(role) for slots in adapter.layers.values() for slot in slots
            if slot.nola is not None for role in ("A", "B")}


def _bytes(layers: dict[str, Factors]) -> int:
    return sum(t.numel() * t.element_size() for pair in layers.values() for t in pair)
