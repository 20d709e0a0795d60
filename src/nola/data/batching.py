"""From token ids to padded training batches: truncation, batch composition, sharding.

Batch contract (microsoft/LoRA `examples/NLG/src/data_utils.py` FT_Dataset): for an example with
context ids c (ending in bos) and completion ids m (ending in eos), s = c + m cut to its first
`max_seq_len` tokens, the row holds input_ids = s[:-1] and targets = s[1:], right-padded;
loss_mask is 1 exactly where the target is a completion token (positions len(c)-1 .. len(s)-2,
the final eos included) and attention_mask is True on real tokens.

Two batch compositions (`task.batching`):
- `ShuffledFillBatcher` (LoRA's, the default): every epoch a uniform permutation of the examples
  plus the fill rows LoRA adds to make whole batches, cut into consecutive batches.
- `LengthBucketBatcher` (a speed option): similar lengths grouped inside shuffled chunks, which
  cuts padding but changes the objective (see its docstring).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np
import torch

from nola.data.config import LastBatch, TruncationPolicy
from nola.data.tokenized import TokenizedSplit
from nola.errors import NolaError

PAD_ID = 0  # LoRA's padding_tokens pads with 0; padded positions are masked out
E = TypeVar("E", bound=Enum)


@dataclass(frozen=True)
class Batch:
    """input_ids, targets (B, T) long; loss_mask (B, T) float; attention_mask (B, T) bool;
    example_ids (B,) long: each row's example index in its split."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    attention_mask: torch.Tensor
    example_ids: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(tensor.to(device) for tensor in self._tensors()))

    def split(self, parts: int) -> tuple[Batch, ...]:
        """Cut into `parts` row groups (gradient accumulation), each trimmed to its longest row."""
        if not 1 <= parts <= len(self.input_ids):
            raise NolaError(f"cannot split a batch of {len(self.input_ids)} rows into {parts} micro-batches")
        pieces = []
        for rows in torch.tensor_split(torch.arange(len(self.input_ids)), parts):
            width = int(self.attention_mask[rows].sum(dim=1).max())
            pieces.append(Batch(*(t[rows, :width] if t.dim() == 2 else t[rows] for t in self._tensors())))
        return tuple(pieces)

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return self.input_ids, self.targets, self.loss_mask, self.attention_mask, self.example_ids


@dataclass(frozen=True)
class SequenceSet:
    """Each kept example as one token sequence (context + completion) within the length limit.

    num_truncated: examples cut to their first max_seq_len tokens (TruncationPolicy.truncate); a
        context that fills the whole window leaves a row without targets, kept as LoRA keeps it.
    num_dropped: examples left out (too long under `drop`).
    """

    tokens: list[np.ndarray]
    context_lengths: np.ndarray
    example_ids: np.ndarray
    num_truncated: int
    num_dropped: int

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def input_lengths(self) -> np.ndarray:
        return np.array([len(sequence) - 1 for sequence in self.tokens], dtype=np.int64)


def as_enum(kind: type[E], value: E | str, name: str) -> E:
    """`value` as a member of `kind`; an unknown string is a NolaError naming the option."""
    try:
        return kind(value)
    except ValueError:
        raise NolaError(f"{name} must be one of {', '.join(m.value for m in kind)}, got {value!r}") from None


