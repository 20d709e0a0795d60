"""Schema of the Hydra `model` group: which GPT-2 and where its weights come from."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """The base model.

    name: architecture (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or the small `tiny`/`mini`).
    source: weights: a hub name, a Hugging Face directory, or LoRA's single-file
        `gpt2-medium-pytorch_model.bin`; `random` builds GPT-2's initialisation from `init_seed`
        (tests, benchmarks and the mini reproduction's pretraining).
    dtype: parameter dtype when loaded (float32; training autocasts per `train.precision`).
    """

    name: str = MISSING
    source: str = MISSING
    init_seed: int = 0
    dtype: str = "float32"
    gradient_checkpointing: bool = False
