"""nola.allocator: after keep_freed_memory(), a step's large temporaries reuse the heap.

Checked by counting page faults in a fresh interpreter (the setting is process-wide, so it must not
leak into the test process). Each "step" computes 256 x 32,768 float32 logits and their log-softmax:
two 32 MiB temporaries, 16,384 pages of 4 KiB. Under glibc's default each is a fresh mmap that the
kernel faults in page by page, every step; with the memory kept, steps after the first few fault in
next to nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WARMUP_STEPS = 6
MEASURED_STEPS = 6
PAGES_PER_STEP = 2 * 256 * 32768 * 4 // 4096

PROBE = f"""
import json, resource, sys, torch
from nola.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
hidden, embedding = torch.randn(256, 128), torch.randn(32768, 128)

def step():
    logits = hidden @ embedding.T
    return torch.log_softmax(logits, dim=-1).sum()

for _ in range({WARMUP_STEPS}):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({MEASURED_STEPS}):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"applied": applied, "faults": faults}}))
"""


def _faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning applies on Linux only")
def test_large_temporaries_reuse_the_heap_instead_of_faulting_in_again():
    default, kept = _faults("default"), _faults("keep")
    assert kept["applied"] is True
    # default glibc: both temporaries are faulted in again on every step
    assert default["faults"] >= 0.9 * MEASURED_STEPS * PAGES_PER_STEP
    # kept: at most a tenth of that (measured: 0)
    assert kept["faults"] <= 0.1 * MEASURED_STEPS * PAGES_PER_STEP