def build_sequences(
    tokenized: TokenizedSplit, max_seq_len: int, policy: TruncationPolicy | str = TruncationPolicy.truncate
) -> SequenceSet:
    """Join context and completion ids and apply the truncation policy (at most max_seq_len tokens).

    `max_seq_len` is LoRA's `--seq_len`: the row keeps the first max_seq_len tokens of context +
    completion, the last of which is only a target (FT_Dataset's `padding_tokens(..., direct=1)`).
    """
    policy = as_enum(TruncationPolicy, policy, "task.truncation")
    tokens, context_lengths, example_ids = [], [], []
    truncated = dropped = 0
    for index in range(len(tokenized)):
        context, completion = tokenized.context(index), tokenized.completion(index)
        sequence = np.concatenate([context, completion]).astype(np.int64)
        if len(sequence) > max_seq_len:
            if policy is TruncationPolicy.error:
                raise NolaError(
                    f"example {index} has {len(sequence)} tokens (context {len(context)}), more than "
                    f"task.max_seq_len={max_seq_len}; set task.truncation to truncate or drop, or raise max_seq_len"
                )
            if policy is TruncationPolicy.drop:
                dropped += 1
                continue
            sequence = sequence[:max_seq_len]
            truncated += 1
        tokens.append(sequence)
        context_lengths.append(len(context))
        example_ids.append(index)
    return SequenceSet(
        tokens, np.array(context_lengths, dtype=np.int64), np.array(example_ids, dtype=np.int64), truncated, dropped
    )


def collate(sequences: SequenceSet, indices: np.ndarray) -> Batch:
    """Right-pad the chosen sequences into a Batch (see the module docstring for the layout)."""
    width = max(len(sequences.tokens[i]) - 1 for i in indices)
    input_ids = np.full((len(indices), width), PAD_ID, dtype=np.int64)
    targets = np.full((len(indices), width), PAD_ID, dtype=np.int64)
    loss_mask = np.zeros((len(indices), width), dtype=np.float32)
    attention_mask = np.zeros((len(indices), width), dtype=bool)
    for row, index in enumerate(indices):
        sequence = sequences.tokens[index]
        length = len(sequence) - 1
        input_ids[row, :length] = sequence[:-1]
        targets[row, :length] = sequence[1:]
        loss_mask[row, sequences.context_lengths[index] - 1 : length] = 1.0
        attention_mask[row, :length] = True
    return Batch(
        torch.from_numpy(input_ids),
        torch.from_numpy(targets),
        torch.from_numpy(loss_mask),
        torch.from_numpy(attention_mask),
        torch.from_numpy(sequences.example_ids[np.asarray(indices)]),
    )


def _check_batching(sequences: SequenceSet, batch_size: int, world_size: int, rank: int) -> None:
    """The checks every batcher makes: examples to batch, a positive batch that splits over the ranks."""
    if len(sequences) == 0:
        raise NolaError("no examples to batch (all were dropped, or the split is empty)")
    if batch_size < 1:
        raise NolaError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= rank < world_size or batch_size % world_size:
        raise NolaError(f"batch_size {batch_size} must split evenly over {world_size} ranks (rank {rank})")


def _rank_rows(batches: list[np.ndarray], world_size: int, rank: int) -> list[np.ndarray]:
    """Rank `rank`'s contiguous share of every global batch."""
    if world_size == 1:
        return batches
    per_rank = len(batches[0]) // world_size
    return [batch[rank * per_rank : (rank + 1) * per_rank] for batch in batches]


