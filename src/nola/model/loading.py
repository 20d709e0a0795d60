"""Load GPT-2 weights from the formats users have, strictly and safely.

Sources accepted by `load_gpt2`:
- a Hugging Face directory: `config.json` + `model.safetensors` or `pytorch_model.bin`;
- a single-file state dict in the old OpenAI/HF layout that microsoft/LoRA's
  `download_pretrained_checkpoints.sh` fetches (`gpt2-medium-pytorch_model.bin`, keys `h.0.attn…`);
- a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), fetched by `nola.model.hub`.

HF stores projections as Conv1D (in × out); they are transposed here into `nn.Linear` (out × in).
Every key must be present with the shape the config implies; extra keys are errors, except the
causal-mask buffers old checkpoints carry (`attn.bias`, `attn.masked_bias`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nola.errors import NolaError
from nola.model.gpt2 import GPT2, NAMED_CONFIGS, GPT2Config

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MASK_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ARCHITECTURE_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon")
HEADS_BY_WIDTH = {cfg["n_embd"]: cfg["n_head"] for cfg in NAMED_CONFIGS.values()}


def load_gpt2(source: str | Path, *, cache_dir: str | Path | None = None, config: GPT2Config | None = None) -> GPT2:
    """Build a GPT2 from a HF directory, an old-layout single file, or a hub name.

    `config` is needed only for a single file whose width is not a published GPT-2 size.
    """
    path = Path(source)
    if path.is_dir():
        return _load_hf_dir(path)
    if path.is_file():
        state = read_state_dict(path)
        return from_state_dict(state, config or infer_config(state, path), path)
    from nola.model.hub import HUB_MODELS, fetch_hub_model

    if str(source) in HUB_MODELS:
        return _load_hf_dir(fetch_hub_model(str(source), cache_dir=cache_dir))
    raise NolaError(
        f"GPT-2 weights not found: {source!r} is neither an existing file/directory nor a hub name "
        f"({', '.join(HUB_MODELS)})"
    )


def _load_hf_dir(directory: Path) -> GPT2:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise NolaError(f"{directory} has no config.json; expected a Hugging Face GPT-2 directory")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(hf, dict):
            raise ValueError(f"expected a JSON object, found {type(hf).__name__}")
        config = GPT2Config.from_hf_dict(hf)
    except (ValueError, TypeError) as err:
        raise NolaError(f"{config_path}: not a valid GPT-2 config.json ({err})") from None
    except NolaError as err:
        raise NolaError(f"{config_path}: {err}") from None
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return from_state_dict(read_state_dict(directory / name), config, directory / name)
    raise NolaError(f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors safely: safetensors, or a pickle restricted to tensors (weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise NolaError(
            f"{path}: refused to load: not a plain tensor checkpoint ({_weights_only_reason(err)}); "
            "only safetensors files or pickled state dicts of tensors are read, since unpickling anything else can run code"
        ) from None
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else type(err).__name__
        raise NolaError(f"{path}: cannot read weights, the file is corrupt or truncated ({reason})") from None
    if not isinstance(state, dict):
        raise NolaError(f"{path}: expected a state dict of tensors, found a {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise NolaError(f"{path}: expected a state dict of tensors, key {key!r} holds a {type(value).__name__}")
    return state


def _weights_only_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that says what it met (e.g. an unsupported GLOBAL)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(err).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(boilerplate)]
    return reasons[0] if reasons else "weights_only unpickling failed"


def infer_config(state: dict[str, torch.Tensor], path: Path) -> GPT2Config:
    """Config of an old single-file checkpoint, from its shapes (heads from the published sizes)."""
    state = _strip_prefix(state)
    if "wte.weight" not in state or "wpe.weight" not in state:
        raise NolaError(f"{path}: not a GPT-2 state dict (no wte.weight / wpe.weight)")
    vocab, width = state["wte.weight"].shape
    layers = len({int(m.group(1)) for k in state if (m := re.match(r"h\.(\d+)\.", k))})
    if width not in HEADS_BY_WIDTH:
        raise NolaError(f"{path}: width {width} is not a published GPT-2 size; pass config= explicitly")
    return GPT2Config(
        vocab_size=vocab, n_positions=state["wpe.weight"].shape[0], n_embd=width, n_layer=layers, n_head=HEADS_BY_WIDTH[width]
    )


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys relative to the transformer (`h.0…`, `wte.weight`); drop mask buffers and the tied head."""
    out = {}
    for key, value in state.items():
        if MASK_BUFFER.search(key) or key == "lm_head.weight":
            continue
        out[key.removeprefix("transformer.")] = value
    return out


