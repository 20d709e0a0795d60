"""Pieces of the reference code written out plainly, shared by the training tests: microsoft/LoRA
`examples/NLG/src/data_utils.py` (FT_Dataset's index logic and one row's input, target and mask)
and `model.py` (GPT2LMModel.forward's label-smoothed loss over mask.sum() + 1e-4)."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset


class FTDatasetIndices(Dataset):
    """FT_Dataset's length and __getitem__ index logic (the example index it reads)."""

    def __init__(self, num_examples: int, batch_size: int) -> None:
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.num_batches = int((num_examples + batch_size - 1) / batch_size)
        self.rng = random.Random(911)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __getitem__(self, item: int) -> int:
        if item >= self.num_examples:
            item = self.rng.randint(0, self.num_examples - 1)
        return item


def lora_row(context: list[int], completion: list[int], seq_len: int):
    """FT_Dataset.__getitem__ (no prefix/infix): input, target and mask of one row."""

    def padding_tokens(tokens, max_len, pad):
        kept = tokens[:max_len]
        return kept + [pad] * (max_len - len(kept)), len(kept)

    _input, input_len = padding_tokens(context + completion, seq_len, 0)
    _target, _ = padding_tokens((context + completion)[1:], seq_len, 0)
    mask = [0.0] * (len(context) - 1) + [1.0] * (input_len - len(context))
    mask, _ = padding_tokens(mask, seq_len, 0.0)
    return _input, _target, mask


def lora_micro_batch_loss(logits, targets, mask, label_smooth):
    """model.py GPT2LMModel.forward's loss (float64)."""
    logprobs = torch.log_softmax(logits.double().reshape(-1, logits.shape[-1]), dim=-1)
    nll = -logprobs.gather(-1, targets.reshape(-1, 1)).squeeze(1)
    smooth = -logprobs.mean(dim=-1)
    loss = ((1.0 - label_smooth) * nll + label_smooth * smooth).reshape(targets.shape) * mask.double()
    return loss.sum() / (mask.double().sum() + 0.0001)
