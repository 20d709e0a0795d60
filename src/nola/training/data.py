"""The batches one training process sees: its rows of every micro-batch, and its validation share.

Training is a stream of micro-batches over the epochs; an optimizer step takes the next
`grad_accum` of them, as microsoft/LoRA's gpt2_ft.py does (it counts micro-batches and updates on
every `grad_acc`-th, so an update may span an epoch boundary). The composition is `task.batching`:
- lora: `ShuffledFillBatcher` with micro-batches of batch_size / grad_accum rows (LoRA's
  `--train_batch_size`), the order a function of (seed, epoch);
- bucketed: `LengthBucketBatcher` global batches of batch_size rows, each cut into grad_accum
  micro-batches.
Either way the order never depends on the number of processes: each process takes its contiguous
rows of every micro-batch. Validation uses LoRA's composition for lora (its valid loader: shuffled
with the run's seed, sampler epoch 0, filled to whole batches) and the whole split exactly once
for bucketed; its batches are dealt round-robin to the processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from nola.data import (
    Batch,
    LengthBucketBatcher,
    SequenceSet,
    build_sequences,
    collate,
    load_tokenized,
)
from nola.data.batching import ShuffledFillBatcher
from nola.data.config import Batching, LastBatch, TaskConfig
from nola.data.records import split_path
from nola.errors import NolaError
from nola.runtime import DistContext, main_process_first
from nola.tokenizer import GPT2Tokenizer
from nola.training.config import TrainConfig


@dataclass
class TrainingData:
    """The training micro-batch stream of this process, and its validation batches.

    sequences: the training split; valid: this process's validation batches; epoch_micro_rows(epoch)
    gives this process's example indices of every micro-batch of `epoch` (0-based).
    """

    sequences: SequenceSet
    micro_batches_per_epoch: int
    epoch_micro_rows: Callable[[int], list[np.ndarray]]
    valid: list[Batch]
    _cache: dict = field(default_factory=dict, repr=False)

    def micro_batch(self, index: int) -> Batch:
        """Micro-batch `index` of the stream (0-based, counted across epochs), collated."""
        epoch, position = divmod(index, self.micro_batches_per_epoch)
        if self._cache.get("epoch") != epoch:
            self._cache.update(epoch=epoch, rows=self.epoch_micro_rows(epoch))
        return collate(self.sequences, self._cache["rows"][position])


def load_training_data(train: TrainConfig, task: TaskConfig, tokenizer: GPT2Tokenizer, ctx: DistContext,
                       max_len: int) -> TrainingData:
    """Tokenize (cached; rank 0 first) and batch the train and valid splits of `task`."""
    train_seqs = _sequences(task, tokenizer, ctx, "train", max_len)
    valid_seqs = _sequences(task, tokenizer, ctx, "valid", max_len)
    accum = train.grad_accum
    sharding = dict(world_size=ctx.world_size, rank=ctx.rank)
    if Batching(task.batching) is Batching.lora:
        batcher = ShuffledFillBatcher(train_seqs, train.batch_size // accum, seed=train.seed, **sharding)
        micro_per_epoch, epoch_rows = len(batcher), batcher.rank_batches
        valid = ShuffledFillBatcher(valid_seqs, train.valid_batch_size, seed=train.seed, first_sampler_epoch=0)
    else:
        batcher = LengthBucketBatcher(train_seqs, train.batch_size, seed=train.seed,
                                      chunk_batches=task.bucket_chunk_batches, last_batch=task.last_batch, **sharding)
        micro_per_epoch = len(batcher) * accum

        def epoch_rows(epoch: int) -> list[np.ndarray]:
            return [part for rows in batcher.rank_batches(epoch) for part in np.array_split(rows, accum)]

        valid = LengthBucketBatcher(valid_seqs, train.valid_batch_size, seed=0, shuffle=False, last_batch=LastBatch.keep)
    mine = valid.global_batches(0)[ctx.rank :: ctx.world_size]
    return TrainingData(train_seqs, micro_per_epoch, epoch_rows, [collate(valid_seqs, rows) for rows in mine])


def _sequences(task: TaskConfig, tokenizer: GPT2Tokenizer, ctx: DistContext, split: str, max_len: int) -> SequenceSet:
    tokenized = main_process_first(
        ctx, lambda: load_tokenized(task.data_dir, task.name, split, tokenizer, progress=ctx.is_main)
    )
    sequences = build_sequences(tokenized, max_len, task.truncation)
    if len(sequences) == 0:
        path = split_path(task.data_dir, task.name, split)
        why = f"all {sequences.num_dropped} were dropped at {max_len} tokens" if sequences.num_dropped else "it is empty"
        raise NolaError(f"{path}: no {split} examples to train on ({why}); prepare the data again with `make data` "
                        "or check task.data_dir and task.truncation")
    if ctx.is_main and (sequences.num_truncated or sequences.num_dropped):
        tqdm.write(
            f"{task.name}/{split}: {sequences.num_truncated} examples truncated and {sequences.num_dropped} "
            f"dropped at {max_len} tokens (task.max_seq_len / the model's context window)"
        )
    return sequences
