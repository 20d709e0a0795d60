"""Two gloo processes with global batch B train like one process with batch B."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from nola.config import load_config
from nola.training.job import train
from train_support import scalars, run_rank, tiny_overrides, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one(vocab_dir, tmp_path):
    """NOLA (no dropout), global batch 4 for 12 steps: one process with batches of 4 rows vs two gloo
    processes taking 2 rows each of the same batches (LoRA's loss: each batch's token mean, its
    tokens counted over both processes)."""
    data_dir = write_dataset(tmp_path / "data", tasks=("e2e",))
    overrides = tiny_overrides(data_dir, vocab_dir, tmp_path, "adapter=nola", "train.lr=2e-2")
    train(load_config(overrides), tmp_path / "one")
    mp.spawn(run_rank, args=(2, free_port(), overrides, str(tmp_path / "two")), nprocs=2, join=True)
    one, two = scalars(tmp_path / "one"), scalars(tmp_path / "two")
    valid_one = [v["loss"] for v in json.loads((tmp_path / "one" / "train_metrics.json").read_text())["valid"]]
    valid_two = [v["loss"] for v in json.loads((tmp_path / "two" / "train_metrics.json").read_text())["valid"]]
    assert len(valid_one) == 2 and max(abs(a - b) for a, b in zip(valid_one, valid_two)) < 1e-5
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 13))
    assert max(abs(a - b) for (_, a), (_, b) in zip(one, two)) < 1e-5
    assert one[0][1] != one[-1][1]  # the curve moves: the comparison is not of constants
    weights_one = load_file(str(tmp_path / "one" / "adapter" / "adapter.safetensors"))
    weights_two = load_file(str(tmp_path / "two" / "adapter" / "adapter.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-4, atol=1e-6)
