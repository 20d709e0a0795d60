"""LoRA/NOLA layers: exact gradients, frozen base, zero init, merge, enable mask, bad configs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from nola.adapters import (
    AdapterConfig,
    adapted_layers,
    adapter_params,
    count_trainable,
    inject_adapters,
    merge_adapters,
    unmerge_adapters,
)
from nola.adapters.bases import derive_seed, random_basis
from nola.adapters.reference import ReferenceNolaLinear
from nola.errors import NolaError
from nola.model import GPT2Config, init_gpt2
from nola.model.loading import base_state_items

VOCAB = 512  # a small vocabulary keeps the tiny GPT-2 cheap; adapters do not touch it

NOLA_MLP = dict(kind="nola", rank=4, alpha=8.0, num_basis_a=24, num_basis_b=20, modules=["c_attn", "mlp.c_fc", "mlp.c_proj"])
LORA_QV = dict(kind="lora", rank=4, alpha=32.0, targets=["q", "v"])


def tiny(seed: int = 0):
    return init_gpt2(GPT2Config.named("tiny", vocab_size=VOCAB), seed).eval()


def adapted(seed: int = 0, **config):
    model = tiny(seed)
    inject_adapters(model, AdapterConfig(**config))
    return model


def randomize_adapters(model, seed: int = 1, std: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter_params(model).values():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * std)


TOKENS = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))


def reference_offset(seed: int, shape) -> torch.Tensor:
    """model_nola.py's _init_weights on NOLALinear.weight: normal_(0, 0.02), drawn from the recorded seed."""
    return torch.empty(shape).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize(("cache_bases", "init"), [(True, "reference"), (False, "reference"), (True, "paper")])
def test_nola_coefficient_gradients_equal_autograd_through_dense_reconstruction(cache_bases, init):
    model = adapted(**NOLA_MLP, targets=["q", "v"], cache_bases=cache_bases, init=init).double()
    randomize_adapters(model)
    weights = torch.randn(2, 6, VOCAB, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (model(TOKENS) * weights).sum().backward()

    # The explicit formula: W' = W + (α/r)·B·A, A = A0 + Σᵢ αᵢAᵢ, B = B0 + Σⱼ βⱼBⱼ, bases summed one by
    # one; reference init: A0, B0 ~ N(0, 0.02) from their seeds; paper init: A0 as stored, B0 = 0.
    leaves = {name: param.detach().clone().requires_grad_(True) for name, param in adapter_params(model).items()}
    dense = {}
    for layer_name, layer in adapted_layers(model):
        weight = layer.base_layer.weight.detach().clone()
        for slot_name, (start, stop) in layer.rows.items():
            slot = layer.adapter[slot_name]
            prefix = f"{layer_name}.adapter.{slot_name}"
            rank, d_in = slot.shape_A
            bases_a = random_basis(slot.seeds["basis_A"], slot.nola_coef_A.numel(), rank * d_in).double()
            bases_b = random_basis(slot.seeds["basis_B"], slot.nola_coef_B.numel(), slot.shape_B[0] * rank).double()
            if init == "reference":
                a = reference_offset(slot.seeds["offset_A"], slot.shape_A)
                b = reference_offset(slot.seeds["offset_B"], slot.shape_B)
            else:
                a = slot.offset_A.detach().clone()
                b = torch.zeros(slot.shape_B, dtype=torch.float64)
            for coefficient, basis in zip(leaves[f"{prefix}.nola_coef_A"], bases_a):
                a = a + coefficient * basis.view(slot.shape_A)
            for coefficient, basis in zip(leaves[f"{prefix}.nola_coef_B"], bases_b):
                b = b + coefficient * basis.view(slot.shape_B)
            delta = torch.zeros_like(weight)
            delta[start:stop] = layer.scale * b @ a
            weight = weight + delta
        dense[f"{layer_name}.weight"] = weight
    plain = tiny().double()
    loss = (functional_call(plain, dense, (TOKENS,)) * weights).sum()
    expected = torch.autograd.grad(loss, list(leaves.values()))
    for (name, param), grad in zip(adapter_params(model).items(), expected):
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=1e-8, msg=name)