class ShuffledFillBatcher:
    """microsoft/LoRA's batches (examples/NLG/src/data_utils.py FT_Dataset, gpt2_ft.py's loaders).

    FT_Dataset pads its length to a whole number of batches, ceil(N / b)·b; an index past the last
    example is replaced by `rng.randint(0, N - 1)` from its own `random.Random(911)`, drawn in the
    order the rows are read and continuing across epochs. The DataLoader's DistributedSampler
    (seed = the run's seed) shuffles those indices with `torch.randperm` on a generator seeded
    seed + epoch; gpt2_ft.py calls `set_epoch` with epochs counted from 1 for training and never for
    validation (epoch 0): `first_sampler_epoch`. Consecutive b indices form a batch. Every example
    is therefore read exactly once per epoch, plus ceil(N / b)·b - N fill rows spread through it.

    `batch_size` is the global (micro-)batch; with `world_size` ranks each rank takes a contiguous
    share of every batch, so the composition does not depend on the number of processes.
    """

    FILL_SEED = 911  # FT_Dataset's random.Random(911)

    def __init__(
        self,
        sequences: SequenceSet,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        first_sampler_epoch: int = 1,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        _check_batching(sequences, batch_size, world_size, rank)
        self.sequences = sequences
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.first_sampler_epoch = first_sampler_epoch
        self.world_size = world_size
        self.rank = rank

    def __len__(self) -> int:
        """Batches per epoch: ceil(N / batch_size) (FT_Dataset.num_batches)."""
        return -(-len(self.sequences) // self.batch_size)

    def fill_draws(self, epoch: int) -> list[int]:
        """The example indices FT_Dataset's rng gives the fill rows of `epoch` (0-based), in read order."""
        count = len(self.sequences)
        missing = len(self) * self.batch_size - count
        rng = random.Random(self.FILL_SEED)
        for _ in range(epoch * missing):
            rng.randint(0, count - 1)
        return [rng.randint(0, count - 1) for _ in range(missing)]

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Sequence indices of every global batch of `epoch` (0-based), in order."""
        count, padded = len(self.sequences), len(self) * self.batch_size
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.first_sampler_epoch + epoch)
            order = torch.randperm(padded, generator=generator).numpy().astype(np.int64)
        else:
            order = np.arange(padded, dtype=np.int64)
        fill = np.flatnonzero(order >= count)
        order[fill] = self.fill_draws(epoch)
        return [order[start : start + self.batch_size] for start in range(0, padded, self.batch_size)]

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's rows of every global batch of `epoch`."""
        return _rank_rows(self.global_batches(epoch), self.world_size, self.rank)


class LengthBucketBatcher:
    """Fixed-size batches of similar lengths, reproducible from (seed, epoch), shardable across ranks.

    Each epoch: shuffle the examples (shuffle=True), cut the order into chunks of
    `chunk_batches * batch_size`, sort each chunk by length, cut it into batches, shuffle the batch
    order. `batch_size` is the global batch: with `world_size` ranks each rank gets a contiguous
    `batch_size // world_size` rows of every batch, and all ranks see the same number of steps.

    A speed option (`task.batching=bucketed`), not LoRA's composition: less padding, but the loss
    is a token mean per batch, so batches of short examples weigh their tokens more. On E2E train
    (batch 8) the longest quarter of the examples carries 25.7% of the objective instead of 34.4%,
    while padding falls from 27.2% of the input positions to 1.0% (README, "Training as the
    reference code trains").
    """

    def __init__(
        self,
        sequences: SequenceSet,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        chunk_batches: int = 64,
        last_batch: LastBatch | str = LastBatch.fill,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        self.last_batch = as_enum(LastBatch, last_batch, "task.last_batch")
        if chunk_batches < 1:
            raise NolaError(f"chunk_batches must be positive, got {chunk_batches}")
        _check_batching(sequences, batch_size, world_size, rank)
        if world_size > 1 and self.last_batch is LastBatch.keep:
            raise NolaError("last_batch=keep gives ranks unequal shards; use fill or drop with several ranks")
        if self.last_batch is LastBatch.drop and len(sequences) < batch_size:
            raise NolaError(f"{len(sequences)} examples make no full batch of {batch_size} (last_batch=drop)")
        self.sequences = sequences
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.chunk_batches = chunk_batches
        self.world_size = world_size
        self.rank = rank
        self.lengths = sequences.input_lengths

    def __len__(self) -> int:
        """Batches (optimizer steps at grad_accum 1) per epoch, the same on every rank."""
        full, rest = divmod(len(self.sequences), self.batch_size)
        return full + (rest > 0 and self.last_batch is not LastBatch.drop)

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Sequence indices of every global batch of `epoch`, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        count = len(self.sequences)
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        missing = -count % self.batch_size
        if self.last_batch is LastBatch.fill and missing:
            order = np.concatenate([order, rng.choice(count, size=missing, replace=missing > count)])
        chunk = self.chunk_batches * self.batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        if self.last_batch is LastBatch.drop and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's rows of every global batch of `epoch`."""
        return _rank_rows(self.global_batches(epoch), self.world_size, self.rank)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """This rank's batches of `epoch`, collated."""
        for indices in self.rank_batches(epoch):
            yield collate(self.sequences, indices)
