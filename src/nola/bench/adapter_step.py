"""Section 1: one training step of GPT-2's adapted q/v projection, four ways.

At the q/v shapes of GPT-2 M (d = 1024, NOLA rank 8 with 512 bases, Koohpayegani et al., ICLR
2024, `finetune_gpt2m_e2e_qv_nola.sh`) and GPT-2 L (d = 1280, 256 bases, `..._gpt2l_...`), one step
is: the fused c_attn projection (frozen base plus adapters on q and v) forward on a batch of
tokens, backward (gradients of the coefficients and of the input, as inside a network), and an
AdamW update of the adapter. Contenders:

- `lora`: LoRA rank 4, α 32 (Hu et al., ICLR 2022, the GPT-2 E2E scripts), no dropout;
- `nola_cached`: our NOLA with its bases cached (the default);
- `nola_regenerated`: our NOLA regenerating the bases in forward and backward (saves memory);
- `nola_reference`: the reference algorithm (`nola.adapters.reference`): bases redrawn with
  `torch.manual_seed` + `uniform_` in every forward and every backward, on the same base weight.

The three NOLA contenders share seeds, offsets and coefficients, so they compute the same
function; the section records the largest output difference as a check.

Each step is timed in two scopes: `layer`, the whole adapted projection (what one layer of
training costs; the frozen base's matmuls dominate it), and `adapter_only`, the same adapters with
the base's matmuls left out (`OutputBuffer`), which isolates what each adapter algorithm adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nola.adapters import AdapterConfig, adapted_layers, inject_adapters
from nola.adapters.layers import AdaptedLinear, NolaSlot
from nola.adapters.reference import ReferenceNolaLinear
from nola.bench.timing import peak_memory, ratio, resident_tensors, summarize, time_alternating
from nola.model import GPT2Config, init_gpt2

LEARNING_RATE = 5e-3  # NOLA GPT-2 M recipe; the value does not change the cost of a step


@dataclass(frozen=True)
class AdapterShape:
    """One model's adapted projection: width, NOLA's bases, and how many layers the model has."""

    name: str
    n_embd: int
    n_head: int
    n_layer: int
    nola_rank: int
    nola_alpha: float
    num_basis: int


SHAPES = (
    AdapterShape("gpt2-medium", n_embd=1024, n_head=16, n_layer=24, nola_rank=8, nola_alpha=8.0, num_basis=512),
    AdapterShape("gpt2-large", n_embd=1280, n_head=20, n_layer=36, nola_rank=8, nola_alpha=2.0, num_basis=256),
)
LORA = AdapterConfig(kind="lora", rank=4, alpha=32.0, dropout=0.0, targets=["q", "v"], modules=["c_attn"])


class ReferenceQV(nn.Module):
    """The reference computation of an adapted c_attn: frozen base plus a `ReferenceNolaLinear` per slot."""

    def __init__(self, base_layer: nn.Module, rows: dict[str, tuple[int, int]], adapter: dict[str, nn.Module]) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rows = dict(rows)
        self.adapter = nn.ModuleDict(adapter)

    @classmethod
    def like(cls, layer: AdaptedLinear) -> ReferenceQV:
        """The reference twin of a NOLA layer: same base, seeds, offsets and coefficients."""
        slots = {name: ReferenceNolaLinear.like(slot, layer.scale) for name, slot in layer.adapter.items()}
        return cls(layer.base_layer, layer.rows, slots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for name, (start, stop) in self.rows.items():
            y[..., start:stop] += self.adapter[name](x)
        return y


def adapted_c_attn(shape: AdapterShape, config: AdapterConfig, *, device: torch.device, seed: int) -> AdaptedLinear:
    """The adapted c_attn of a one-block GPT-2 of this width (a tiny vocabulary keeps it small)."""
    model_config = GPT2Config(vocab_size=8, n_positions=8, n_embd=shape.n_embd, n_layer=1, n_head=shape.n_head)
    model = init_gpt2(model_config, seed).to(device)
    inject_adapters(model, config)
    (_, layer), *_ = adapted_layers(model)
    return layer


@dataclass
class Contender:
    """A module, its optimizer and one training step on a fixed input and output gradient."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    grad_output: torch.Tensor

    def step(self) -> None:
        self.module(self.inputs).backward(self.grad_output)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.inputs.grad = None


def build_contenders(shape: AdapterShape, *, batch: int, seq_len: int, device: torch.device) -> dict[str, Contender]:
    nola = AdapterConfig(
        kind="nola", rank=shape.nola_rank, alpha=shape.nola_alpha, targets=["q", "v"], modules=["c_attn"],
        num_basis_a=shape.num_basis, num_basis_b=shape.num_basis,
    )
    nola_regen = AdapterConfig(**{**nola.to_dict(), "cache_bases": False})
    modules: dict[str, nn.Module] = {
        "lora": adapted_c_attn(shape, LORA, device=device, seed=0),
        "nola_cached": adapted_c_attn(shape, nola, device=device, seed=0),
        "nola_regenerated": adapted_c_attn(shape, nola_regen, device=device, seed=0),
    }
    generator = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():  # non-zero coefficients, the same in every NOLA contender
        for name, param in modules["nola_cached"].adapter.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            modules["nola_regenerated"].adapter.get_parameter(name).copy_(param)
    modules["nola_reference"] = ReferenceQV.like(modules["nola_cached"])
    inputs = torch.randn(batch, seq_len, shape.n_embd, generator=generator).to(device).requires_grad_(True)
    grad_output = torch.randn(batch, seq_len, 3 * shape.n_embd, generator=generator).to(device)
    return {
        name: Contender(module, torch.optim.AdamW(_trainable(module), lr=LEARNING_RATE), inputs, grad_output)
        for name, module in modules.items()
    }


