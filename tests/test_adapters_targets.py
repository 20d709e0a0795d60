"""The adapter schema from a config alone (nola.adapters.targets) against an injected model.

The independent reference is the model itself: `inject_adapters` builds the trainable slots, and
`adapter_params` lists them by name and shape in the order a file stores them. The schema must name
exactly those tensors, with those shapes, in that order, and derive the seeds the slots were built
with, for every kind of slot layout (q/v of the fused c_attn, whole projections, both inits).
"""

from __future__ import annotations

import pytest
from torch import nn

from nola.adapters import AdapterConfig, adapter_params, inject_adapters, nola_seeds
from nola.adapters.bases import derive_seed
from nola.adapters.targets import plan_layers, swap_layers, target_paths, tensor_shapes
from nola.model import GPT2Config, init_gpt2

CONFIGS = {
    "lora_qv": dict(kind="lora", rank=4, alpha=32),
    "lora_mlp_first": dict(kind="lora", rank=2, targets=["k"], modules=["mlp.c_proj", "c_attn", "mlp.c_fc"]),
    "nola_reference": dict(kind="nola", rank=4, num_basis_a=16, num_basis_b=12, base_seed=3),
    "nola_paper_proj": dict(kind="nola", rank=2, num_basis_a=8, num_basis_b=8, init="paper",
                            targets=["q", "k", "v"], modules=["c_attn", "attn.c_proj"]),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_the_schema_names_what_injection_builds_in_its_order(name):
    config = AdapterConfig(**CONFIGS[name])
    base = init_gpt2(GPT2Config.named("tiny"), 0)
    plans = plan_layers(base, config)
    inject_adapters(base, config)
    params = adapter_params(base)
    assert list(tensor_shapes(plans, config)) == list(params)
    assert {n: s for n, s in tensor_shapes(plans, config).items()} == {n: tuple(p.shape) for n, p in params.items()}
    if config.kind == "nola":
        recorded = nola_seeds(base)
        assert {slot.name: slot.derived_seeds(config) for plan in plans for slot in plan.slots} == recorded
        # the seed formula, written out: offsets per slot; bases per slot kind (reference) or per slot (paper)
        slot = "transformer.h.1.attn.c_attn.adapter.q"
        basis_owner = "attn.c_attn.adapter.q" if config.init == "reference" else slot
        assert recorded[slot]["offset_A"] == derive_seed(config.base_seed, slot, "offset_A")
        assert recorded[slot]["basis_B"] == derive_seed(config.base_seed, basis_owner, "basis_B")


def test_c_attn_rows_are_the_q_k_v_thirds():
    config = AdapterConfig(kind="lora", rank=2, targets=["q", "v"])
    base = init_gpt2(GPT2Config.named("tiny"), 0)
    width = base.config.n_embd
    [first, *_] = plan_layers(base, config)
    assert first.path == "transformer.h.0.attn.c_attn"
    assert [(slot.short_name, slot.rows) for slot in first.slots] == [("q", (0, width)), ("v", (2 * width, 3 * width))]


def test_swap_layers_keeps_parameter_names_and_order_under_the_wrapper():
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    base = init_gpt2(GPT2Config.named("tiny"), 0)
    before = [name for name, _ in base.named_parameters()]
    paths = target_paths(base, ["c_attn", "mlp.c_fc"])
    swap_layers(base, paths, lambda path, layer: Wrapper(layer))
    after = [name for name, _ in base.named_parameters()]
    wrapped = {f"{path}.{leaf}" for path in paths for leaf in ("weight", "bias")}
    assert [name.replace(".inner.", ".") for name in after] == before
    assert {name.replace(".inner.", ".") for name in after if ".inner." in name} == wrapped
