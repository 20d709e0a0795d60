"""The data stage: E2E, WebNLG and DART from raw files to padded batches (microsoft/LoRA examples/NLG/src).

`python -m nola.data.prepare` (`make data`) fetches and converts the datasets into
`data/<task>/{train,valid,test}.jsonl` plus reference files; the functions below read them.
"""

from nola.data.batching import Batch, LengthBucketBatcher, SequenceSet, build_sequences, collate
from nola.data.config import SPLITS, TASKS, LastBatch, TaskConfig, TruncationPolicy
from nola.data.records import Example, load_examples
from nola.data.references import (
    GEM_NUM_REFS,
    ReferenceFiles,
    ReferenceGroup,
    gem_tokenize,
    load_reference_groups,
    reference_files,
)
from nola.data.tokenized import TokenizedSplit, TokenLayout, load_tokenized, tokenize_examples

__all__ = [
    "GEM_NUM_REFS",
    "SPLITS",
    "TASKS",
    "Batch",
    "Example",
    "LastBatch",
    "LengthBucketBatcher",
    "ReferenceFiles",
    "ReferenceGroup",
    "SequenceSet",
    "TaskConfig",
    "TokenLayout",
    "TokenizedSplit",
    "TruncationPolicy",
    "build_sequences",
    "collate",
    "gem_tokenize",
    "load_examples",
    "load_reference_groups",
    "load_tokenized",
    "reference_files",
    "tokenize_examples",
]
