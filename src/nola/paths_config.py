"""Schema of the Hydra `paths` group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PathsConfig:
    """data_dir: prepared datasets (`make data`); vocab_dir: encoder.json + vocab.bpe;
    runs_dir: run directories; cache_dir: downloads, tokenized caches, the mini base model."""

    data_dir: str = "data"
    vocab_dir: str = "data/vocab"
    runs_dir: str = "runs"
    cache_dir: str = ".cache"
