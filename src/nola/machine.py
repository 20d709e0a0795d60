"""The machine a result came from, described once: for results.json (`machine_description`, one line)
and for the benchmarks (`describe_machine`, and the measured matrix-multiply peak).

Every figure is only meaningful with the machine beside it: CPU model, cores usable by this
process, torch's thread count, library versions, the accelerator's name, and the load average
(other processes sharing the cores slow every contender); `native_bf16` tells whether bfloat16
pays on this CPU (detected from its flags, never assumed).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path

import torch

OPTIONAL_LIBRARIES = ("transformers", "peft")


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX-512 BF16 / AMX; Arm's BF16 extension


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first processor in /proc/cpuinfo (x86 `flags`, Arm
    `Features`); empty where there is no such file."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (a CUDA device that supports it; a CPU with
    AVX-512 BF16, AMX or Arm BF16), so bf16 autocast is faster there rather than emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(value, 2) for value in os.getloadavg()]


def library_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def machine_description() -> str:
    """results.json's `machine`: e.g. `cpu: <model> (2 cores, 2 torch threads), torch 2.x`, or the CUDA
    device's name."""
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"cpu: {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), torch {torch.__version__}"


def describe_machine(device: torch.device = torch.device("cpu")) -> dict:
    """The machine record written at the top of bench.json and beside every GPU section."""
    record = {
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: library_version(name) for name in OPTIONAL_LIBRARIES},
        "device": device.type,
        "device_name": device_name(device),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        record["device_memory_bytes"] = properties.total_memory
        record["cuda"] = torch.version.cuda
    return record


def matmul_peak_flops(
    device: torch.device, dtype: torch.dtype, *, size: int, repeats: int, products_per_sample: int = 1
) -> dict:
    """The machine's achievable matmul rate: the best of `repeats` timed samples of size×size products.

    The best (not the median) sample is the peak: a slower sample measures interference, not the
    hardware. FLOPs per product: 2·size³; a sample runs `products_per_sample` of them back to back
    (on a GPU one product is too short to time alone).
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device, dtype)
    right = torch.randn(size, size, generator=generator).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(left, right, out=out)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(products_per_sample):
            torch.mm(left, right, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - started)
    flops = 2.0 * size**3 * products_per_sample
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "peak_flops": flops / min(samples),
        "median_flops": flops / statistics.median(samples),
        "repeats": repeats,
    }
