"""Batches: loss mask, padding, truncation, length bucketing, determinism and sharding.

Expected masks are worked out by hand and agree with LoRA's FT_Dataset rule
`mask = [0] * (len(context) - 1) + [1] * (len(context + completion) - len(context))`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nola.data.batching import LengthBucketBatcher, build_sequences, collate
from nola.data.config import LastBatch, TruncationPolicy
from nola.data.tokenized import TokenizedSplit
from nola.errors import NolaError
from train_support import split_of

E = 50256


def lengths_split(lengths: list[int]) -> TokenizedSplit:
    """Examples whose input length is `lengths[i]`: context [i, E], completion of filler tokens + eos."""
    return split_of([([i, E], [7] * (n - 2) + [E]) for i, n in enumerate(lengths)])


def test_collate_shifts_pads_and_masks_completion_targets():
    sequences = build_sequences(split_of([([10, 11, E], [20, 21, E]), ([5, E], [6, E])]), max_seq_len=512)
    batch = collate(sequences, np.array([0, 1]))
    assert batch.input_ids.tolist() == [[10, 11, E, 20, 21], [5, E, 6, 0, 0]]
    assert batch.targets.tolist() == [[11, E, 20, 21, E], [E, 6, E, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert batch.attention_mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch.example_ids.tolist() == [0, 1]
    assert (batch.input_ids.dtype, batch.targets.dtype) == (torch.long, torch.long)
    assert (batch.loss_mask.dtype, batch.attention_mask.dtype) == (torch.float32, torch.bool)


def test_truncation_keeps_the_first_tokens_and_counts():
    # LoRA's FT_Dataset keeps the first seq_len tokens of context + completion; the last kept token
    # is only a target. A context that fills the window keeps its row, with no target.
    tokenized = split_of([([1, 2, E], [3, 4, 5, E]), ([1, 2, 3, 4, 5, E], [6, E]), ([1, E], [2, E])])
    sequences = build_sequences(tokenized, max_seq_len=4)
    assert (sequences.num_truncated, sequences.num_dropped) == (2, 0)
    assert sequences.example_ids.tolist() == [0, 1, 2]
    batch = collate(sequences, np.array([0, 1, 2]))
    assert batch.input_ids.tolist() == [[1, 2, E], [1, 2, 3], [1, E, 2]]
    assert batch.targets.tolist() == [[2, E, 3], [2, 3, 4], [E, 2, E]]
    assert batch.loss_mask.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 1]]


def test_drop_and_error_policies():
    tokenized = split_of([([1, 2, E], [3, 4, 5, E]), ([1, E], [2, E])])
    dropped = build_sequences(tokenized, max_seq_len=4, policy=TruncationPolicy.drop)
    assert (len(dropped), dropped.num_truncated, dropped.num_dropped) == (1, 0, 1)
    with pytest.raises(NolaError, match="example 0 has 7 tokens .* more than task.max_seq_len=4"):
        build_sequences(tokenized, max_seq_len=4, policy="error")
    with pytest.raises(NolaError, match="task.truncation must be one of"):
        build_sequences(tokenized, max_seq_len=4, policy="shorten")


def test_unshuffled_buckets_sort_by_length_inside_each_chunk():
    sequences = build_sequences(lengths_split([3, 7, 5, 2, 9, 4]), max_seq_len=512)
    whole = LengthBucketBatcher(sequences, 2, seed=0, shuffle=False, chunk_batches=3, last_batch="keep")
    assert [b.tolist() for b in whole.global_batches(0)] == [[4, 1], [2, 5], [0, 3]]
    per_pair = LengthBucketBatcher(sequences, 2, seed=0, shuffle=False, chunk_batches=1, last_batch="keep")
    assert [b.tolist() for b in per_pair.global_batches(0)] == [[1, 0], [2, 3], [4, 5]]


def padding_fraction(batcher: LengthBucketBatcher) -> float:
    masks = [batch.attention_mask for batch in batcher.epoch(0)]
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def test_bucketing_is_deterministic_covers_every_example_and_cuts_padding():
    lengths = np.random.default_rng(1).integers(3, 120, size=203).tolist()
    sequences = build_sequences(lengths_split(lengths), max_seq_len=512)
    batcher = LengthBucketBatcher(sequences, 8, seed=110, chunk_batches=8, last_batch=LastBatch.keep)
    epoch0 = [b.tolist() for b in batcher.global_batches(0)]
    assert epoch0 == [
        b.tolist()
        for b in LengthBucketBatcher(sequences, 8, seed=110, chunk_batches=8, last_batch="keep").global_batches(0)
    ]
    assert epoch0 != [b.tolist() for b in batcher.global_batches(1)]
    assert epoch0 != [
        b.tolist()
        for b in LengthBucketBatcher(sequences, 8, seed=111, chunk_batches=8, last_batch="keep").global_batches(0)
    ]
    assert sorted(i for b in epoch0 for i in b) == list(range(203))
    assert len(batcher) == len(epoch0) == 26
    unbucketed = LengthBucketBatcher(sequences, 8, seed=110, chunk_batches=1, last_batch="keep")
    assert padding_fraction(batcher) < 0.5 * padding_fraction(unbucketed)


@pytest.mark.parametrize(("last_batch", "sizes"), [("fill", [4, 4, 4]), ("drop", [4, 4]), ("keep", [4, 4, 2])])
def test_last_batch_policies(last_batch, sizes):
    sequences = build_sequences(lengths_split([5] * 10), max_seq_len=512)
    batcher = LengthBucketBatcher(sequences, 4, seed=3, last_batch=last_batch)
    batches = batcher.global_batches(0)
    assert sorted(len(b) for b in batches) == sorted(sizes) and len(batcher) == len(sizes)
    seen = np.concatenate(batches)
    if last_batch == "drop":
        assert len(set(seen.tolist())) == 8
    else:
        assert set(seen.tolist()) == set(range(10))  # fill adds 2 repeats drawn from the split


def test_shards_split_every_global_batch_between_ranks():
    sequences = build_sequences(lengths_split(list(range(3, 40))), max_seq_len=512)
    shards = [LengthBucketBatcher(sequences, 8, seed=5, world_size=2, rank=r) for r in (0, 1)]
    full = LengthBucketBatcher(sequences, 8, seed=5).global_batches(2)
    rank0, rank1 = (s.rank_batches(2) for s in shards)
    assert len(rank0) == len(rank1) == len(full) == len(shards[0]) == 5
    for whole, first, second in zip(full, rank0, rank1, strict=True):
        assert len(first) == len(second) == 4
        assert np.concatenate([first, second]).tolist() == whole.tolist()
    batches = list(shards[1].epoch(2))
    assert [b.example_ids.tolist() for b in batches] == [sequences.example_ids[r].tolist() for r in rank1]


def test_invalid_sharding_is_a_nola_error():
    sequences = build_sequences(lengths_split([5] * 10), max_seq_len=512)
    with pytest.raises(NolaError, match="split evenly over 3 ranks"):
        LengthBucketBatcher(sequences, 8, seed=0, world_size=3, rank=0)
    with pytest.raises(NolaError, match="last_batch=keep"):
        LengthBucketBatcher(sequences, 8, seed=0, world_size=2, rank=1, last_batch="keep")


def test_batch_split_makes_trimmed_micro_batches():
    sequences = build_sequences(
        split_of([([1, E], [2, 3, 4, E]), ([1, E], [2, E]), ([1, E], [E]), ([1, E], [2, E])]), max_seq_len=512
    )
    batch = collate(sequences, np.arange(4))
    first, second = batch.split(2)
    assert first.input_ids.shape == (2, 5) and second.input_ids.shape == (2, 3)
    assert second.loss_mask.tolist() == [[0, 1, 0], [0, 1, 1]]
    assert torch.equal(first.targets, batch.targets[:2])
    with pytest.raises(NolaError, match="micro-batches"):
        batch.split(5)
