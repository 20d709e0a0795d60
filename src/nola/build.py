"""The one way a model is built, for training and for decoding alike.

`build_model(cfg, for_training=..., device=...)` obtains the base weights (`cfg.model`), casts them
to `cfg.model.dtype`, fingerprints the frozen base, injects the adapters of `cfg.adapter`, and
optionally loads a saved adapter (strictly: a checkpoint for another base or another adapter
layout is refused). Training gets the adapter parameters trainable and everything else frozen;
decoding gets an eval-mode model with the adapters merged into the base weights.

Weights are obtained first (`resolve_weights`): when none can be had, the NolaError says how to
provide them and points to the offline `make mini` reproduction before any other work is done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nola.adapters import (
    adapted_layers,
    adapter_params,
    inject_adapters,
    load_adapter,
    merge_adapters,
)
from nola.adapters.config import AdapterConfig
from nola.errors import NolaError
from nola.model import (
    GPT2,
    NAMED_CONFIGS,
    GPT2Config,
    base_fingerprint,
    init_gpt2,
    load_gpt2,
)
from nola.model.config import ModelConfig
from nola.model.hub import HUB_MODELS, NO_WEIGHTS_HELP, fetch_hub_model
from nola.paths_config import PathsConfig
from nola.tokenizer import GPT2Tokenizer, load_tokenizer

RANDOM_SOURCE = "random"
RESOLVE: Any = object()  # build_model(weights=RESOLVE): find/download the weights itself
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BaseDropout(Protocol):
    """What a model build reads of the training section (`nola.training.config.TrainConfig`)."""

    base_dropout: float


class ModelSections(Protocol):
    """The typed sections a model is built from (`nola.config.Config` has them all): the base
    (`model`), its adapter (`adapter`), where weights and the vocabulary are (`paths`), and, for
    training, the base's dropout (`train.base_dropout`)."""

    model: ModelConfig
    adapter: AdapterConfig
    paths: PathsConfig
    train: BaseDropout


@dataclass
class BuiltModel:
    """A ready model and what belongs with it.

    trainable: the parameters the optimizer updates (`adapter_params`; empty when not training).
    merged: whether the adapters were folded into the base weights (decoding).
    """

    model: GPT2
    tokenizer: GPT2Tokenizer
    base_fingerprint: str
    device: torch.device
    trainable: dict[str, nn.Parameter] = field(default_factory=dict)
    merged: bool = False


def base_only(cfg: ModelSections) -> ModelSections:
    """`cfg` with no adapter of its own (`adapter.kind=none`): the base that a bank of many adapters,
    loaded afterwards, is built on (the server, mixed decoding)."""
    return dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, kind="none"))


def resolve_weights(model_cfg: ModelConfig, cache_dir: str | Path) -> Path | None:
    """Where the base weights are (None: random init), downloading a hub model if needed.

    Fails with a NolaError that says how to provide weights (and points to `make mini`) when the
    source is neither `random`, an existing path, nor a hub model that can be fetched.
    """
    source = str(model_cfg.source)
    if source == RANDOM_SOURCE:
        return None
    path = Path(source)
    if path.exists():
        return path
    if source in HUB_MODELS:
        return fetch_hub_model(source, cache_dir=Path(cache_dir) / "hub")
    raise NolaError(f"model.source={source!r}: no such file or directory, and not a hub model name. {NO_WEIGHTS_HELP}")


def build_model(
    cfg: ModelSections,
    *,
    for_training: bool,
    device: str | torch.device = "cpu",
    adapter_dir: str | Path | None = None,
    weights: Path | None = RESOLVE,
    tokenizer: GPT2Tokenizer | None = None,
) -> BuiltModel:
    """Build the base, inject `cfg.adapter`, optionally load `adapter_dir`; see the module docstring.

    weights: an already resolved `resolve_weights` result (None = random init); by default resolved here.
    tokenizer: reuse a loaded tokenizer instead of reading `cfg.paths.vocab_dir`.
    """
    if for_training and cfg.adapter.kind == "none":
        raise NolaError("adapter.kind='none' leaves nothing to train; choose adapter=lora, nola or full")
    if weights is RESOLVE:
        weights = resolve_weights(cfg.model, cfg.paths.cache_dir)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.paths.vocab_dir)
    model = _load_base(cfg.model, weights)
    dtype = _dtype(cfg.model.dtype)
    model.to(device=device, dtype=dtype)
    fingerprint = base_fingerprint(model)
    if for_training:
        set_base_dropout(model, cfg.train.base_dropout)
    inject_adapters(model, cfg.adapter)
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    trainable: dict[str, nn.Parameter] = {}
    merged = False
    if for_training:
        trainable = adapter_params(model)  # inject_adapters left exactly these trainable
        model.gradient_checkpointing = bool(cfg.model.gradient_checkpointing)
        model.train()
    else:
        model.requires_grad_(False)
        model.eval()
        if any(True for _ in adapted_layers(model)):
            merge_adapters(model)
            merged = True
    if tokenizer.vocab_size != model.config.vocab_size:
        raise NolaError(
            f"the vocabulary in {cfg.paths.vocab_dir} has {tokenizer.vocab_size} tokens but model "
            f"{cfg.model.name!r} has {model.config.vocab_size}; use GPT-2's encoder.json/vocab.bpe"
        )
    return BuiltModel(model, tokenizer, fingerprint, torch.device(device), trainable, merged)


def _load_base(model_cfg: ModelConfig, weights: Path | None) -> GPT2:
    if weights is None:
        return init_gpt2(GPT2Config.named(model_cfg.name), model_cfg.init_seed)
    model = load_gpt2(weights)
    expected = GPT2Config.named(model_cfg.name) if model_cfg.name in NAMED_CONFIGS else None
    if expected is not None and _shape(model.config) != _shape(expected):
        raise NolaError(
            f"model.source={str(model_cfg.source)!r} holds a {_describe(model.config)} model, but model.name="
            f"{model_cfg.name!r} is {_describe(expected)}; point model.source at {model_cfg.name} weights"
        )
    return model


def set_base_dropout(model: GPT2, probability: float) -> None:
    """Set every dropout of the (not yet adapted) base model to `probability`.

    microsoft/LoRA's GPT-2 (examples/NLG/src/model.py) has no dropout at all, so the LoRA and NOLA
    runs trained without it; HF's GPT-2, used for full fine-tuning by Li & Liang (2021), has 0.1.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
        if hasattr(module, "attn_pdrop"):
            module.attn_pdrop = probability


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise NolaError(f"model.dtype={name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _shape(config: GPT2Config) -> tuple[int, ...]:
    return (config.vocab_size, config.n_embd, config.n_layer, config.n_head)


def _describe(config: GPT2Config) -> str:
    return f"{config.n_layer}-layer, {config.n_embd}-wide"
