"""`nola.params`: the papers' trainable-parameter rows and exact adapter file sizes, no weights allocated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nola.config import compose_config

from nola.adapters import AdapterConfig, adapter_file_bytes, adapter_params, as_adapter_config, inject_adapters, save_adapter
from nola.errors import NolaError
from nola.model import GPT2, GPT2Config, init_gpt2
from nola.adapters.count import count_adapter
from nola.params import main

ADAPTER_DIR = Path(__file__).resolve().parents[1] / "conf" / "adapter"


def adapter_yaml(name: str, **overrides) -> AdapterConfig:
    """conf/adapter/<name>.yaml as Hydra composes it (its base_seed follows train.seed), plus overrides."""
    node = OmegaConf.merge(compose_config([f"adapter={name}"]).adapter, overrides)
    return as_adapter_config(node)


def test_every_adapter_yaml_validates_against_the_schema():
    names = sorted(path.stem for path in ADAPTER_DIR.glob("*.yaml"))
    assert names == ["full", "lora", "lora_r1", "nola", "nola_l", "none"]
    for name in names:
        adapter_yaml(name)
    with pytest.raises(Exception, match="num_bases"):
        OmegaConf.merge(OmegaConf.structured(AdapterConfig), {"num_bases": 3})


@pytest.mark.parametrize(
    "model, adapter, overrides, trainable",
    [
        ("gpt2-medium", "lora", {}, 393_216),  # Hu et al. 2022 Table 3 / NOLA Table 1: LoRA r=4 q,v
        ("gpt2-medium", "lora_r1", {}, 98_304),  # NOLA Table 1: LoRA r=1
        ("gpt2-medium", "nola", {}, 49_152),  # NOLA Table 1: GPT-2 M, rank 8, 512 bases
        ("gpt2-large", "nola_l", {}, 36_864),  # NOLA Table 1: GPT-2 L, 256 bases
        ("gpt2-large", "nola_l", {"num_basis_a": 1000, "num_basis_b": 1000}, 144_000),  # NOLA Table 1 / 2
        ("gpt2-medium", "full", {}, 354_823_168),  # GPT-2 M's parameter count (HF gpt2-medium)
        ("gpt2", "none", {}, 0),
    ],
)
def test_paper_parameter_counts(model, adapter, overrides, trainable):
    assert count_adapter(model, adapter_yaml(adapter, **overrides))["trainable"] == trainable


def test_nola_gpt2_medium_adapter_file_is_small():
    size = count_adapter("gpt2-medium", adapter_yaml("nola"))["adapter_file_bytes"]
    assert 49_152 * 4 < size < 256 * 1024
    quantized = count_adapter("gpt2-medium", adapter_yaml("nola", quant_bits=4))["adapter_file_bytes"]
    assert 49_152 // 2 + 96 * 2 * 4 < quantized < 49_152 // 2 + 96 * 2 * 4 + 512  # 4 bits each + min, step per vector


@pytest.mark.parametrize(
    "config, dtype",
    [
        (dict(kind="lora", rank=2, targets=["q", "k", "v"], modules=["c_attn", "mlp.c_proj"]), torch.float32),
        (dict(kind="nola", rank=4, num_basis_a=30, num_basis_b=17), torch.float32),
        (dict(kind="nola", rank=4, num_basis_a=30, num_basis_b=17), torch.bfloat16),
        (dict(kind="nola", rank=4, num_basis_a=30, num_basis_b=17, quant_bits=3), torch.float32),
        (dict(kind="nola", rank=16, num_basis_a=1000, num_basis_b=9, quant_bits=7), torch.float32),
        (dict(kind="full"), torch.float32),
        (dict(kind="none"), torch.float32),
    ],
)
def test_byte_count_equals_a_real_saved_file(tmp_path, config, dtype):
    config = AdapterConfig(**config)
    model = init_gpt2(GPT2Config.named("tiny"), 0).to(dtype)
    inject_adapters(model, config)
    with torch.no_grad():
        for param in adapter_params(model).values():
            param.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    save_adapter(model, tmp_path, base_fingerprint="0" * 16, model_name="tiny")
    real = (tmp_path / "adapter.safetensors").stat().st_size
    assert adapter_file_bytes(model, config.quant_bits) == real
    with torch.device("meta"):
        shapes_only = GPT2(GPT2Config.named("tiny")).to(dtype)
    inject_adapters(shapes_only, config)
    assert adapter_file_bytes(shapes_only, config.quant_bits) == real
    if dtype == torch.float32:
        assert count_adapter("tiny", config)["adapter_file_bytes"] == real


def test_cli_prints_one_json_line(capsys):
    main(["model=gpt2-medium", "adapter=nola"])
    assert json.loads(capsys.readouterr().out) == count_adapter("gpt2-medium", adapter_yaml("nola"))
    main(["model=gpt2-large", "adapter=nola_l", "adapter.num_basis_a=1000", "adapter.num_basis_b=1000"])
    assert json.loads(capsys.readouterr().out)["trainable"] == 144_000


def test_cli_reports_bad_input_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["model=gpt2-medium", "adapter=nola", "adapter.rank=0"])
    assert exit_info.value.code == 2
    assert "adapter.rank=0" in capsys.readouterr().err
    with pytest.raises(NolaError, match="more bases than"):
        count_adapter("tiny", adapter_yaml("nola", num_basis_a=513))  # the tiny A has 8 · 64 = 512 entries
