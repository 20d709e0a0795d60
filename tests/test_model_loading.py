"""`nola.model.load_gpt2` / `to_hf_state_dict` against HF transformers' GPT2LMHeadModel (the reference).

Random-weight checkpoints of several shapes are written the ways users have them (HF safetensors,
HF `pytorch_model.bin`, the old single-file layout of microsoft/LoRA's `gpt2-medium-pytorch_model.bin`);
our model must give transformers' logits within 1e-4. Bad files must raise a one-line NolaError.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nola.errors import NolaError
from nola.model import GPT2Config, base_fingerprint, hf_config_dict, init_gpt2, load_gpt2, to_hf_state_dict

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
VOCAB = 97
SHAPES = [  # (n_layer, n_embd, n_head, n_positions)
    (1, 32, 2, 16),
    (2, 48, 3, 40),
    (3, 64, 8, 24),
]


def hf_reference(n_layer: int, n_embd: int, n_head: int, n_positions: int, seed: int = 0):
    """A transformers GPT-2 whose every tensor (LayerNorms and biases too) is random and distinct."""
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=0, eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.2 * noise)
    return model


def token_batch(n_positions: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n_positions), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids)


def old_layout_state(hf_model) -> dict[str, torch.Tensor]:
    """LoRA's single-file layout: no `transformer.` prefix, no lm_head, causal-mask buffers per layer."""
    state = {}
    for key, value in hf_model.state_dict().items():
        if key == "lm_head.weight":
            continue
        state[key.removeprefix("transformer.")] = value.clone()
    n_positions = hf_model.config.n_positions
    for layer in range(hf_model.config.n_layer):
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(n_positions, n_positions)).view(1, 1, n_positions, n_positions)
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


def our_config(hf_model) -> GPT2Config:
    c = hf_model.config
    return GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head)


def write_bin_dir(hf_model, directory: Path) -> Path:
    """What transformers 4's `save_pretrained(safe_serialization=False)` wrote (5 always writes safetensors)."""
    directory.mkdir()
    hf_model.config.to_json_file(directory / "config.json")
    torch.save(hf_model.state_dict(), directory / "pytorch_model.bin")
    return directory


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-d{}-h{}-p{}".format(*s))
def test_hf_safetensors_and_bin_match_transformers(shape, tmp_path):
    hf_model = hf_reference(*shape)
    ids = token_batch(shape[3])
    expected = hf_logits(hf_model, ids)

    hf_model.save_pretrained(tmp_path / "st")
    assert (tmp_path / "st" / "model.safetensors").is_file()
    from_safetensors = load_gpt2(tmp_path / "st")
    assert from_safetensors.config == our_config(hf_model)
    torch.testing.assert_close(our_logits(from_safetensors, ids), expected, atol=TOLERANCE, rtol=0)

    from_bin = load_gpt2(write_bin_dir(hf_model, tmp_path / "bin"))
    torch.testing.assert_close(our_logits(from_bin, ids), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-d{}-h{}-p{}".format(*s))
def test_old_single_file_layout_matches_transformers(shape, tmp_path):
    """Both torch.save formats: zip (torch >= 1.6) and the legacy one LoRA's 2019 file was written in."""
    hf_model = hf_reference(*shape, seed=3)
    ids = token_batch(shape[3])
    expected = hf_logits(hf_model, ids)
    for zipped in (True, False):
        path = tmp_path / f"gpt2-pytorch_model-{zipped}.bin"
        torch.save(old_layout_state(hf_model), path, _use_new_zipfile_serialization=zipped)
        model = load_gpt2(path, config=our_config(hf_model))
        torch.testing.assert_close(our_logits(model, ids), expected, atol=TOLERANCE, rtol=0)


def test_left_padded_batch_matches_transformers_given_the_same_positions(tmp_path):
    hf_model = hf_reference(*SHAPES[1], seed=7)
    hf_model.save_pretrained(tmp_path)
    model = load_gpt2(tmp_path).eval()
    ids = token_batch(10, batch=3, seed=8)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :9] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf_model(ids, attention_mask=mask, position_ids=positions).logits
        actual = model(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=TOLERANCE, rtol=0)


def test_old_single_file_infers_config_from_shapes(tmp_path):
    """Width 64 is the project's `tiny` size (4 heads); layers, vocab and positions come from shapes."""
    hf_model = hf_reference(n_layer=2, n_embd=64, n_head=4, n_positions=20, seed=4)
    path = tmp_path / "old.bin"
    torch.save(old_layout_state(hf_model), path)
    model = load_gpt2(path)
    assert model.config == our_config(hf_model)
    ids = token_batch(20)
    torch.testing.assert_close(our_logits(model, ids), hf_logits(hf_model, ids), atol=TOLERANCE, rtol=0)


def test_to_hf_state_dict_round_trips_through_transformers(tmp_path):
    config = GPT2Config(vocab_size=VOCAB, n_positions=24, n_embd=48, n_layer=2, n_head=4)
    model = init_gpt2(config, seed=5)
    with torch.no_grad():  # make LayerNorms and biases non-trivial so a mislabelled tensor shows
        generator = torch.Generator().manual_seed(6)
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    save_file(to_hf_state_dict(model), tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(config)))

    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = token_batch(24)
    torch.testing.assert_close(hf_logits(hf_model, ids), our_logits(model, ids), atol=TOLERANCE, rtol=0)
    reloaded = load_gpt2(tmp_path)
    torch.testing.assert_close(our_logits(reloaded, ids), our_logits(model, ids), atol=0, rtol=0)
    assert base_fingerprint(reloaded) == base_fingerprint(model)


