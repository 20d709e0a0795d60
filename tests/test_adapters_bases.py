"""NOLA bases: the reference code's distributions, reproducible across processes, dtypes, devices."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nola.adapters import AdapterConfig, inject_adapters
from nola.adapters.bases import derive_seed, random_basis, random_offset
from nola.adapters.inject import nola_slots
from nola.model import GPT2Config, init_gpt2

VOCAB = 512  # a small vocabulary keeps the tiny GPT-2 cheap; adapters do not touch it

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = AdapterConfig(kind="nola", rank=4, num_basis_a=32, num_basis_b=16, targets=["q", "v"], modules=["c_attn", "mlp.c_fc"],
                       init="paper")


def nola_tiny(dtype=torch.float32, cache_bases=True, init="paper"):
    model = init_gpt2(GPT2Config.named("tiny", vocab_size=VOCAB), 0).to(dtype)
    inject_adapters(model, AdapterConfig(**{**CONFIG.to_dict(), "cache_bases": cache_bases, "init": init}))
    return model


def bases_digest(model) -> str:
    digest = hashlib.sha256()
    for name, slot in sorted(nola_slots(model).items()):
        for tensor in (slot.offset_A, slot.offset_B, slot.basis_A, slot.basis_B):
            if tensor is None:
                continue
            digest.update(name.encode())
            digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()


def test_bases_follow_the_reference_codes_draw():
    # UCDvision/NOLA model_nola.py: torch.manual_seed(seed); W = zeros(k, out, in); uniform_(W, -1, 1); W * (1/√k)
    torch.manual_seed(1234)
    reference = torch.zeros(32, 4, 64)
    torch.nn.init.uniform_(reference, a=-1.0, b=1.0)
    reference = reference * (1.0 / math.sqrt(32))
    assert torch.equal(random_basis(1234, 32, 4 * 64), reference.view(32, -1))
    # A0 is LoRA's kaiming_uniform_(a=√5) weight of shape (r, d_in)
    torch.manual_seed(99)
    offset = torch.empty(4, 64)
    torch.nn.init.kaiming_uniform_(offset, a=math.sqrt(5))
    assert torch.equal(random_offset(99, 4, 64), offset)
    assert offset.abs().max() <= 1 / 8


@pytest.mark.parametrize("init", ["paper", "reference"])
def test_same_seed_gives_identical_bases_in_another_process(init):
    script = (
        "import sys; sys.path.insert(0, 'tests');"
        f"from test_adapters_bases import nola_tiny, bases_digest; print(bases_digest(nola_tiny(init={init!r})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == bases_digest(nola_tiny(init=init))


def test_different_matrices_get_different_seeds_and_bases():
    slots = nola_slots(nola_tiny())
    assert len(slots) == 2 * 3
    seeds = [seed for slot in slots.values() for seed in slot.seeds.values()]
    assert len(set(seeds)) == len(seeds) == 18
    q0, v0 = slots["transformer.h.0.attn.c_attn.adapter.q"], slots["transformer.h.0.attn.c_attn.adapter.v"]
    q1 = slots["transformer.h.1.attn.c_attn.adapter.q"]
    assert not torch.equal(q0.basis_A, v0.basis_A)
    assert not torch.equal(q0.basis_A, q1.basis_A)
    assert not torch.equal(q0.offset_A, q1.offset_A)
    assert q0.seeds["basis_A"] == derive_seed(0, "transformer.h.0.attn.c_attn.adapter.q", "basis_A")
    assert derive_seed(1, "x", "basis_A") != derive_seed(0, "x", "basis_A")


@pytest.mark.parametrize("init", ["paper", "reference"])
def test_bases_identical_in_float32_and_bf16_models(init):
    full, half = nola_tiny(torch.float32, init=init), nola_tiny(torch.bfloat16, init=init)
    buffers = ("offset_A", "basis_A", "basis_B") + (("offset_B",) if init == "reference" else ())
    for name, slot in nola_slots(half).items():
        reference = nola_slots(full)[name]
        assert slot.basis_A.dtype == torch.bfloat16
        for buffer in buffers:
            assert torch.equal(getattr(slot, buffer), getattr(reference, buffer).to(torch.bfloat16)), (name, buffer)
    # a cast down and back rebuilds from float32 instead of keeping bf16-rounded bases
    roundtrip = nola_tiny(torch.float32, init=init).to(torch.bfloat16).to(torch.float32)
    assert bases_digest(roundtrip) == bases_digest(full)


def test_basis_scale_matches_the_reference_normalisation():
    basis = random_basis(7, 512, 8 * 1024)
    bound = 1 / math.sqrt(512)
    assert basis.abs().max() <= bound
    assert math.isclose(basis.std().item(), bound / math.sqrt(3), rel_tol=2e-3)  # U(-b, b) has std b/√3
