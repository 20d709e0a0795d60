"""Adapter-only checkpoints: exact keys, round trips, quantized coefficients, strict refusals."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nola.adapters import (
    AdapterConfig,
    adapter_params,
    inject_adapters,
    load_adapter,
    merge_adapters,
    quantize_adapter_,
    save_adapter,
)
from nola.adapters.bases import random_basis
from nola.adapters.checkpoint import IncompleteAdapter
from nola.adapters.inject import nola_slots
from nola.adapters.quantize import pack_bits, packed_length, unpack_bits
from nola.errors import NolaError
from nola.model import GPT2Config, base_fingerprint, init_gpt2

VOCAB = 512  # a small vocabulary keeps the tiny GPT-2 cheap; adapters do not touch it

LORA = dict(kind="lora", rank=4, alpha=32.0, targets=["q", "v"])
NOLA = dict(kind="nola", rank=4, alpha=8.0, num_basis_a=24, num_basis_b=20, modules=["c_attn", "mlp.c_fc", "mlp.c_proj"])
TOKENS = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
LAYER_WEIGHTS = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]


def tiny(seed: int = 0, **overrides):
    return init_gpt2(GPT2Config.named("tiny", vocab_size=VOCAB, **overrides), seed).eval()


def trained(config: dict, seed: int = 1):
    """A tiny model with the adapter injected and its trainable tensors set to random values."""
    model = tiny()
    inject_adapters(model, AdapterConfig(**config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter_params(model).values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def save(model, directory, **kwargs):
    return save_adapter(model, directory, base_fingerprint=base_fingerprint(tiny()), model_name="tiny", **kwargs)


@pytest.mark.parametrize(
    "config, expected",
    [
        (LORA, {f"transformer.h.{i}.attn.c_attn.adapter.{s}.lora_{m}" for i in range(2) for s in "qv" for m in "AB"}),
        (
            dict(NOLA, targets=["k"]),
            {
                f"transformer.h.{i}.{slot}.nola_coef_{m}"
                for i in range(2)
                for slot in ("attn.c_attn.adapter.k", "mlp.c_fc.adapter.w", "mlp.c_proj.adapter.w")
                for m in "AB"
            },
        ),
        (dict(NOLA, quant_bits=3), {"nola_coefficients.packed", "nola_coefficients.min", "nola_coefficients.step"}),
        (
            dict(kind="full"),
            {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
            | {f"transformer.h.{i}.{m}.{p}" for i in range(2) for m in LAYER_WEIGHTS for p in ("weight", "bias")},
        ),
        (dict(kind="none"), set()),
    ],
)
def test_adapter_file_holds_exactly_the_trained_tensors(tmp_path, config, expected):
    model = tiny()
    inject_adapters(model, AdapterConfig(**config))
    save(model, tmp_path, extra={"run": "test"})
    assert set(load_file(str(tmp_path / "adapter.safetensors"))) == expected
    document = json.loads((tmp_path / "adapter_config.json").read_text())
    assert set(document) == {
        "format", "version", "model_name", "architecture", "base_fingerprint", "adapter",
        "coefficient_bits", "trainable_params", "seeds", "extra", "weights_sha256",
    }
    assert document["weights_sha256"] == hashlib.sha256((tmp_path / "adapter.safetensors").read_bytes()).hexdigest()
    assert document["extra"] == {"run": "test"} and document["base_fingerprint"] == base_fingerprint(tiny())
    if config["kind"] == "nola":
        slots = {f"transformer.h.{i}.{m}.adapter.{s}" for i in range(2) for m in ("mlp.c_fc", "mlp.c_proj") for s in "w"}
        slots |= {f"transformer.h.{i}.attn.c_attn.adapter.{s}" for i in range(2) for s in config.get("targets", "qv")}
        assert set(document["seeds"]) == slots
        roles = {"offset_A", "offset_B", "basis_A", "basis_B"} if config.get("init", "reference") == "reference" else {
            "offset_A", "basis_A", "basis_B"}
        assert all(set(seeds) == roles for seeds in document["seeds"].values())
    else:
        assert document["seeds"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors", "adapter_config.json"]


@pytest.mark.parametrize("config", [LORA, NOLA, dict(NOLA, cache_bases=False), dict(kind="full")])
def test_round_trip_restores_the_adapted_function(tmp_path, config):
    model = trained(config)
    save(model, tmp_path)
    restored = tiny()
    loaded = load_adapter(restored, tmp_path)
    assert loaded.kind == config["kind"]
    assert torch.equal(restored(TOKENS), model(TOKENS))
    if config["kind"] != "full":
        assert not torch.equal(restored(TOKENS), tiny()(TOKENS))


def test_load_into_a_model_with_the_same_adapter_already_injected(tmp_path):
    save(trained(NOLA), tmp_path)
    target = tiny()
    inject_adapters(target, AdapterConfig(**dict(NOLA, cache_bases=False, dropout=0.1)))  # not structural
    load_adapter(target, tmp_path)
    assert torch.equal(target.eval()(TOKENS), trained(NOLA)(TOKENS))


def test_recorded_seeds_are_the_ones_used(tmp_path):
    save(trained(dict(NOLA, init="paper")), tmp_path)  # paper init: bases per layer
    path = tmp_path / "adapter_config.json"
    document = json.loads(path.read_text())
    name = "transformer.h.1.mlp.c_fc.adapter.w"
    document["seeds"][name]["basis_B"] = 4242
    path.write_text(json.dumps(document))
    restored = tiny()
    load_adapter(restored, tmp_path)
    slot = nola_slots(restored)[name]
    assert torch.equal(slot.basis_B, random_basis(4242, 20, 256 * 4))
    assert not torch.equal(nola_slots(restored)["transformer.h.0.mlp.c_fc.adapter.w"].basis_B, slot.basis_B)


def test_recorded_seeds_of_a_shared_basis_must_agree(tmp_path):
    save(trained(NOLA), tmp_path)  # reference init: one basis per slot kind, shared by both layers
    path = tmp_path / "adapter_config.json"
    document = json.loads(path.read_text())
    names = [f"transformer.h.{i}.mlp.c_fc.adapter.w" for i in range(2)]
    document["seeds"][names[1]]["basis_B"] = 4242
    path.write_text(json.dumps(document))
    with pytest.raises(NolaError, match="shared basis"):
        load_adapter(tiny(), tmp_path)
    document["seeds"][names[0]]["basis_B"] = 4242
    path.write_text(json.dumps(document))
    restored = tiny()
    load_adapter(restored, tmp_path)
    for name in names:
        assert torch.equal(nola_slots(restored)[name].basis_B, random_basis(4242, 20, 256 * 4))


def test_an_adapter_saved_before_init_existed_loads_as_paper_init(tmp_path):
    """adapter_config.json files written before `adapter.init` carry no init key: they are paper-init
    adapters, and load as such, or are refused by a model built with the reference init."""
    model = trained(dict(NOLA, init="paper"))
    save(model, tmp_path)
    path = tmp_path / "adapter_config.json"
    document = json.loads(path.read_text())
    del document["adapter"]["init"]
    path.write_text(json.dumps(document))
    restored = tiny()
    assert load_adapter(restored, tmp_path).init == "paper"
    assert torch.equal(restored(TOKENS), model(TOKENS))
    built_reference = tiny()
    inject_adapters(built_reference, AdapterConfig(**NOLA))
    with pytest.raises(NolaError, match="adapter.init=paper") as err:
        load_adapter(built_reference, tmp_path)
    assert "rerun with adapter.init=paper" in str(err.value)


@pytest.mark.parametrize("bits", range(2, 9))
def test_quantized_coefficients_restore_within_half_a_step(tmp_path, bits):
    model = trained(dict(NOLA, quant_bits=bits))
    original = {name: p.detach().clone() for name, p in adapter_params(model).items()}
    save(model, tmp_path)
    stored = load_file(str(tmp_path / "adapter.safetensors"))
    assert stored["nola_coefficients.packed"].dtype == torch.uint8
    assert stored["nola_coefficients.packed"].numel() == 2 * (24 * bits // 8 + (20 * bits + 7) // 8) * 4
    restored = tiny()
    load_adapter(restored, tmp_path)
    loaded = adapter_params(restored)
    for index, (name, value) in enumerate(original.items()):
        step = stored["nola_coefficients.step"][index]
        assert torch.isclose(step, (value.max() - value.min()) / (2**bits - 1))
        assert (loaded[name] - value).abs().max() <= step / 2 + 1e-6
        assert len(loaded[name].unique()) <= 2**bits
    quantize_adapter_(model, bits)  # the in-place path gives what the file restores
    for name, param in adapter_params(model).items():
        assert torch.equal(param, loaded[name])


def test_bit_packing_by_hand():
    assert pack_bits(torch.tensor([1, 2, 3]), 2).tolist() == [0b00111001]  # 01, 10, 11 little-endian
    assert pack_bits(torch.tensor([5, 7, 1]), 3).tolist() == [0b01111101, 0]
    levels = torch.randint(0, 32, (1001,), generator=torch.Generator().manual_seed(0))
    packed = pack_bits(levels, 5)
    assert packed.numel() == packed_length(1001, 5) == 626
    assert torch.equal(unpack_bits(packed, 5, 1001), levels)


def _rewrite(path, change, *, record_digest: bool = True):
    """Change the stored tensors; the config records the new file's sha256 unless told not to (a
    file swapped under its config)."""
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    if record_digest:
        config = path.parent / "adapter_config.json"
        document = json.loads(config.read_text())
        document["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        config.write_text(json.dumps(document))


def test_refuses_weights_that_are_not_the_ones_the_config_names(tmp_path):
    save(trained(LORA), tmp_path)
    _rewrite(tmp_path / "adapter.safetensors", lambda t: t.update({k: v + 1 for k, v in t.items()}),
             record_digest=False)
    with pytest.raises(IncompleteAdapter, match="weights_sha256 differs"):
        load_adapter(tiny(), tmp_path)


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / "adapter.safetensors").write_bytes((d / "adapter.safetensors").read_bytes()[:-7]), "corrupt or truncated"),
    (lambda d: (d / "adapter.safetensors").unlink(), "not found; the adapter directory is incomplete"),
    (lambda d: (d / "adapter_config.json").write_text((d / "adapter_config.json").read_text()[:40]), "not valid JSON"),
])
def test_a_half_written_directory_is_incomplete(tmp_path, damage, fragment):
    save(trained(NOLA), tmp_path)
    damage(tmp_path)
    with pytest.raises(IncompleteAdapter, match=fragment):
        load_adapter(tiny(), tmp_path)


def test_refuses_non_finite_values(tmp_path):
    save(trained(LORA), tmp_path)
    _rewrite(tmp_path / "adapter.safetensors", lambda t: next(iter(t.values()))[0].fill_(float("nan")))
    with pytest.raises(NolaError, match="NaN or infinite"):
        load_adapter(tiny(), tmp_path)


def test_refuses_an_adapter_for_another_base(tmp_path):
    save(trained(LORA), tmp_path)
    with pytest.raises(NolaError, match="trained on base .* this model's base is"):
        load_adapter(tiny(seed=5), tmp_path)
    with pytest.raises(NolaError, match="n_layer=2, this model has n_layer=3"):
        load_adapter(tiny(n_layer=3), tmp_path)


def test_refuses_a_coefficient_vector_of_the_wrong_length(tmp_path):
    save(trained(NOLA), tmp_path)
    name = "transformer.h.0.attn.c_attn.adapter.q.nola_coef_A"
    _rewrite(tmp_path / "adapter.safetensors", lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(NolaError, match=f"tensor '{name}' is torch.float32 \\(23,\\); this model needs torch.float32 \\(24,\\)"):
        load_adapter(tiny(), tmp_path)


def test_refuses_a_quantized_stream_of_the_wrong_length(tmp_path):
    save(trained(dict(NOLA, quant_bits=4)), tmp_path)
    key = "nola_coefficients.packed"
    _rewrite(tmp_path / "adapter.safetensors", lambda t: t.update({key: torch.cat([t[key], t[key][:1]])}))
    with pytest.raises(NolaError, match="nola_coefficients.packed"):
        load_adapter(tiny(), tmp_path)


def test_refuses_missing_and_unexpected_tensors(tmp_path):
    save(trained(LORA), tmp_path)
    name = "transformer.h.1.attn.c_attn.adapter.v.lora_B"
    _rewrite(tmp_path / "adapter.safetensors", lambda t: t.update({"extra.weight": t.pop(name)}))
    with pytest.raises(NolaError, match=f"missing tensor '{name}'"):
        load_adapter(tiny(), tmp_path)
    _rewrite(tmp_path / "adapter.safetensors", lambda t: t.update({name: t["extra.weight"].clone()}))
    with pytest.raises(NolaError, match="unexpected tensor 'extra.weight'"):
        load_adapter(tiny(), tmp_path)


def test_refuses_a_different_adapter_structure_and_merged_models(tmp_path):
    save(trained(NOLA), tmp_path)
    other = tiny()
    inject_adapters(other, AdapterConfig(**dict(NOLA, num_basis_a=16)))
    with pytest.raises(NolaError, match="differs from the model's"):
        load_adapter(other, tmp_path)
    merged = trained(NOLA)
    merge_adapters(merged)
    with pytest.raises(NolaError, match="merged"):
        load_adapter(merged, tmp_path)


def test_refuses_broken_or_foreign_files(tmp_path):
    with pytest.raises(NolaError, match="adapter_config.json not found"):
        load_adapter(tiny(), tmp_path)
    save(trained(LORA), tmp_path)
    (tmp_path / "adapter.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(NolaError, match="corrupt or truncated"):
        load_adapter(tiny(), tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"format": "peft"}')
    with pytest.raises(NolaError, match="not a NOLA adapter config"):
        load_adapter(tiny(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{")
    with pytest.raises(NolaError, match="not valid JSON"):
        load_adapter(tiny(), tmp_path)