def test_base_fingerprint_sees_a_changed_weight():
    config = GPT2Config.named("tiny", vocab_size=VOCAB)
    model = init_gpt2(config, seed=0)
    before = base_fingerprint(model)
    assert base_fingerprint(init_gpt2(config, seed=0)) == before
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] += 1.0
    assert base_fingerprint(model) != before


# --- bad input: one-line NolaError naming the problem ------------------------------------------


def assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture
def saved_hf_dir(tmp_path) -> Path:
    hf_model = hf_reference(*SHAPES[0])
    hf_model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(NolaError, match="not found") as error:
        load_gpt2(tmp_path / "nowhere")
    assert "nowhere" in assert_one_line(error)


def test_directory_without_weights(saved_hf_dir, tmp_path):
    (saved_hf_dir / "model.safetensors").unlink()
    with pytest.raises(NolaError, match="holds no weights") as error:
        load_gpt2(saved_hf_dir)
    assert "model.safetensors" in assert_one_line(error)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NolaError, match="no config.json") as error:
        load_gpt2(tmp_path / "empty")
    assert_one_line(error)


def test_truncated_safetensors(saved_hf_dir):
    weights = saved_hf_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(NolaError, match="corrupt or truncated") as error:
        load_gpt2(saved_hf_dir)
    assert "model.safetensors" in assert_one_line(error)


def test_truncated_bin(tmp_path):
    directory = write_bin_dir(hf_reference(*SHAPES[0]), tmp_path / "bin")
    weights = directory / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(NolaError, match="corrupt or truncated") as error:
        load_gpt2(directory)
    assert "pytorch_model.bin" in assert_one_line(error)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("n_embd", 64, "shape"),
        ("n_positions", 17, "wpe.weight"),
        ("vocab_size", VOCAB + 1, "wte.weight"),
        ("n_layer", 2, "missing key 'h.1."),
    ],
)
def test_shapes_that_contradict_config_json(saved_hf_dir, field, value, expected):
    config_path = saved_hf_dir / "config.json"
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(NolaError, match=expected) as error:
        load_gpt2(saved_hf_dir)
    assert "model.safetensors" in assert_one_line(error)


def test_config_json_that_is_not_json(saved_hf_dir):
    (saved_hf_dir / "config.json").write_text("{not json")
    with pytest.raises(NolaError, match="config.json") as error:
        load_gpt2(saved_hf_dir)
    assert_one_line(error)


def test_config_json_with_an_architecture_we_do_not_implement(saved_hf_dir):
    config_path = saved_hf_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["activation_function"] = "relu"
    config_path.write_text(json.dumps(config))
    with pytest.raises(NolaError, match="activation_function") as error:
        load_gpt2(saved_hf_dir)
    assert_one_line(error)


def test_extra_and_missing_keys(tmp_path):
    hf_model = hf_reference(*SHAPES[0])
    state = old_layout_state(hf_model)
    state["h.0.attn.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(NolaError, match="unexpected key 'h.0.attn.extra'") as error:
        load_gpt2(tmp_path / "extra.bin", config=our_config(hf_model))
    assert_one_line(error)
    state = old_layout_state(hf_model)
    del state["ln_f.bias"]
    torch.save(state, tmp_path / "missing.bin")
    with pytest.raises(NolaError, match="missing key 'ln_f.bias'") as error:
        load_gpt2(tmp_path / "missing.bin", config=our_config(hf_model))
    assert_one_line(error)


def test_untied_lm_head_is_refused(tmp_path):
    hf_model = hf_reference(*SHAPES[0])
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    state["lm_head.weight"] += 1.0
    torch.save(state, tmp_path / "untied.bin")
    with pytest.raises(NolaError, match="lm_head.weight differs") as error:
        load_gpt2(tmp_path / "untied.bin", config=our_config(hf_model))
    assert_one_line(error)


class MarkerOnUnpickle:
    """Unpickling this would create `self.marker` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_arbitrary_object_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.bin"
    payload = {"wte.weight": torch.zeros(2, 2), "payload": MarkerOnUnpickle(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(NolaError, match="refused to load") as error:
        load_gpt2(path)
    assert "evil.bin" in assert_one_line(error)
    assert not marker.exists()


def test_pickle_of_tensors_but_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.bin")
    with pytest.raises(NolaError, match="state dict of tensors, found a list") as error:
        load_gpt2(tmp_path / "list.bin")
    assert_one_line(error)
    torch.save({"wte.weight": torch.zeros(2, 2), "step": 3}, tmp_path / "mixed.bin")
    with pytest.raises(NolaError, match="key 'step' holds a int") as error:
        load_gpt2(tmp_path / "mixed.bin")
    assert_one_line(error)


def test_config_json_that_is_not_an_object(saved_hf_dir):
    (saved_hf_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(NolaError, match="expected a JSON object") as error:
        load_gpt2(saved_hf_dir)
    assert "config.json" in assert_one_line(error)


def test_base_fingerprint_ignores_dtype_and_dropout_but_not_weights():
    from nola.model import GPT2Config, base_fingerprint, init_gpt2

    config = GPT2Config.named("tiny")
    reference = base_fingerprint(init_gpt2(config, seed=3))
    assert base_fingerprint(init_gpt2(config, seed=3).to(torch.bfloat16)) == reference
    assert base_fingerprint(init_gpt2(GPT2Config.named("tiny", attn_pdrop=0.0), seed=3)) == reference
    assert base_fingerprint(init_gpt2(config, seed=4)) != reference
    changed = init_gpt2(config, seed=3)
    with torch.no_grad():
        changed.transformer.h[1].mlp.c_fc.weight.mul_(1.5)
    assert base_fingerprint(changed) != reference
