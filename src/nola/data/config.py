"""Schema of the Hydra `task` group (conf/task/*.yaml): which dataset and how it becomes batches.

Defaults follow microsoft/LoRA `examples/NLG` (Hu et al., ICLR 2022, App. D): `gpt2_ft.py
--seq_len 512`, whose `FT_Dataset` keeps the first `seq_len` tokens of an over-long example, pads
the epoch to whole batches with randomly drawn examples and is read in a uniformly shuffled order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING

from nola.errors import NolaError

TASKS = ("e2e", "webnlg", "dart")
SPLITS = ("train", "valid", "test")


class TruncationPolicy(str, Enum):
    """What happens to an example whose input (context + completion - 1 tokens) exceeds max_seq_len.

    truncate: keep the first max_seq_len tokens of context + completion, the last of them only a
        target (LoRA's `padding_tokens(..., direct=1)`); an example whose context alone fills the
        window keeps its row with no target (zero loss), as in LoRA. Counted.
    drop: leave the example out (counted).
    error: raise a NolaError naming the example.
    """

    truncate = "truncate"
    drop = "drop"
    error = "error"


class Batching(str, Enum):
    """How an epoch's examples are put into batches (`nola.data.batching`).

    lora: LoRA's composition (the default, what the papers trained): a uniform shuffle every
        epoch, fill rows drawn as FT_Dataset draws them (`ShuffledFillBatcher`).
    bucketed: similar lengths batched together (`LengthBucketBatcher`): less padding, faster, but
        a different objective (short examples' tokens weigh more in the per-batch token mean).
    """

    lora = "lora"
    bucketed = "bucketed"


class LastBatch(str, Enum):
    """The epoch's final batch when the example count is not a multiple of the batch size
    (task.batching=bucketed; LoRA's composition always fills).

    fill: top it up with examples drawn at random (LoRA's `FT_Dataset`, which pads its length to
        a whole number of batches with `rng.randint` draws); every batch then has batch_size rows.
    drop: leave the incomplete batch out.
    keep: yield it smaller (evaluation; single process only).
    """

    fill = "fill"
    drop = "drop"
    keep = "keep"


@dataclass
class TaskConfig:
    """The dataset and its batching.

    name: e2e | webnlg | dart.
    data_dir: the prepared data (`make data`); the yaml files point it at `paths.data_dir`.
    max_seq_len: tokens of context + completion kept per example (LoRA `--seq_len 512`). No
        example of the three datasets comes near it (the longest, in DART, has 302 tokens).
    truncation: see TruncationPolicy.
    batching: see Batching.
    bucket_chunk_batches: with batching=bucketed, sort by length inside shuffled chunks of this
        many batches, so batches hold similar lengths (less padding) while the order stays random.
    last_batch: see LastBatch (batching=bucketed only).
    """

    name: str = MISSING
    data_dir: str = "data"
    max_seq_len: int = 512
    truncation: TruncationPolicy = TruncationPolicy.truncate
    batching: Batching = Batching.lora
    bucket_chunk_batches: int = 64
    last_batch: LastBatch = LastBatch.fill

    def __post_init__(self) -> None:
        if self.name != MISSING:  # the schema's own default instance has no name yet
            check_task_name(self.name)
        if self.max_seq_len < 2:
            raise NolaError(f"task.max_seq_len must be at least 2, got {self.max_seq_len}")
        if self.bucket_chunk_batches < 1:
            raise NolaError(f"task.bucket_chunk_batches must be at least 1, got {self.bucket_chunk_batches}")
        check_batching(self)


def check_batching(task) -> None:
    """LoRA's composition always fills the last batch; other last_batch settings need bucketing."""
    if Batching(task.batching) is Batching.lora and LastBatch(task.last_batch) is not LastBatch.fill:
        raise NolaError(
            f"task.last_batch={LastBatch(task.last_batch).value} applies to task.batching=bucketed only; "
            "LoRA's composition (task.batching=lora) always fills the last batch"
        )


def check_task_name(name: str) -> str:
    """Return `name` if it is a known task, else raise a NolaError listing the known ones."""
    if name not in TASKS:
        raise NolaError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return name


def check_split(split: str) -> str:
    """Return `split` if it is train/valid/test, else raise a NolaError."""
    if split not in SPLITS:
        raise NolaError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split
