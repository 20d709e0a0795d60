"""The typed boundary: every config check runs before any work, and environment mistakes are
one-line errors that say what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from nola.config import check_group_choices, compose_config, typed_config
from nola.errors import NolaError
from nola.training.distributed import read_environment
from conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("decode.beam=0", "decode.beam=0"),
        ("decode.max_new_tokens=0", "decode.max_new_tokens=0"),
        ("train.grad_accum=3", "not divisible"),
        ("train.optimizer=sgd", "train.optimizer='sgd'"),
        ("train.loss_normalization=mean", "train.loss_normalization='mean'"),
        ("train.dist_timeout_s=0", "train.dist_timeout_s=0"),
        ("task.last_batch=drop", "task.last_batch=drop applies to task.batching=bucketed"),
        ("adapter.init=kaiming", "adapter.init='kaiming'"),
        ("adapter.rank=0", "adapter.rank=0"),
    ],
)
def test_composed_configs_are_checked_at_the_boundary(override, message):
    cfg = compose_config([override])  # merging alone does not run the dataclasses' checks
    with pytest.raises(NolaError, match=message.replace("(", r"\(")) as err:
        typed_config(cfg)
    assert "\n" not in str(err.value)


def test_the_default_and_every_paper_experiment_pass_the_boundary():
    for experiment in (None, "e2e/nola_gpt2m", "e2e/nola_gpt2l", "e2e/lora_gpt2m", "dart/nola_gpt2m", "webnlg/lora_gpt2m"):
        typed = typed_config(compose_config([f"experiment={experiment}"] if experiment else []))
        assert typed.train.optimizer == "lora_adamw"


@pytest.mark.parametrize(
    ("override", "group"),
    [("experiment=e2e/nola_gpt2mm", "experiment"), ("adapter=nolaa", "adapter"), ("model=gpt2-mediun", "model"),
     ("adapter=lora,nola2", "adapter")],
)
def test_a_misspelled_group_choice_lists_the_available_ones(override, group):
    with pytest.raises(NolaError, match=f"no conf/{group}/") as err:
        check_group_choices([override])
    assert "available:" in str(err.value)
    if group == "experiment":
        assert "e2e/nola_gpt2m" in str(err.value) and "webnlg/lora_gpt2m" in str(err.value)
    check_group_choices(["experiment=e2e/nola_gpt2m", "adapter=lora,nola", "train.lr=1e-3", "adapter.rank=2"])


def test_a_misspelled_experiment_stops_the_train_command_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nola.train", "experiment=e2e/nola_gpt2mm", f"paths.runs_dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    assert "experiment=e2e/nola_gpt2mm" in result.stderr and "e2e/nola_gpt2m," in result.stderr
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2"}, "RANK, MASTER_ADDR, MASTER_PORT are not"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK=2 is outside 0..1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT=99999"),
        ({"RANK": "x"}, "RANK='x' is not an integer"),
    ],
)
def test_inconsistent_distributed_environment_is_a_clear_error(env, message):
    with pytest.raises(NolaError, match=message) as err:
        read_environment(env)
    assert "torchrun" in str(err.value) or "outside" in str(err.value) or "port" in str(err.value)


def test_distributed_environment_is_read_as_torchrun_sets_it():
    assert read_environment({}) == (1, 0, 0)
    full = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert read_environment(full) == (4, 3, 1)
    assert read_environment({"WORLD_SIZE": "1"}) == (1, 0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_missing_peer_ends_in_an_error_after_the_timeout_not_a_hang(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "PYTHONPATH": str(REPO_ROOT / "src")}
    script = "from nola.errors import exit_on_user_error\nfrom nola.training.distributed import init_distributed\n" \
             "exit_on_user_error(init_distributed)('cpu', 3.0)"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    assert "could not form the process group" in result.stderr and "train.dist_timeout_s" in result.stderr
    assert "Traceback" not in result.stderr
