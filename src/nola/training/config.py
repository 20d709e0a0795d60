"""Schema of the Hydra `train` group: the optimisation recipe.

Defaults follow the NOLA paper's GPT-2 M E2E script (Koohpayegani et al., ICLR 2024, App. /
`gpt/` scripts, DESIGN.md §5) and microsoft/LoRA's `gpt2_ft.py` flags (Hu et al., 2022, Table 11):
AdamW with β = (0.9, 0.999), ε = 1e-6, weight decay 0, 5 epochs, linear warmup of 500 steps then
linear decay to 0, label smoothing 0.1, seed 110.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    epochs: int = 5
    lr: float = 5e-3
    batch_size: int = 8  # sequences per optimizer step, across all processes and accumulation
    grad_accum: int = 1
    warmup_steps: int = 500
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    label_smoothing: float = 0.1
    max_grad_norm: float = 0.0  # 0 disables clipping (LoRA's scripts pass --clip 0.0)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 / fp16
    seed: int = 110
    max_steps: int = 0  # > 0 stops after that many optimizer steps (smoke runs, budgets)
    max_time_s: float = 0.0  # > 0 stops after that much wall time (the mini reproduction's budget)
    log_every: int = 20
    save_every: int = 1000  # optimizer steps between checkpoints (also saved at each epoch end)
    keep_last: int = 2
    eval_every_epoch: bool = True
