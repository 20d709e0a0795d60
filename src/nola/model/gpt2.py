"""GPT-2 (Radford et al., 2019) as one small module: the same function as OpenAI's and HF's model.

Projections are plain `nn.Linear` (weight: out × in); HF/OpenAI checkpoints store Conv1D weights
(in × out), which `nola.model.loading` transposes explicitly. Attention runs through
`F.scaled_dot_product_attention`. Positions come from the attention mask, so left- and
right-padded batches give each row the result it gets alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nola.errors import NolaError
from nola.tokenizer import EOS_ID


@dataclass(frozen=True)
class GPT2Config:
    """Architecture hyper-parameters, named as in HF's `config.json`."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise NolaError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @classmethod
    def named(cls, name: str, **overrides) -> GPT2Config:
        """A published size (gpt2 … gpt2-xl) or a small one for tests and the mini reproduction."""
        if name not in NAMED_CONFIGS:
            raise NolaError(f"unknown GPT-2 config {name!r}; known: {', '.join(NAMED_CONFIGS)}")
        return cls(**{**NAMED_CONFIGS[name], **overrides})

    @classmethod
    def from_hf_dict(cls, hf: dict) -> GPT2Config:
        """Read the fields we use from an HF `config.json` dict.

        Options that change the function (another activation, inner width, attention scaling,
        cross-attention) are refused rather than ignored; other keys are ignored.
        """
        for key, allowed in HF_FIXED_OPTIONS.items():
            value = hf.get(key, allowed[0])
            if key == "n_inner" and value == 4 * hf.get("n_embd", cls.n_embd):
                continue
            if value not in allowed:
                raise NolaError(f"{key}={value!r} is not supported by this GPT-2 implementation (expects {allowed[0]!r})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in hf.items() if k in known})


HF_FIXED_OPTIONS: dict[str, tuple] = {  # HF GPT2Config options this model implements only one way
    "model_type": ("gpt2",),
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "n_inner": (None,),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
}


NAMED_CONFIGS: dict[str, dict] = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "mini": dict(n_embd=128, n_layer=4, n_head=4, n_positions=256),
}


class KVCache:
    """Preallocated keys/values of every layer: (layer, batch, head, max_len, head_dim)."""

    def __init__(self, config: GPT2Config, batch: int, max_len: int, device, dtype) -> None:
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        self._buffers = (self.keys, self.values)  # the storage self.keys/values are leading row slices of
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, H, T, hd) after the cached ones; return all of them."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise NolaError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    def reorder(self, index: torch.Tensor, *, drop_front: int = 0, capacity: int = 0) -> None:
        """Select/reorder batch rows (beam search keeps the parents of the surviving beams).

        The filled positions are gathered into a second buffer that is then swapped in, so a search
        does not fault in a fresh cache-sized tensor at every step (on CPU that costs several times
        the copy). Both buffers keep the largest row count seen; fewer rows use a leading slice.
        drop_front: leading positions no row uses any more, left out of the gather (the rest move
        to the front). capacity: positions the cache must hold from now on (grown if larger).
        """
        rows = index.shape[0]
        columns = max(capacity, self.max_len)
        spare = self._spare
        if spare is None or spare[0].shape[1] < rows or spare[0].shape[3] < columns:
            shape = (self.keys.shape[0], max(rows, 0 if spare is None else spare[0].shape[1]), self.keys.shape[2],
                     columns, self.keys.shape[4])
            spare = (self.keys.new_zeros(shape), self.values.new_zeros(shape))
        kept = self.length - drop_front
        keys, values = spare[0][:, :rows], spare[1][:, :rows]
        source = slice(drop_front, self.length)
        torch.index_select(self.keys[:, :, :, source], 1, index, out=keys[:, :, :, :kept])
        torch.index_select(self.values[:, :, :, source], 1, index, out=values[:, :, :, :kept])
        self._spare = self._buffers
        self._buffers = spare
        self.keys, self.values = keys, values
        self.length, self.max_len = kept, spare[0].shape[3]

    def joined(self, other: KVCache) -> tuple[int, KVCache]:
        """(shift, cache): this cache's rows, then `other`'s, right-aligned so both end at the same
        position; when `other` is the longer, this cache's positions move right by `shift`."""
        length = max(self.length, other.length)
        shift = length - self.length
        capacity = max(self.max_len + shift, length - other.length + other.max_len)
        rows = self.rows + other.rows
        shape = (self.keys.shape[0], rows, self.keys.shape[2], capacity, self.keys.shape[4])
        merged = KVCache.__new__(KVCache)
        merged.keys, merged.values = self.keys.new_zeros(shape), self.values.new_zeros(shape)
        for target, mine, theirs in ((merged.keys, self.keys, other.keys), (merged.values, self.values, other.values)):
            target[:, : self.rows, :, shift:length] = mine[:, :, :, : self.length]
            target[:, self.rows :, :, length - other.length : length] = theirs[:, :, :, : other.length]
        merged.max_len, merged.length = capacity, length
        merged._buffers, merged._spare = (merged.keys, merged.values), None
        return shift, merged


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q | k | v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, S, hd), S = cached + T
        dropout = self.attn_pdrop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class AdapterSettings(Protocol):
    """What the model knows of its injected adapters (`nola.adapters.config.AdapterConfig`)."""

    kind: str