def from_state_dict(state: dict[str, torch.Tensor], config: GPT2Config, path: Path) -> GPT2:
    """Strictly copy an HF/OpenAI-layout state dict into a fresh GPT2 built from `config`."""
    tied_head = state.get("lm_head.weight")
    state = _strip_prefix(state)
    model = GPT2(config)
    expected = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise NolaError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected:
        raise NolaError(f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    converted = {}
    for key, target in expected.items():
        value = state[key]
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()
        if value.shape != target.shape:
            shown = tuple(value.t().shape) if key.endswith(CONV1D_SUFFIXES) else tuple(value.shape)
            raise NolaError(
                f"{path}: key {key!r} has shape {shown}, but the config implies "
                f"{tuple(target.t().shape) if key.endswith(CONV1D_SUFFIXES) else tuple(target.shape)}"
            )
        converted["transformer." + key] = value.to(target.dtype).contiguous()
    if tied_head is not None and not torch.equal(tied_head.to(converted["transformer.wte.weight"].dtype), converted["transformer.wte.weight"]):
        raise NolaError(f"{path}: lm_head.weight differs from wte.weight; GPT-2 ties them")
    model.load_state_dict(converted, strict=False)
    return model


def to_hf_state_dict(model: GPT2) -> dict[str, torch.Tensor]:
    """The model's weights in HF's GPT2LMHeadModel layout (Conv1D in × out), without the tied head."""
    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        value = value.detach()
        out[key] = (value.t() if key.endswith(CONV1D_SUFFIXES) else value).contiguous().clone()
    return out


def base_fingerprint(model: GPT2) -> str:
    """A stable hash of the base weights: architecture + a strided sample of every tensor.

    Adapters record it and refuse to load onto a different base. Sampling keeps it cheap at GPT-2 L
    sizes; any re-initialised or re-trained tensor changes it. Adapter-wrapped layers expose their
    base weight under the same name, so the fingerprint is taken of the frozen base only. Only the
    architecture enters (not dropout rates), and sampled values are rounded to bfloat16, so the
    same base run in float32, bfloat16 or with other dropout has the same fingerprint.
    """
    architecture = {f: getattr(model.config, f) for f in ARCHITECTURE_FIELDS}
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode())
    for key, value in sorted(base_state_items(model)):
        flat = value.detach().reshape(-1).to(torch.bfloat16).float().cpu()
        stride = max(1, flat.numel() // 4096)
        digest.update(key.encode())
        digest.update(flat[::stride].numpy().tobytes())
    return digest.hexdigest()[:16]


def base_state_items(model: GPT2):
    """(name, tensor) of the base model's weights under GPT-2's own names, whatever wraps its layers.

    The names are those of a plain GPT-2 of the same architecture; each is looked up by module path
    and attribute, so a wrapper that exposes `weight` and `bias` as the layer it wraps does (as the
    adapter layers do) is seen through without this module knowing of it.
    """
    with torch.device("meta"):
        names = [key for key in GPT2(model.config).state_dict() if key != "lm_head.weight"]
    for key in names:
        path, _, attribute = key.rpartition(".")
        yield key, getattr(model.get_submodule(path), attribute)