class OutputBuffer(nn.Module):
    """Stands in for the frozen base projection in the adapter-only step: the (…, out) output
    buffer the base would write, left unwritten, so only the adapters' own work is timed."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty(*x.shape[:-1], self.out_features)


def adapter_only(contenders: dict[str, Contender]) -> dict[str, Contender]:
    """The same adapters (same parameters and optimizers) without the frozen base matmuls."""
    swapped = {}
    for name, contender in contenders.items():
        module = contender.module
        buffer = OutputBuffer(module.base_layer.out_features)
        if isinstance(module, AdaptedLinear):
            stripped = AdaptedLinear(buffer, dict(module.adapter.items()), module.rows, rank=module.rank,
                                     scale=module.scale, dropout=0.0)
        else:
            stripped = ReferenceQV(buffer, module.rows, dict(module.adapter.items()))
        swapped[name] = Contender(stripped, contender.optimizer, contender.inputs, contender.grad_output)
    return swapped


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [param for param in module.parameters() if param.requires_grad]


def max_output_difference(contenders: dict[str, Contender], names: tuple[str, ...]) -> float:
    """Largest |y - y_first| over the given contenders' outputs (they compute one function)."""
    with torch.no_grad():
        outputs = [contenders[name].module(contenders[name].inputs) for name in names]
    return max(float((out - outputs[0]).abs().max()) for out in outputs[1:])


def cache_bytes(layer: AdaptedLinear) -> int:
    """Bytes of the frozen NOLA tensors a cached layer keeps: bases of A and B and the offset A0."""
    return sum(
        buffer.numel() * buffer.element_size()
        for slot in layer.adapter.values()
        if isinstance(slot, NolaSlot)
        for buffer in slot.buffers()
    )


def measure(contenders: dict[str, Contender], *, repeats: int, warmup: int, device: torch.device, desc: str) -> dict:
    """Median step time and peak memory of each contender, and the ratios the goals are about."""
    samples = time_alternating(
        {name: contender.step for name, contender in contenders.items()},
        repeats=repeats, warmup=warmup, device=device, desc=desc,
    )
    rows = {}
    for name, contender in contenders.items():
        memory = peak_memory(contender.step, resident_tensors([contender.module], contender.optimizer), device)
        rows[name] = {**summarize(samples[name]), **memory.to_dict()}
    median = {name: row["median_s"] for name, row in rows.items()}
    return {
        "contenders": rows,
        "ratios": {
            "nola_cached_over_lora": ratio(median["nola_cached"], median["lora"]),
            "nola_regenerated_over_lora": ratio(median["nola_regenerated"], median["lora"]),
            "reference_over_nola_cached": ratio(median["nola_reference"], median["nola_cached"]),
            "reference_over_nola_regenerated": ratio(median["nola_reference"], median["nola_regenerated"]),
        },
    }


def run(*, batch: int, seq_len: int, repeats: int, warmup: int, shapes: tuple[AdapterShape, ...] = SHAPES,
        device: torch.device = torch.device("cpu")) -> dict:
    """Measure every contender at every shape, with and without the frozen base; see the module docstring.

    `layer`: the whole adapted c_attn (frozen base matmuls included), what one layer of training
    costs. `adapter_only`: the same adapters with the base's matmuls left out, what the adapter adds.
    """
    results = []
    for shape in shapes:
        contenders = build_contenders(shape, batch=batch, seq_len=seq_len, device=device)
        difference = max_output_difference(contenders, ("nola_cached", "nola_regenerated", "nola_reference"))
        scopes = {"layer": contenders, "adapter_only": adapter_only(contenders)}
        layer_cache = cache_bytes(contenders["nola_cached"].module)
        results.append({
            "shape": shape.name,
            "n_embd": shape.n_embd,
            "nola_rank": shape.nola_rank,
            "num_basis": shape.num_basis,
            "lora_rank": LORA.rank,
            "tokens": batch * seq_len,
            "trainable": {name: sum(p.numel() for p in _trainable(c.module)) for name, c in contenders.items()},
            **{
                scope: measure(members, repeats=repeats, warmup=warmup, device=device, desc=f"{scope} {shape.name}")
                for scope, members in scopes.items()
            },
            "basis_cache_bytes_per_layer": layer_cache,
            "basis_cache_bytes_model": layer_cache * shape.n_layer,
            "n_layer": shape.n_layer,
            "max_abs_output_difference_nola_vs_reference": difference,
        })
    return {"batch": batch, "seq_len": seq_len, "device": device.type, "dtype": "float32", "shapes": results}
