"""Schema of the Hydra `train` group: the optimisation recipe.

Defaults follow the NOLA paper's GPT-2 M E2E script (Koohpayegani et al., ICLR 2024,
UCDvision/NOLA `gpt/examples/NLG/scripts/finetune_gpt2m_e2e_qv_nola.sh`), which passes
microsoft/LoRA's `gpt2_ft.py` flags (Hu et al., ICLR 2022, Table 11): LoRA's AdamW with
β = (0.9, 0.999), ε = 1e-6, bias correction, weight decay 0, batch 8, 5 epochs, linear warmup of
500 steps then linear decay to 0, label smoothing 0.1, no clipping (`--clip 0.0`), seed 110,
float32. conf/train/*.yaml hold the other recipes with their sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from nola.errors import NolaError

from nola.training.optim import OPTIMIZERS

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
LOSS_NORMALIZATIONS = ("batch_mean", "step_token_mean")
EPOCH_SELECTIONS = ("valid_loss", "valid_bleu", "last")


@dataclass
class TrainConfig:
    """One training recipe.

    batch_size: sequences per optimizer step, summed over processes and accumulation steps; each
        process runs micro-batches of batch_size / (world_size * grad_accum) sequences.
    warmup_steps: micro-batches of linear warmup from 0 to `lr`, then linear decay to 0 at the end
        of `epochs` (LoRA `--scheduler linear --warmup_step`, which gpt2_ft.py counts in
        micro-batches; equal to optimizer steps when grad_accum is 1). See `nola.training.optim`.
    optimizer: lora_adamw (microsoft/LoRA's AdamW, the papers' optimizer) or adamw (torch's).
    loss_normalization: batch_mean = LoRA's loss: each micro-batch's token mean,
        sum / (completion tokens + 1e-4), divided by grad_accum (with several processes the token
        count is the whole micro-batch's, so the update equals one process's);
        step_token_mean = one token mean over the whole optimizer step (all micro-batches and
        processes), so the gradient does not depend on how the global batch is split.
    label_smoothing: ε of LoRA's loss (1 - ε)·nll + ε·mean over the vocabulary of -log p.
    loss_chunk_tokens: 0 = the output layer's logits for every completion token at once, then the
        loss (the papers' computation); N > 0 = output layer and loss fused, N tokens at a time,
        never holding all tokens × vocabulary logits (`nola.training.loss.chunked_linear_loss_sum`:
        equal up to float rounding, much less memory).
    max_grad_norm: clip the adapter gradients' global norm (0: no clipping).
    precision: fp32 (the papers'; TF32 off on CUDA), bf16 autocast (a speed option; CPU too where
        it is native), fp16 autocast with a gradient scaler (CUDA only), auto = bf16 on CUDA when
        supported, else fp16 there, fp32 on CPU.
    base_dropout: dropout inside GPT-2 while training (LoRA's model has none; HF's has 0.1).
    max_steps: stop after this many optimizer steps (the schedule still spans `epochs`, so a stopped
        run continues exactly when rerun without it).
    max_time_s: stop (with a checkpoint) after this much wall time in this invocation.
    save_every: optimizer steps between checkpoints; one is also written at each epoch end and
        when the run stops early.
    keep_last: checkpoints kept (older ones are deleted once a newer one is complete).
    save_epoch_adapters: write the adapter at the end of every epoch to epochs/epoch-<n>/ (a few KB
        for LoRA and NOLA), the candidates of `select_epoch`.
    select_epoch: which epoch's adapter `nola.run` decodes and scores on the test split, as the
        papers report each run at its best epoch (Hu et al., 2022, Appendix D.3): valid_loss = the
        lowest validation loss (token mean), valid_bleu = the highest BLEU of the validation split
        decoded with the paper's search, last = the final adapter.
    valid_batch_size: sequences per validation batch per process (LoRA `--valid_batch_size 4`).
    device: auto = this process's CUDA device when there is one, else cpu.
    dist_timeout_s: how long data-parallel processes wait for each other (forming the group, every
        collective) before the run stops with an error.
    resume: continue from the run directory's last checkpoint when there is one.
    """

    epochs: int = 5
    lr: float = 5e-3
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 500
    optimizer: str = "lora_adamw"
    loss_normalization: str = "batch_mean"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    label_smoothing: float = 0.1
    loss_chunk_tokens: int = 0
    max_grad_norm: float = 0.0
    precision: str = "fp32"
    base_dropout: float = 0.0
    seed: int = 110
    max_steps: int = 0
    max_time_s: float = 0.0
    log_every: int = 20
    save_every: int = 1000
    keep_last: int = 2
    save_epoch_adapters: bool = True
    select_epoch: str = "valid_loss"
    eval_every_epoch: bool = True
    valid_batch_size: int = 4
    device: str = "auto"
    dist_timeout_s: float = 300.0
    resume: bool = True

    def __post_init__(self) -> None:
        check_train_config(self)


def check_train_config(train, world_size: int = 1) -> int:
    """Validate the recipe for `world_size` processes; return the per-process micro-batch size."""
    positive = ("epochs", "batch_size", "grad_accum", "log_every", "save_every", "keep_last", "valid_batch_size")
    for key in positive:
        if getattr(train, key) < 1:
            raise NolaError(f"train.{key}={getattr(train, key)} must be at least 1")
    if not 0 <= train.seed < 2**63:
        raise NolaError(f"train.seed={train.seed} must be a non-negative integer below 2**63")
    if train.dist_timeout_s <= 0:
        raise NolaError(f"train.dist_timeout_s={train.dist_timeout_s} must be positive")
    for key in ("lr", "warmup_steps", "weight_decay", "adam_eps", "max_grad_norm", "max_steps", "max_time_s",
                "loss_chunk_tokens"):
        if getattr(train, key) < 0:
            raise NolaError(f"train.{key}={getattr(train, key)} must not be negative")
    for key in ("adam_beta1", "adam_beta2", "label_smoothing", "base_dropout"):
        if not 0.0 <= getattr(train, key) < 1.0:
            raise NolaError(f"train.{key}={getattr(train, key)} must be in [0, 1)")
    if train.optimizer not in OPTIMIZERS:
        raise NolaError(f"train.optimizer={train.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if train.loss_normalization not in LOSS_NORMALIZATIONS:
        raise NolaError(
            f"train.loss_normalization={train.loss_normalization!r}; choose one of {', '.join(LOSS_NORMALIZATIONS)}"
        )
    if train.select_epoch not in EPOCH_SELECTIONS:
        raise NolaError(f"train.select_epoch={train.select_epoch!r}; choose one of {', '.join(EPOCH_SELECTIONS)}")
    if train.select_epoch != "last" and not train.save_epoch_adapters:
        raise NolaError(f"train.select_epoch={train.select_epoch} chooses among the per-epoch adapters; set "
                        "train.save_epoch_adapters=true or train.select_epoch=last")
    if train.select_epoch == "valid_loss" and not train.eval_every_epoch:
        raise NolaError("train.select_epoch=valid_loss needs the validation loss of every epoch; set "
                        "train.eval_every_epoch=true, or choose train.select_epoch=valid_bleu or last")
    if train.precision not in PRECISIONS:
        raise NolaError(f"train.precision={train.precision!r}; choose one of {', '.join(PRECISIONS)}")
    per_step = world_size * train.grad_accum
    if train.batch_size % per_step:
        raise NolaError(
            f"train.batch_size={train.batch_size} is not divisible by {world_size} processes x "
            f"train.grad_accum={train.grad_accum}; the global batch must split into equal micro-batches"
        )
    return train.batch_size // per_step