def test_base_weights_bitwise_unchanged_after_optimizer_steps():
    for config in (NOLA_MLP, LORA_QV, dict(LORA_QV, dropout=0.1)):
        model = adapted(**config).train()
        frozen = {name: value.clone() for name, value in base_state_items(model)}
        trainable = adapter_params(model)
        before = {name: p.detach().clone() for name, p in trainable.items()}
        optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(TOKENS).flatten(0, 1), TOKENS.flatten()).backward()
            optimizer.step()
        assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
        for name, value in base_state_items(model):
            assert torch.equal(value, frozen[name]), name
        assert all(not torch.equal(p, before[n]) for n, p in trainable.items() if n.endswith(("nola_coef_B", "lora_B")))


NOLA_QKV_PROJ = dict(NOLA_MLP, targets=["q", "k", "v"], modules=["c_attn", "attn.c_proj"])


@pytest.mark.parametrize("config", [dict(NOLA_MLP, init="paper"), dict(NOLA_QKV_PROJ, init="paper"), LORA_QV])
def test_zero_initialised_adapters_leave_logits_unchanged(config):
    expected = tiny()(TOKENS)
    assert torch.equal(adapted(**config)(TOKENS), expected)


@pytest.mark.parametrize("config", [NOLA_MLP, LORA_QV])
def test_merged_logits_equal_unmerged_and_unmerge_restores(config):
    model = adapted(**config)
    randomize_adapters(model, std=0.05)
    base = {name: value.clone() for name, value in base_state_items(model)}
    unmerged = model(TOKENS)
    assert (unmerged - tiny()(TOKENS)).abs().max() > 1e-2  # the adapters do change the function
    merge_adapters(model)
    torch.testing.assert_close(model(TOKENS), unmerged, rtol=0, atol=1e-5)
    with pytest.raises(NolaError, match="already merged"):
        merge_adapters(model)
    unmerge_adapters(model)
    torch.testing.assert_close(model(TOKENS), unmerged, rtol=0, atol=1e-5)
    for name, value in base_state_items(model):
        torch.testing.assert_close(value, base[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", [NOLA_MLP, LORA_QV])
def test_a_non_finite_adapter_is_not_merged_and_the_base_stays_untouched(config):
    model = adapted(**config)
    randomize_adapters(model, std=0.05)
    base = {name: value.clone() for name, value in base_state_items(model)}
    last = list(adapter_params(model).values())[-1]  # the last layer's: the earlier ones must not be merged either
    with torch.no_grad():
        last.view(-1)[0] = float("nan")
    with pytest.raises(NolaError, match="NaN or infinite values; nothing was merged"):
        merge_adapters(model)
    assert not any(layer.merged for _, layer in adapted_layers(model))
    for name, value in base_state_items(model):
        assert torch.equal(value, base[name]), name


def test_fused_c_attn_enable_mask_changes_only_q_and_v_columns():
    model = adapted(**NOLA_MLP, targets=["q", "v"])
    randomize_adapters(model)
    layer = model.transformer.h[0].attn.c_attn
    x = torch.randn(3, 5, 64)
    difference = (layer(x) - layer.base_layer(x)).abs().amax(dim=(0, 1))
    assert torch.all(difference[64:128] == 0)  # k
    assert torch.all(difference[:64] > 0) and torch.all(difference[128:] > 0)  # q, v


def test_trainable_tensors_are_exactly_the_coefficients():
    model = adapted(**NOLA_MLP, targets=["q", "v"])
    slots = ["attn.c_attn.adapter.q", "attn.c_attn.adapter.v", "mlp.c_fc.adapter.w", "mlp.c_proj.adapter.w"]
    expected = {f"transformer.h.{i}.{slot}.nola_coef_{m}" for i in range(2) for slot in slots for m in "AB"}
    assert set(adapter_params(model)) == expected
    assert count_trainable(model) == 2 * 4 * (24 + 20)
    assert not any(name.startswith(("offset", "basis")) for name, _ in model.named_parameters())


def test_lora_initialisation_and_scale():
    model = adapted(**LORA_QV)
    slot = model.transformer.h[1].attn.c_attn.adapter["v"]
    seed = derive_seed(0, "transformer.h.1.attn.c_attn.adapter.v", "lora_A")
    expected = torch.empty(4, 64)
    torch.nn.init.kaiming_uniform_(expected, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(slot.lora_A, expected)
    assert torch.all(slot.lora_B == 0)
    assert model.transformer.h[1].attn.c_attn.scale == 32.0 / 4
    assert count_trainable(model) == 2 * 2 * (4 * 64 + 64 * 4)


def test_dropout_acts_on_the_adapter_input_only():
    model = adapted(**dict(LORA_QV, dropout=0.5))
    layer = model.transformer.h[0].attn.c_attn.train()
    x = torch.randn(4, 64)
    assert torch.equal(layer(x), layer.base_layer(x))  # B = 0: dropout never touches the base path
    randomize_adapters(model)
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_regenerated_bases_match_cached_bases():
    cached, regenerated = adapted(**NOLA_MLP), adapted(**NOLA_MLP, cache_bases=False)
    for model in (cached, regenerated):
        randomize_adapters(model)
        model(TOKENS).square().mean().backward()
    assert regenerated.transformer.h[0].attn.c_attn.adapter["q"].basis_A is None
    torch.testing.assert_close(regenerated(TOKENS), cached(TOKENS), rtol=0, atol=1e-6)
    for (name, a), b in zip(adapter_params(cached).items(), adapter_params(regenerated).values()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_reference_algorithm_gives_the_same_outputs_and_gradients():
    model = adapted(**NOLA_MLP)
    randomize_adapters(model)
    layer = model.transformer.h[1].mlp.c_fc  # one slot spanning all outputs
    slot = layer.adapter["w"]
    reference = ReferenceNolaLinear.like(slot, layer.scale)
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(3))
    ours = layer(x) - layer.base_layer(x)
    theirs = reference(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(4))
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(slot.nola_coef_A.grad, reference.coef_A.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(slot.nola_coef_B.grad, reference.coef_B.grad, rtol=1e-4, atol=1e-5)


def test_no_global_rng_is_used():
    models = [tiny(), tiny()]  # nn.Linear's own init draws from the global RNG; adapters must not
    torch.manual_seed(123)
    state = torch.get_rng_state()
    inject_adapters(models[0], AdapterConfig(**NOLA_MLP, cache_bases=False))
    inject_adapters(models[1], AdapterConfig(**LORA_QV))
    randomize_adapters(models[0])
    models[0](TOKENS).sum().backward()
    models[0].to(torch.bfloat16)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(kind="nola", rank=0), "rank=0"),
        (dict(kind="lora", rank=-1), "rank=-1"),
        (dict(kind="nola", num_basis_a=0), "at least one basis"),
        (dict(kind="lora", modules=["c_attn", "attn.q_proj"]), "unknown target module 'attn.q_proj'"),
        (dict(kind="lora", targets=["q", "x"]), "subset of q, k, v"),
        (dict(kind="lora", targets=[]), "subset of q, k, v"),
        (dict(kind="adalora"), "adapter.kind='adalora' is unknown"),
        (dict(kind="nola", quant_bits=9), "2..8 bits"),
        (dict(kind="lora", quant_bits=4), "NOLA coefficients only"),
        (dict(kind="lora", dropout=1.0), "dropout"),
    ],
)
def test_bad_configs_are_refused(config, message):
    with pytest.raises(NolaError, match=message.replace("(", r"\(").replace(".", r"\.")):
        AdapterConfig(**config)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(kind="nola", rank=4, num_basis_a=257), r"num_basis_a=257 is more bases than .*c_attn.adapter.q's A has entries \(256\)"),
        (dict(kind="nola", rank=2, num_basis_a=8, num_basis_b=129, targets=["v"]), r"num_basis_b=129 is more bases .* \(128\)"),
        (dict(kind="lora", rank=65), "rank=65 exceeds the size"),
        (dict(kind="lora", modules=["c_attn"], unknown=1), "unknown key 'unknown'"),
    ],
)
def test_bad_configs_are_refused_at_injection(config, message):
    with pytest.raises(NolaError, match=message):
        inject_adapters(tiny(), config)


def test_injecting_twice_is_refused():
    model = adapted(**LORA_QV)
    with pytest.raises(NolaError, match="already has adapters"):
        inject_adapters(model, AdapterConfig(**LORA_QV))
