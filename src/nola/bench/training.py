"""Section 2: training throughput and peak memory of our GPT-2 against transformers + peft.

One GPT-2 configuration that a CPU can train: GPT-2 small's width (768, 12 heads), 4 layers, the
full 50,257-token vocabulary. The same batch of E2E-like sequences goes to every contender:

- `ours_lora`: our model, LoRA rank 4, α 32, dropout 0.1 on q and v (conf/adapter/lora.yaml);
- `ours_nola`: our model, NOLA rank 8, α 8, 512 bases on q and v (conf/adapter/nola.yaml);
- `hf_peft_lora`: transformers `GPT2LMHeadModel` with peft LoRA rank 4, α 32, dropout 0.1 on the
  fused `c_attn` (`fan_in_fan_out=True`, HF's Conv1D). peft cannot adapt only the q and v slices
  of a fused projection (its old `enable_lora` is gone), so it adapts q, k and v with one shared
  rank-4 A; that is the same trainable count per layer (4·768 + 2304·4 = 12,288) as rank 4 on q and
  v separately (2·(4·768 + 768·4)), and the low-rank path is < 1% of a step either way.

Our contenders run the project's own optimizer step (`nola.training.loop.train_step`: loss,
backward, gradient norm, finiteness check, AdamW, schedule). The HF contender gets the padded
batch's attention mask, as its documentation asks, and the same loss function
(`masked_token_loss_sum`: label smoothing 0.1 on completion tokens only), so the comparison is of
the models and adapters, not of the losses. Base dropout is 0 in both (microsoft/LoRA's GPT-2 has
none). The same weights are loaded into both models; the section checks their logits agree.

Throughput counts real (unpadded) tokens. FLOP utilisation divides the model FLOPs of a step by
its time and by the machine's float32 matmul peak (the best of two measurements, just before and
just after the timed steps, so a busy spell cannot lower it); the base is frozen, so its backward
computes activation gradients only (see `train_flops`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nola.adapters import AdapterConfig, adapter_params, inject_adapters
from nola.machine import matmul_peak_flops
from nola.bench.timing import peak_memory, ratio, resident_tensors, summarize, time_alternating
from nola.build import set_base_dropout
from nola.data import Batch
from nola.errors import NolaError
from nola.model import GPT2, GPT2Config, init_gpt2, to_hf_state_dict
from nola.model import hf_config_dict
from nola.training.config import TrainConfig
from nola.runtime import DistContext
from nola.tokenizer import EOS_ID
from nola.training.loop import Update, train_step
from nola.training.loss import masked_token_loss_sum
from nola.training.optim import Schedule, build_optimizer

# A length-bucketed batch of 8 around E2E's medians, measured on the E2E train split with GPT-2's
# BPE: context 28 tokens (with its bos), completion 25 (with its eos), input length 52.
E2E_CONTEXT_LENGTHS = (24, 25, 26, 27, 28, 29, 30, 32)
E2E_COMPLETION_LENGTHS = (22, 23, 24, 25, 25, 26, 27, 28)
CPU_CONFIG = GPT2Config(n_embd=768, n_layer=4, n_head=12)
LORA = AdapterConfig(kind="lora", rank=4, alpha=32.0, dropout=0.1, targets=["q", "v"], modules=["c_attn"])
NOLA = AdapterConfig(kind="nola", rank=8, alpha=8.0, dropout=0.0, targets=["q", "v"], modules=["c_attn"],
                     num_basis_a=512, num_basis_b=512)
LABEL_SMOOTHING = 0.1  # LoRA/NOLA GPT-2 recipes (UCDvision/NOLA and microsoft/LoRA GPT-2 scripts)
PAD_ID = 0


def e2e_like_batch(
    vocab_size: int, *, seed: int, context_lengths=E2E_CONTEXT_LENGTHS, completion_lengths=E2E_COMPLETION_LENGTHS
) -> Batch:
    """Random token ids laid out as the data stage lays out E2E rows (`nola.data.batching`'s batch contract)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for context, completion in zip(context_lengths, completion_lengths):
        tokens = torch.randint(0, vocab_size - 1, (context + completion,), generator=generator)
        tokens[context - 1] = EOS_ID
        tokens[-1] = EOS_ID
        rows.append((tokens, context))
    width = max(len(tokens) for tokens, _ in rows) - 1
    shape = (len(rows), width)
    input_ids = torch.full(shape, PAD_ID, dtype=torch.long)
    targets = torch.full(shape, PAD_ID, dtype=torch.long)
    loss_mask = torch.zeros(shape)
    attention_mask = torch.zeros(shape, dtype=torch.bool)
    for row, (tokens, context) in enumerate(rows):
        length = len(tokens) - 1
        input_ids[row, :length] = tokens[:-1]
        targets[row, :length] = tokens[1:]
        loss_mask[row, context - 1 : length] = 1.0
        attention_mask[row, :length] = True
    return Batch(input_ids, targets, loss_mask, attention_mask, torch.arange(len(rows)))


def train_flops(config: GPT2Config, lengths: list[int], loss_tokens: int) -> float:
    """Model FLOPs of one adapter-training step: the work the loss needs, on unpadded tokens.

    Per token, the forward's weight matmuls cost 2·12·d² per layer (q, k, v, out: 4d²; MLP: 8d²);
    causal attention costs 2·2·d per visible key per layer; the tied head costs 2·d·V, needed only
    at the `loss_tokens` positions whose logits enter the loss (logits computed anywhere else are
    overhead, not model FLOPs). With frozen weights the backward computes activation gradients
    only: as much as the forward for the matmuls, twice the forward for attention (dQ, dK, dV).
    Adapters, layer norms and the softmax are left out (the usual convention).
    """
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    weight_matmuls = sum(lengths) * 2 * 12 * d * d * layers + loss_tokens * 2 * d * vocab
    attention = sum(layers * 4 * d * length * (length + 1) // 2 for length in lengths)
    return 2.0 * weight_matmuls + 3.0 * attention


@dataclass
class Trainer:
    """One contender: its model, optimizer and a `step()` on the fixed batch."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], None]


def ours(config: GPT2Config, adapter: AdapterConfig, micro_batches: list[Batch], *, device: torch.device,
         amp_dtype: torch.dtype | None = None, seed: int = 0, chunk_tokens: int = 0) -> Trainer:
    """Our GPT-2 with `adapter`, one optimizer step over `micro_batches` by the project's `train_step`
    (`chunk_tokens`: train.loss_chunk_tokens, 0 = full logits)."""
    model = init_gpt2(config, seed).to(device)
    set_base_dropout(model, 0.0)
    inject_adapters(model, adapter)
    model.train()
    trainable = adapter_params(model)
    recipe = TrainConfig(lr=5e-3, warmup_steps=0, label_smoothing=LABEL_SMOOTHING, loss_chunk_tokens=chunk_tokens)
    optimizer = build_optimizer(list(trainable.values()), recipe)
    update = Update(model, list(trainable.values()), optimizer, Schedule(recipe.lr, 0, 10**9, 1), recipe,
                    DistContext(rank=0, world_size=1, local_rank=0, device=device), amp_dtype)
    micro_batches = [batch.to(device) for batch in micro_batches]

    def step() -> None:
        train_step(update, micro_batches, False, 0)

    return Trainer(model, optimizer, step)


def hf_peft(base: GPT2, batch: Batch, *, device: torch.device) -> Trainer:
    """transformers GPT2LMHeadModel with the weights of `base` (no adapters) and peft LoRA on c_attn."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    hf_config = HFConfig(**{**hf_config_dict(base.config), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    model = GPT2LMHeadModel(hf_config)
    incompatible = model.load_state_dict(to_hf_state_dict(base), strict=False)
    if incompatible.unexpected_keys or set(incompatible.missing_keys) != {"lm_head.weight"}:
        raise NolaError(f"transformers GPT-2 did not take our weights: {incompatible}")
    lora = LoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout, target_modules=["c_attn"],
                      fan_in_fan_out=True)
    model = get_peft_model(model, lora).to(device).train()
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = build_optimizer(params, TrainConfig(lr=5e-3))
    batch = batch.to(device)
    denominator = float(batch.loss_mask.sum())

    def step() -> None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = masked_token_loss_sum(logits, batch.targets, batch.loss_mask, LABEL_SMOOTHING) / denominator
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Trainer(model, optimizer, step)


def hf_available() -> str | None:
    """None when transformers and peft import, else why not (the HF contender is then skipped)."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        return f"skipped: {err.name} is not installed (pip install -e '.[bench]')"
    return None


def max_logit_difference(ours_model: GPT2, hf_model: torch.nn.Module, batch: Batch) -> float:
    """Both models hold the same weights and zero-initialised adapters: their logits must agree."""
    for model in (ours_model, hf_model):
        model.eval()
    with torch.no_grad():
        mine = ours_model(batch.input_ids, batch.attention_mask)
        theirs = hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for model in (ours_model, hf_model):
        model.train()
    real = batch.attention_mask
    return float((mine[real] - theirs[real]).abs().max())


def profile_step(step, *, top: int) -> list[dict]:
    """Where one step's time goes: the operators with the most self time, and their share."""
    from torch.profiler import profile

    with profile() as prof:
        step()
    events = [event for event in prof.key_averages() if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)
    events.sort(key=lambda event: event.self_cpu_time_total, reverse=True)
    return [
        {"op": event.key, "self_s": event.self_cpu_time_total / 1e6, "share": event.self_cpu_time_total / total,
         "calls": event.count}
        for event in events[:top]
    ]


def run(*, repeats: int, warmup: int, config: GPT2Config = CPU_CONFIG, matmul_size: int = 1536,
        matmul_repeats: int = 10, profile_top: int = 10, device: torch.device = torch.device("cpu"),
        output_layer: dict | None = None) -> dict:
    """Measure the contenders (see the module docstring) and our FLOP utilisation, then the output
    layer's two computations (`bench_output_layer`, with `output_layer`'s arguments; at most 3
    timed rounds of its long GPT-2 M-shaped steps)."""
    batch = e2e_like_batch(config.vocab_size, seed=0)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    trainers = {name: ours(config, adapter, [batch], device=device)
                for name, adapter in (("ours_lora", LORA), ("ours_nola", NOLA))}
    hf_skip = hf_available()
    checks = {}
    if hf_skip is None:
        trainers["hf_peft_lora"] = hf_peft(init_gpt2(config, 0), batch, device=device)
        checks["max_abs_logit_difference_ours_vs_hf"] = max_logit_difference(
            trainers["ours_lora"].model, trainers["hf_peft_lora"].model, batch.to(device)
        )
    before = matmul_peak_flops(device, torch.float32, size=matmul_size, repeats=matmul_repeats)
    samples = time_alternating({name: t.step for name, t in trainers.items()}, repeats=repeats, warmup=warmup,
                               device=device, desc="training step")
    after = matmul_peak_flops(device, torch.float32, size=matmul_size, repeats=matmul_repeats)
    peak = max(before, after, key=lambda measured: measured["peak_flops"])  # the machine's best, either side
    flops = train_flops(config, lengths, int(batch.loss_mask.sum()))
    rows = {}
    for name, trainer in trainers.items():
        memory = peak_memory(trainer.step, resident_tensors([trainer.model], trainer.optimizer), device)
        timing = summarize(samples[name])
        rows[name] = {**timing, "tokens_per_s": sum(lengths) / timing["median_s"], **memory.to_dict()}
        if name.startswith("ours"):
            achieved = flops / timing["median_s"]
            rows[name].update(model_flops_per_s=achieved, flop_utilisation=achieved / peak["peak_flops"])
    result = {
        "config": {"n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
                   "vocab_size": config.vocab_size},
        "batch": {"sequences": len(lengths), "padded_length": batch.input_ids.shape[1], "tokens": sum(lengths),
                  "completion_tokens": int(batch.loss_mask.sum())},
        "device": device.type,
        "dtype": "float32",
        "flops_per_step": flops,
        "matmul_peak": peak,
        "contenders": rows,
        "checks": checks,
        "profile_ours_lora": profile_step(trainers["ours_lora"].step, top=profile_top),
    }
    if hf_skip is None:
        base = rows["hf_peft_lora"]
        result["ratios"] = {
            f"{name}_over_hf": {
                "tokens_per_s": ratio(rows[name]["tokens_per_s"], base["tokens_per_s"]),
                "peak_bytes": ratio(rows[name]["peak_bytes"], base["peak_bytes"]),
            }
            for name in ("ours_lora", "ours_nola")
        }
    else:
        result["hf_peft_lora"] = hf_skip
    result["output_layer"] = bench_output_layer(repeats=min(repeats, 3), warmup=min(warmup, 1), device=device,
                                                **(output_layer or {}))
    return result


# The output layer at the vocabulary floor (train.loss_chunk_tokens): GPT-2 M's width and heads with
# fewer layers (a CPU step), batch 8 × 512 tokens (context 256 + completion 256 each), so the
# 50,257-way head over 2,056 completion tokens is most of the step.
M_SHAPED = GPT2Config(n_embd=1024, n_layer=2, n_head=16)
M_CONTEXT, M_COMPLETION = (256,) * 8, (257,) * 8
CHUNK_TOKENS = 256
MINI_NOLA = AdapterConfig(kind="nola", rank=8, alpha=8.0, targets=["q", "v"], modules=["c_attn"], num_basis_a=32,
                          num_basis_b=32)  # conf/experiment/mini/nola_k32.yaml
FULL = AdapterConfig(kind="full")  # every weight trains: the mini's pretraining step


def _measure(trainers: dict[str, Trainer], batch: Batch, *, repeats: int, warmup: int, device: torch.device,
             desc: str) -> dict[str, dict]:
    samples = time_alternating({name: t.step for name, t in trainers.items()}, repeats=repeats, warmup=warmup,
                               device=device, desc=desc)
    tokens = int(batch.attention_mask.sum())
    rows = {}
    for name, trainer in trainers.items():
        timing = summarize(samples[name])
        memory = peak_memory(trainer.step, resident_tensors([trainer.model], trainer.optimizer), device)
        rows[name] = {**timing, "tokens_per_s": tokens / timing["median_s"], **memory.to_dict()}
    return rows


def bench_output_layer(*, repeats: int, warmup: int, config: GPT2Config = M_SHAPED, mini: GPT2Config | None = None,
                       context_lengths=M_CONTEXT, completion_lengths=M_COMPLETION, chunk_tokens: int = CHUNK_TOKENS,
                       device: torch.device = torch.device("cpu")) -> dict:
    """The fused, chunked output layer + loss against the full-logit one, side by side in one run:
    a GPT-2 M-shaped step with LoRA and NOLA (and transformers + peft on the same shapes), and the
    mini's adaptation step in fp32 and bf16 where this CPU computes bf16 natively."""
    from nola.machine import native_bf16

    batch = e2e_like_batch(config.vocab_size, seed=0, context_lengths=context_lengths,
                           completion_lengths=completion_lengths)
    trainers = {f"{name}_{label}": ours(config, adapter, [batch], device=device, chunk_tokens=chunk)
                for name, adapter in (("lora", LORA), ("nola", NOLA)) for label, chunk in (("full", 0),
                                                                                          ("chunked", chunk_tokens))}
    if hf_available() is None:
        trainers["hf_peft_lora"] = hf_peft(init_gpt2(config, 0), batch, device=device)
    rows = _measure(trainers, batch, repeats=repeats, warmup=warmup, device=device, desc="output layer step")
    ratios = {name: {"tokens_per_s": ratio(rows[f"{name}_chunked"]["tokens_per_s"], rows[f"{name}_full"]["tokens_per_s"]),
                     "peak_bytes": ratio(rows[f"{name}_chunked"]["peak_bytes"], rows[f"{name}_full"]["peak_bytes"])}
              for name in ("lora", "nola")}
    if "hf_peft_lora" in rows:
        for name in ("lora", "nola"):
            for label in ("full", "chunked"):
                ratios[name][f"{label}_over_hf_tokens_per_s"] = ratio(rows[f"{name}_{label}"]["tokens_per_s"],
                                                                      rows["hf_peft_lora"]["tokens_per_s"])
    result = {"config": {"n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head},
              "batch": {"sequences": len(context_lengths), "padded_length": batch.input_ids.shape[1],
                        "completion_tokens": int(batch.loss_mask.sum())},
              "chunk_tokens": chunk_tokens, "contenders": rows, "chunked_over_full": ratios}
    mini = mini or GPT2Config.named("mini")
    if not native_bf16(device):
        result["bf16_mini"] = {"skipped": "this device has no native bfloat16"}
        return result
    small = e2e_like_batch(mini.vocab_size, seed=0)
    variants = {"fp32_full": (None, 0), "fp32_chunked": (None, chunk_tokens), "bf16_full": (torch.bfloat16, 0),
                "bf16_chunked": (torch.bfloat16, chunk_tokens)}
    mini_trainers = {name: ours(mini, MINI_NOLA, [small], device=device, amp_dtype=dtype, chunk_tokens=chunk)
                     for name, (dtype, chunk) in variants.items()}
    for name in ("fp32_full", "bf16_chunked"):  # the mini's pretraining: every weight trains
        dtype, chunk = variants[name]
        mini_trainers[f"pretrain_{name}"] = ours(mini, FULL, [small], device=device, amp_dtype=dtype,
                                                 chunk_tokens=chunk)
    mini_rows = _measure(mini_trainers, small, repeats=repeats * 4, warmup=warmup, device=device, desc="mini step")
    result["bf16_mini"] = {
        "config": {"n_embd": mini.n_embd, "n_layer": mini.n_layer, "n_head": mini.n_head}, "adapter": "nola k=l=32",
        "contenders": mini_rows,
        "bf16_chunked_over_fp32_full": ratio(mini_rows["bf16_chunked"]["tokens_per_s"],
                                             mini_rows["fp32_full"]["tokens_per_s"]),
        "bf16_chunked_over_fp32_chunked": ratio(mini_rows["bf16_chunked"]["tokens_per_s"],
                                                mini_rows["fp32_chunked"]["tokens_per_s"]),
        "bf16_full_over_fp32_full": ratio(mini_rows["bf16_full"]["tokens_per_s"], mini_rows["fp32_full"]["tokens_per_s"]),
        "pretrain_bf16_chunked_over_fp32_full": ratio(mini_rows["pretrain_bf16_chunked"]["tokens_per_s"],
                                                      mini_rows["pretrain_fp32_full"]["tokens_per_s"]),
    }
    return result
