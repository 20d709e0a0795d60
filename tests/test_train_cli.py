"""`python -m nola.train` as users run it: a SIGKILL mid-run then the same command again, `--cfg job`,
multirun sweeps, and one-line errors. Each test starts Python subprocesses (seconds each), so the
longer ones are marked slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nola.config import load_config
from nola.training.job import train
from nola.training.checkpoint import latest_name
from train_support import adapter_weights, subprocess_env, tiny_overrides, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nola.train", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=300, env=subprocess_env())
    if check and result.returncode != 0:
        raise AssertionError(f"nola.train {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), tasks=("e2e",))


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_adapter(data_dir, vocab_dir, tmp_path):
    extra = ("adapter=lora", "adapter.dropout=0.1", "train.lr=1e-2", "train.epochs=4", "train.save_every=1")
    reference = train(load_config(tiny_overrides(data_dir, vocab_dir, tmp_path / "ref", *extra)), tmp_path / "ref")
    assert reference["steps"] == 24
    args = [*tiny_overrides(data_dir, vocab_dir, tmp_path / "runs", *extra), "name=killed"]
    checkpoints = tmp_path / "runs" / "killed" / "checkpoints"
    process = subprocess.Popen([sys.executable, "-m", "nola.train", *args], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        name = latest_name(checkpoints) if checkpoints.is_dir() else None
        if name and int(name.split("-")[1]) >= 3:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = int(latest_name(checkpoints).split("-")[1])
    assert 3 <= killed_at < 24
    cli(*args, cwd=tmp_path)
    assert adapter_weights(tmp_path / "runs" / "killed") == adapter_weights(tmp_path / "ref")


def test_cfg_job_prints_the_composed_recipe(tmp_path):
    result = cli("experiment=e2e/lora_gpt2m", "--cfg", "job", cwd=tmp_path)
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["lr"] == 2e-4 and printed["adapter"]["kind"] == "lora"
    assert printed["model"]["name"] == "gpt2-medium" and printed["name"] == "e2e/lora_gpt2m"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_multirun_over_adapters(data_dir, vocab_dir, tmp_path):
    cli("-m", "adapter=lora,nola", *tiny_overrides(data_dir, vocab_dir, tmp_path / "runs", "train.max_steps=1"), cwd=tmp_path)
    metrics = sorted((tmp_path / "runs" / "multirun").rglob("train_metrics.json"))
    kinds = sorted(yaml.safe_load(path.read_text())["adapter"]["kind"] for path in metrics)
    assert kinds == ["lora", "nola"]
    assert all((path.parent / "adapter" / "adapter.safetensors").is_file() for path in metrics)


def test_user_errors_are_one_line_with_exit_status_2(vocab_dir, tmp_path):
    result = cli(*tiny_overrides(tmp_path / "missing", vocab_dir, tmp_path / "runs"), cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "make data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unwritable_run_directory_on_the_command_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = cli("model=tiny", f"paths.runs_dir={blocker}/runs", "++hydra.callbacks.run_dir_check._target_=nola.config.RunDirCheck",
                 cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: cannot write to ") and "set paths.runs_dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_unknown_key_on_the_command_line(tmp_path):
    result = cli("model=tiny", "train.bogus=1", cwd=tmp_path, check=False)
    assert result.returncode != 0 and "bogus" in result.stderr
