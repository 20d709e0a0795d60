"""Section 4 (CUDA only): GPT-2 M and L training steps in bf16, and the projected paper run.

Random-weight GPT-2 Medium and Large (the papers' models; weights do not change the cost) train
LoRA and NOLA on the q/v projections with the papers' recipes (UCDvision/NOLA and microsoft/LoRA GPT-2 scripts): GPT-2 M one batch
of 8 sequences per step (NOLA: 512 bases, α 8); GPT-2 L 16 sequences per step as 4 micro-batches
of 4 (NOLA: 256 bases, α 2). The model is float32 with bf16 autocast, as `train.precision=auto`
runs it on CUDA. Batches are E2E-like (`training.e2e_like_batch`). Each step is the project's
`train_step`; contenders alternate. The projection multiplies the median step time by the
optimizer steps of 5 epochs over E2E's 42,061 training examples (training only: no validation,
checkpoints or data loading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nola.adapters import AdapterConfig
from nola.machine import describe_machine, matmul_peak_flops
from nola.bench.timing import peak_memory, ratio, resident_tensors, summarize, time_alternating
from nola.bench.training import E2E_COMPLETION_LENGTHS, E2E_CONTEXT_LENGTHS, LORA, e2e_like_batch, ours, train_flops
from nola.model import GPT2Config

E2E_TRAIN_EXAMPLES = 42_061
PAPER_EPOCHS = 5
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (without sparsity), matched on the device
# name in this order; unknown devices get the measured matmul peak only.
NOMINAL_BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


@dataclass(frozen=True)
class GpuRecipe:
    """One paper configuration: model, NOLA's bases and α, sequences per step and micro-batches."""

    model: str
    num_basis: int
    nola_alpha: float
    batch_size: int
    grad_accum: int


RECIPES = (
    GpuRecipe("gpt2-medium", num_basis=512, nola_alpha=8.0, batch_size=8, grad_accum=1),
    GpuRecipe("gpt2-large", num_basis=256, nola_alpha=2.0, batch_size=16, grad_accum=4),
)


def nominal_peak(name: str) -> float | None:
    for marker, flops in NOMINAL_BF16_PEAKS:
        if marker in name:
            return flops
    return None


def run(*, repeats: int, warmup: int, recipes: tuple[GpuRecipe, ...] = RECIPES, matmul_size: int = 8192) -> dict:
    """Measure every recipe on the current CUDA device, or say why the section was skipped."""
    if not torch.cuda.is_available():
        return {"skipped": "no GPU (torch.cuda.is_available() is False)"}
    device = torch.device("cuda")
    machine = describe_machine(device)
    peak = matmul_peak_flops(device, torch.bfloat16, size=matmul_size, repeats=5, products_per_sample=10)
    nominal = nominal_peak(machine["device_name"])
    results = [_run_recipe(recipe, device, repeats=repeats, warmup=warmup, peak=peak["peak_flops"], nominal=nominal)
               for recipe in recipes]
    return {"machine": machine, "matmul_peak": peak, "nominal_bf16_peak_flops": nominal, "autocast": "bfloat16",
            "models": results}


def _run_recipe(recipe: GpuRecipe, device: torch.device, *, repeats: int, warmup: int, peak: float,
                nominal: float | None) -> dict:
    config = GPT2Config.named(recipe.model)
    copies = math.ceil(recipe.batch_size / len(E2E_CONTEXT_LENGTHS))
    batch = e2e_like_batch(
        config.vocab_size, seed=0,
        context_lengths=(E2E_CONTEXT_LENGTHS * copies)[: recipe.batch_size],
        completion_lengths=(E2E_COMPLETION_LENGTHS * copies)[: recipe.batch_size],
    )
    micro_batches = list(batch.split(recipe.grad_accum))
    nola = AdapterConfig(kind="nola", rank=8, alpha=recipe.nola_alpha, targets=["q", "v"], modules=["c_attn"],
                         num_basis_a=recipe.num_basis, num_basis_b=recipe.num_basis)
    trainers = {
        name: ours(config, adapter, micro_batches, device=device, amp_dtype=torch.bfloat16)
        for name, adapter in (("lora", LORA), ("nola", nola))
    }
    samples = time_alternating({name: t.step for name, t in trainers.items()}, repeats=repeats, warmup=warmup,
                               device=device, desc=f"gpu {recipe.model}")
    lengths = batch.attention_mask.sum(dim=1).tolist()
    flops = train_flops(config, lengths, int(batch.loss_mask.sum()))
    steps = PAPER_EPOCHS * math.ceil(E2E_TRAIN_EXAMPLES / recipe.batch_size)
    rows = {}
    for name, trainer in trainers.items():
        timing = summarize(samples[name])
        memory = peak_memory(trainer.step, resident_tensors([trainer.model], trainer.optimizer), device)
        achieved = flops / timing["median_s"]
        rows[name] = {
            **timing,
            "tokens_per_s": sum(lengths) / timing["median_s"],
            "model_flops_per_s": achieved,
            "mfu_measured_peak": achieved / peak,
            "mfu_nominal_peak": achieved / nominal if nominal else None,
            **memory.to_dict(),
            "projected_paper_run_s": steps * timing["median_s"],
        }
    return {
        "model": recipe.model,
        "batch_size": recipe.batch_size,
        "grad_accum": recipe.grad_accum,
        "tokens_per_step": sum(lengths),
        "flops_per_step": flops,
        "paper_run_steps": steps,
        "contenders": rows,
        "nola_over_lora_time": ratio(rows["nola"]["median_s"], rows["lora"]["median_s"]),
    }
