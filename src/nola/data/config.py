"""Schema of the Hydra `task` group (conf/task/*.yaml): which dataset and how it becomes batches.

Defaults follow microsoft/LoRA `examples/NLG` (Hu et al., ICLR 2022, App. D; DESIGN.md §3):
`gpt2_ft.py --seq_len 512`, whose `FT_Dataset` keeps the first `seq_len` tokens of an over-long
example and fills the last batch of an epoch with randomly drawn examples.
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

    truncate: keep the first max_seq_len input tokens, i.e. cut the end of the completion (LoRA's
        `padding_tokens(..., direct=1)`); an example whose context alone fills the window has no
        completion target left and is dropped. Both are counted.
    drop: leave the example out (counted).
    error: raise a NolaError naming the example.
    """

    truncate = "truncate"
    drop = "drop"
    error = "error"


class LastBatch(str, Enum):
    """The epoch's final batch when the example count is not a multiple of the batch size.

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
    max_seq_len: longest model input in tokens (LoRA `--seq_len 512`). No example of the three
        datasets comes near it (the longest, in DART, has 301 tokens).
    truncation: see TruncationPolicy.
    bucket_chunk_batches: length bucketing sorts by length inside shuffled chunks of this many
        batches, so batches hold similar lengths (less padding) while the order stays random.
    last_batch: see LastBatch.
    """

    name: str = MISSING
    data_dir: str = "data"
    max_seq_len: int = 512
    truncation: TruncationPolicy = TruncationPolicy.truncate
    bucket_chunk_batches: int = 64
    last_batch: LastBatch = LastBatch.fill

    def __post_init__(self) -> None:
        if self.name != MISSING:  # the schema's own default instance has no name yet
            check_task_name(self.name)
        if self.max_seq_len < 2:
            raise NolaError(f"task.max_seq_len must be at least 2, got {self.max_seq_len}")
        if self.bucket_chunk_batches < 1:
            raise NolaError(f"task.bucket_chunk_batches must be at least 1, got {self.bucket_chunk_batches}")


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