class RowAdapters(Protocol):
    """A bank of many adapters on this model that routes every row of a batch to its own adapter
    (`nola.adapters.bank.AdapterBank`): `resolve(name)` → the version a request keeps, `routes`
    (the batch's per-row adapters) is installed around each forward by the beam search."""

    routes: Callable

    def resolve(self, name: str) -> object: ...


class GPT2(nn.Module):
    """GPT-2 language model with tied input/output embeddings.

    `forward(input_ids)` → logits (B, T, vocab). With `attention_mask` (B, S), S = cached + T,
    True marking real tokens, padded rows compute exactly what they compute alone.
    `only_last` keeps the last position (B, 1, vocab); `output_mask` (B, T) bool keeps the selected
    positions (N, vocab), so training pays the vocabulary projection only where the loss is taken;
    `hidden_only` returns the final layer-normed hidden states instead of logits (a fused loss
    applies `lm_head` itself).

    The adapter hooks, declared here and set only by `nola.adapters`: `adapter_config` is the
    configuration of the injected adapters (`inject_adapters`; None: the bare base), `adapter_bank`
    the bank of many adapters wrapped around the base (`AdapterBank`; None: none).
    """

    adapter_config: AdapterSettings | None
    adapter_bank: RowAdapters | None

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        self.gradient_checkpointing = False
        self.adapter_config = None
        self.adapter_bank = None

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        weight = self.transformer.wte.weight
        return KVCache(self.config, batch, max_len, weight.device, weight.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        only_last: bool = False,
        output_mask: torch.Tensor | None = None,
        hidden_only: bool = False,
    ) -> torch.Tensor:
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise NolaError(f"sequence of {past + T} tokens exceeds the context window ({self.config.n_positions})")
        positions, mask = self._positions_and_mask(input_ids, attention_mask, past)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(positions))
        for layer, block in enumerate(self.transformer.h):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, mask, cache, layer, use_reentrant=False)
            else:
                x = block(x, mask, cache, layer)
        if cache is not None:
            cache.length = past + T
        if only_last:
            x = x[:, -1:]
        elif output_mask is not None:
            x = x[output_mask]  # (N, C): only the positions a loss needs reach the vocabulary projection
        x = self.transformer.ln_f(x)
        return x if hidden_only else self.lm_head(x)

    @staticmethod
    def _positions_and_mask(input_ids, attention_mask, past: int):
        """Absolute positions (B, T) and a boolean SDPA mask (B, 1, T, S), or None for plain causal."""
        B, T = input_ids.shape
        device = input_ids.device
        if attention_mask is None:
            positions = torch.arange(past, past + T, device=device).expand(B, T)
            if past == 0:
                return positions, None
            return positions, torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)
        attention_mask = attention_mask.to(torch.bool)
        S = attention_mask.shape[1]
        if S != past + T:
            raise NolaError(f"attention_mask covers {S} positions; expected cached {past} + new {T}")
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(past)
        mask = causal & attention_mask[:, None, :]  # (B, T, S)
        # A padding query may see no real key at all; let every query see itself so no row is empty.
        mask[:, torch.arange(T, device=device), torch.arange(past, S, device=device)] = True
        return positions, mask[:, None]


def hf_config_dict(config: GPT2Config) -> dict:
    """An HF `config.json` for this architecture (what transformers needs to rebuild it)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_ctx": config.n_positions,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "initializer_range": 0.02,
        **{f: getattr(config, f) for f in GPT2Config.__dataclass_fields__},
    }


def init_gpt2(config: GPT2Config, seed: int = 0) -> GPT2:
    """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/√(2·n_layer)."""
    generator = torch.Generator().manual_seed(seed)
    model = GPT2(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, param in model.named_parameters():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            nn.init.ones_(param)
        elif name.endswith(".bias"):
            nn.init.zeros_(param)
        else:
            std = residual_std if name.endswith("c_proj.weight") else 0.02
            with torch.no_grad():
                param.normal_(0.0, std, generator=generator)
    return model
