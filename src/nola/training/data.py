"""The batches one training process sees: its rows of every global batch, and its validation share.

Training batches come from `nola.data.LengthBucketBatcher` with the configured global batch, so the
order of examples depends on (seed, epoch) only, never on the number of processes; each process
takes its contiguous rows of every global batch and cuts them into `grad_accum` micro-batches.
Validation uses the whole split exactly once (no filler rows), its batches dealt round-robin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from nola.data import Batch, LengthBucketBatcher, SequenceSet, build_sequences, collate, load_tokenized
from nola.data.config import LastBatch
from nola.tokenizer import GPT2Tokenizer
from nola.training.distributed import DistContext, barrier


@dataclass
class TrainingData:
    """train: the batcher of global batches; valid: this process's validation batches."""

    train: LengthBucketBatcher
    valid: list[Batch]
    grad_accum: int

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train)

    def epoch_rows(self, epoch: int) -> list[np.ndarray]:
        """This process's example indices for every optimizer step of `epoch` (0-based)."""
        return self.train.rank_batches(epoch)

    def micro_batches(self, rows: np.ndarray) -> tuple[Batch, ...]:
        """One optimizer step's rows, padded and cut into `grad_accum` micro-batches."""
        return collate(self.train.sequences, rows).split(self.grad_accum)


def load_training_data(cfg, tokenizer: GPT2Tokenizer, ctx: DistContext, max_len: int) -> TrainingData:
    """Tokenize (cached; rank 0 first) and batch the train and valid splits of `cfg.task`."""
    train_seqs = _sequences(cfg, tokenizer, ctx, "train", max_len)
    valid_seqs = _sequences(cfg, tokenizer, ctx, "valid", max_len)
    batcher = LengthBucketBatcher(
        train_seqs,
        cfg.train.batch_size,
        seed=cfg.train.seed,
        chunk_batches=cfg.task.bucket_chunk_batches,
        last_batch=cfg.task.last_batch,
        world_size=ctx.world_size,
        rank=ctx.rank,
    )
    return TrainingData(batcher, _validation_batches(valid_seqs, cfg.train.valid_batch_size, ctx), cfg.train.grad_accum)


def _sequences(cfg, tokenizer: GPT2Tokenizer, ctx: DistContext, split: str, max_len: int) -> SequenceSet:
    def tokenize():
        return load_tokenized(cfg.task.data_dir, cfg.task.name, split, tokenizer, progress=ctx.is_main)

    if ctx.is_main:
        tokenized = tokenize()
        barrier(ctx)
    else:
        barrier(ctx)
        tokenized = tokenize()
    sequences = build_sequences(tokenized, max_len, cfg.task.truncation)
    if ctx.is_main and (sequences.num_truncated or sequences.num_dropped):
        tqdm.write(
            f"{cfg.task.name}/{split}: {sequences.num_truncated} examples truncated and {sequences.num_dropped} "
            f"dropped at {max_len} tokens (task.max_seq_len / the model's context window)"
        )
    return sequences


def _validation_batches(sequences: SequenceSet, batch_size: int, ctx: DistContext) -> list[Batch]:
    batcher = LengthBucketBatcher(sequences, batch_size, seed=0, shuffle=False, last_batch=LastBatch.keep)
    mine = batcher.global_batches(0)[ctx.rank :: ctx.world_size]
    return [collate(sequences, rows) for rows in mine]
