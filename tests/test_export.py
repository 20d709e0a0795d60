"""Export round trips through the independent implementations: transformers GPT-2 and peft LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from nola.adapters import AdapterConfig, adapter_params, inject_adapters
from nola.errors import NolaError
from nola.export import export_hf_model, export_peft_adapter
from nola.model import GPT2Config, init_gpt2
from nola.model.loading import base_state_items

VOCAB = 512  # a small vocabulary keeps the tiny GPT-2 cheap; adapters do not touch it

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOKENS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(11))
CONFIGS = {
    "lora_qv": dict(kind="lora", rank=4, alpha=32.0, targets=["q", "v"]),
    "nola_mlp": dict(
        kind="nola", rank=4, alpha=8.0, num_basis_a=40, num_basis_b=24, targets=["q", "k", "v"],
        modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    ),
    "nola_v": dict(kind="nola", rank=2, alpha=2.0, num_basis_a=16, num_basis_b=16, targets=["v"]),
}


def tiny():
    return init_gpt2(GPT2Config.named("tiny", vocab_size=VOCAB), 0).eval()


def trained(config: dict):
    model = tiny()
    inject_adapters(model, AdapterConfig(**config))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in adapter_params(model).values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def hf_logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    directory = export_hf_model(tiny(), tmp_path_factory.mktemp("hf_base"))
    return directory


def test_plain_model_exports_to_transformers(hf_base):
    loaded = transformers.GPT2LMHeadModel.from_pretrained(hf_base).eval()
    torch.testing.assert_close(hf_logits(loaded, TOKENS), tiny()(TOKENS), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_merged_export_loads_in_transformers_with_the_same_logits(tmp_path, name):
    model = trained(CONFIGS[name])
    base_before = {key: value.clone() for key, value in base_state_items(model)}
    expected = model(TOKENS)
    export_hf_model(model, tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf_logits(loaded, TOKENS), expected, rtol=0, atol=1e-5)
    assert all(torch.equal(value, base_before[key]) for key, value in base_state_items(model))  # untouched


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_peft_adapter_export_gives_the_same_logits(tmp_path, hf_base, name):
    model = trained(CONFIGS[name])
    export_peft_adapter(model, tmp_path, base_model_name_or_path="tiny")
    document = json.loads((tmp_path / "adapter_config.json").read_text())
    assert document["peft_type"] == "LORA" and document["fan_in_fan_out"] is True
    base = transformers.GPT2LMHeadModel.from_pretrained(hf_base).eval()
    adapted = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    torch.testing.assert_close(hf_logits(adapted, TOKENS), model(TOKENS), rtol=0, atol=1e-5)


def test_peft_export_refuses_full_fine_tuning(tmp_path):
    model = tiny()
    inject_adapters(model, AdapterConfig(kind="full"))
    with pytest.raises(NolaError, match="only LoRA and NOLA"):
        export_peft_adapter(model, tmp_path)
