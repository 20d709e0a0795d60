"""Fair timing and memory measurement of competing implementations inside one process.

`time_alternating` runs every contender once per round, rotating the order from round to round,
so slow drifts of the machine (other processes, frequency changes) fall on all contenders alike;
the summary is the median over rounds.

Peak memory means the bytes of tensors alive at the worst moment of one step: the contender's
resident tensors (weights, frozen buffers such as NOLA's basis cache, optimizer state) plus the
peak of what the step itself allocates (activations, gradients, temporaries). On CUDA the step's
share is `torch.cuda.max_memory_allocated` above what was allocated before; on CPU, which has no
allocator statistics, `LiveTensorTracker` counts every tensor storage the step's operators create
and sees when each is freed. Memory inside a kernel that never becomes a tensor (scratch space of
oneDNN or of SDPA) is invisible to it, as it is to `max_memory_allocated` for cuBLAS workspaces.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_alternating(
    contenders: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device = torch.device("cpu"),
    desc: str = "timing",
) -> dict[str, list[float]]:
    """Seconds per call of each contender, `repeats` samples each, taken in alternating rounds.

    Every contender first runs `warmup` times (allocator, caches, lazy initialisation); then round
    r runs all contenders once, starting at contender r mod n.
    """
    names = list(contenders)
    sync = synchronizer(device)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in tqdm(range(repeats), desc=desc, unit="round", leave=False):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            contenders[name]()
            sync()
            samples[name].append(time.perf_counter() - started)
    return samples


def summarize(samples: list[float]) -> dict[str, float | int]:
    """Median, minimum and maximum seconds of a contender's samples."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "repeats": len(samples),
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and tied weights counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resident_tensors(modules: Iterable[torch.nn.Module], optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """What a training step keeps between steps: parameters, buffers and the optimizer's state."""
    tensors: list[torch.Tensor] = []
    for module in modules:
        tensors.extend(module.parameters())
        tensors.extend(buffer for buffer in module.buffers() if buffer is not None)
    for state in optimizer.state.values():
        tensors.extend(value for value in state.values() if isinstance(value, torch.Tensor))
    return tensors


class LiveTensorTracker(TorchDispatchMode):
    """Counts the bytes of tensor storages created by operators while active, and their peak.

    An operator output is a new allocation unless the operator's schema says it aliases an input
    (views, in-place and out= variants). Each new storage is watched through a weak reference,
    so the count drops when the storage is freed, whoever frees it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._forget_freed()
        if not any(ret.alias_info is not None for ret in func._schema.returns):
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self._add(leaf)
        return out

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live:
            return
        self._live[key] = (StorageWeakRef(storage), size)
        self.current += size
        self.peak = max(self.peak, self.current)

    def _forget_freed(self) -> None:
        freed = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in freed:
            self.current -= self._live.pop(key)[1]


@dataclass(frozen=True)
class PeakMemory:
    """resident_bytes: tensors kept between steps; step_bytes: the step's own peak on top of them."""

    resident_bytes: int
    step_bytes: int

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.step_bytes

    def to_dict(self) -> dict[str, int]:
        return {"peak_bytes": self.peak_bytes, "resident_bytes": self.resident_bytes, "step_bytes": self.step_bytes}


def peak_memory(step: Callable[[], object], resident: Iterable[torch.Tensor], device: torch.device) -> PeakMemory:
    """Run `step` once and measure its peak memory (see the module docstring)."""
    resident_bytes = storage_bytes(resident)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return PeakMemory(resident_bytes, torch.cuda.max_memory_allocated(device) - before)
    with LiveTensorTracker() as tracker:
        step()
    return PeakMemory(resident_bytes, tracker.peak)
