"""Shared helpers of the training tests: a tiny synthetic dataset in the prepared layout, the
overrides that point a composed config at it, and readers for what a run leaves behind."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from nola.config import load_config
from nola.data.tokenized import TokenizedSplit

NAMES = ["Alimentum", "Aromi", "Bibimbap", "Cocum", "Giraffe", "Loch Fyne", "Zizzi", "The Mill"]
FOODS = ["Chinese", "English", "French", "Indian", "Italian", "Japanese"]
AREAS = ["city centre", "riverside"]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def synthetic_examples(count: int, seed: int) -> list[dict]:
    """E2E-like pairs: a short meaning representation and one sentence realising it."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        name, food, area = rng.choice(NAMES), rng.choice(FOODS), rng.choice(AREAS)
        context = f"name : {name} | food : {food} | area : {area}"
        completion = rng.choice([f"{name} serves {food} food in the {area}.", f"In the {area}, {name} offers {food} food."])
        examples.append({"context": context, "completion": completion})
    return examples


def write_dataset(data_dir: Path, tasks=("e2e", "webnlg", "dart"), train: int = 24, valid: int = 8) -> Path:
    for index, task in enumerate(tasks):
        for split, count in (("train", train), ("valid", valid), ("test", valid)):
            path = data_dir / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = synthetic_examples(count, seed=10 * index + ("train", "valid", "test").index(split))
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return data_dir


def tiny_overrides(data_dir: Path, vocab_dir: Path, runs_dir: Path, *extra: str) -> list[str]:
    """A 2-layer model, the synthetic data, a short schedule with frequent checkpoints."""
    return [
        "model=tiny",
        "train=smoke",
        f"paths.data_dir={data_dir}",
        f"paths.vocab_dir={vocab_dir}",
        f"paths.runs_dir={runs_dir}",
        f"paths.cache_dir={runs_dir}/cache",
        "train.device=cpu",
        "train.max_steps=0",
        "train.epochs=2",
        "train.batch_size=4",
        "train.warmup_steps=2",
        "train.save_every=2",
        "train.log_every=1",
        *extra,
    ]


def tiny_config(data_dir: Path, vocab_dir: Path, runs_dir: Path, *extra: str):
    return load_config(tiny_overrides(data_dir, vocab_dir, runs_dir, *extra))


def adapter_weights(run_dir: Path) -> bytes:
    return (Path(run_dir) / "adapter" / "adapter.safetensors").read_bytes()


def scalars(run_dir: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of one tensorboard scalar of the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def run_rank(rank: int, world_size: int, port: int, overrides: list[str], run_dir: str) -> None:
    """One process of a gloo job (torch.multiprocessing.spawn target)."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    from nola.training.job import train

    train(load_config(overrides), run_dir)


def split_of(pairs: list[tuple[list[int], list[int]]]) -> TokenizedSplit:
    """A TokenizedSplit from (context ids, completion ids) pairs."""

    def flat(seqs):
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
        return np.array([t for s in seqs for t in s], dtype=np.int32), offsets

    return TokenizedSplit(*flat([c for c, _ in pairs]), *flat([m for _, m in pairs]))
