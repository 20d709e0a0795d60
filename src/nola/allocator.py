"""Keep freed CPU tensor memory inside the process (glibc malloc tuning for the entry points).

glibc serves every block above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh
`mmap` and gives it back with `munmap` when freed. A training or decoding step allocates and frees
tensors far larger than that (GPT-2's logits are tokens x 50,257 floats), so every step the kernel
maps, zero-fills page by page and unmaps hundreds of MB: on the 2-core reference machine a third of
the mini pretraining step went to page faults (measured: 1.94 -> 2.83 steps/s, same losses).
`keep_freed_memory()` turns that off for the calling process: large blocks come from the heap and
freed memory stays there for the next step. The price is that the process keeps its peak heap until
it exits, which is what a training or decoding process does anyway.

Entry points (`nola.train`, `nola.run`, `nola.decode`, `nola.mini`, `nola.bench`) call it once at
start; the benchmarks therefore run both sides of every comparison under the same allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # largest value mallopt accepts (an int): return memory only above 2 GiB free


def keep_freed_memory() -> bool:
    """Stop glibc from mmap-ing large blocks and from trimming the heap; True when applied.

    A no-op (False) where the C library is not glibc (macOS, musl) or mallopt refuses.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
