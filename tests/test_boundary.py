"""The typed boundary: every config check runs before any work, and environment mistakes are
one-line errors that say what to do."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from nola.config import check_group_choices, compose_config, load_config, typed_config
from nola.errors import NolaError
from nola.runtime import read_environment
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
    script = "from nola.errors import exit_on_user_error\nfrom nola.runtime import init_distributed\n" \
             "exit_on_user_error(init_distributed)('cpu', 3.0)"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    assert "could not form the process group" in result.stderr and "train.dist_timeout_s" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_prompt_too_long_is_named_by_its_line_in_the_contexts_file(vocab_dir):
    from nola.decode import DecodeConfig, decode_split
    from nola.model import GPT2Config, init_gpt2
    from nola.tokenizer import load_tokenizer

    model = init_gpt2(GPT2Config(vocab_size=50257, n_positions=24, n_embd=16, n_layer=1, n_head=2), 0).eval()
    contexts = ["name : Aromi", "name : " + " | ".join(["food : Chinese"] * 12), "name : Zizzi"]
    with pytest.raises(NolaError, match=r"data/e2e/test_contexts.txt:2 \(context 1\) has \d+ tokens") as err:
        decode_split(model, load_tokenizer(vocab_dir), contexts, DecodeConfig(beam=2, max_new_tokens=4),
                     progress=False, source="data/e2e/test_contexts.txt")
    assert "decode.max_new_tokens" in str(err.value)


def test_prepare_into_a_file_is_a_clear_error(tmp_path, capsys):
    from nola.data.prepare import main

    target = tmp_path / "not_a_dir"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(target), "--tasks", "e2e", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data-dir {target} is a file") and "Traceback" not in err


def test_an_empty_prepared_split_names_its_file(vocab_dir, tmp_path):
    from nola.training.job import train
    from train_support import tiny_config, write_dataset

    data_dir = write_dataset(tmp_path / "data", tasks=("e2e",))
    (data_dir / "e2e" / "train.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(NolaError, match=r"e2e/train.jsonl: no train examples to train on \(it is empty\)"):
        train(tiny_config(data_dir, vocab_dir, tmp_path / "runs"), tmp_path / "runs" / "run")


def test_score_out_in_an_unwritable_place_fails_before_scoring(tmp_path, capsys, monkeypatch):
    import nola.score

    calls = []
    monkeypatch.setattr(nola.score, "score_files", lambda *args: calls.append(args) or {})
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        nola.score.main(["--task", "e2e", "--refs", "r", "--hyps", "h", "--out", str(blocker / "scores.json")])
    assert exit_info.value.code == 2 and calls == []
    assert "set --out to a writable directory" in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    from nola.fileio import write_json_atomic

    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_adapter_files_get_the_same_mode_as_every_other_file(tmp_path):
    from nola.adapters import AdapterConfig, inject_adapters, save_adapter
    from nola.model import GPT2Config, init_gpt2

    model = init_gpt2(GPT2Config.named("tiny", vocab_size=300), 0)
    inject_adapters(model, AdapterConfig(kind="nola", rank=2, num_basis_a=8, num_basis_b=8))
    save_adapter(model, tmp_path, base_fingerprint="x", model_name="tiny")
    expected = 0o666 & ~_current_umask()
    assert {(p.name, p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {
        ("adapter.safetensors", expected), ("adapter_config.json", expected)}


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_ctrl_c_ends_with_one_line(capsys):
    from nola.errors import exit_on_user_error

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(interrupted)()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted; finished outputs kept\n"


@pytest.mark.slow
def test_a_built_wheel_finds_its_configs_from_any_directory(tmp_path):
    """`pip install .` (not editable): the configs travel inside the package."""
    import shutil

    wheel_dir, site, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "source"
    for part in ("src", "conf"):  # a copy: building in place would leave build/ in the checkout
        shutil.copytree(REPO_ROOT / part, source / part, symlinks=True, ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheel_dir), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheel_dir.glob("nola-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    result = subprocess.run([sys.executable, "-m", "nola.params", "model=gpt2-medium", "adapter=nola"],
                            env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"trainable": 49152, "adapter_file_bytes": 207416,
                                         "basis_cache_bytes": 64 * 2**20}
    located = subprocess.run([sys.executable, "-c", "import nola.config; print(nola.config.CONF_DIR)"],
                             env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True, text=True)
    assert located.stdout.strip() == str(site / "nola" / "conf")


@pytest.mark.slow
def test_an_optuna_sweep_over_the_learning_rate_minimises_the_validation_loss(vocab_dir, tmp_path):
    """`main()` returns the objective: Hydra's Optuna sweeper can search train.lr on the tiny model."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from train_support import subprocess_env, write_dataset

    data_dir = write_dataset(tmp_path / "data", tasks=("e2e",))
    result = subprocess.run(
        [sys.executable, "-m", "nola.train", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.direction=minimize", "hydra.sweeper.sampler.seed=0", "train.lr=tag(log,interval(1e-3,1e-1))",
         "model=tiny", "train=smoke", "train.max_steps=0", "train.epochs=1", "train.batch_size=4", "adapter=nola",
         "train.device=cpu", f"paths.data_dir={data_dir}", f"paths.vocab_dir={vocab_dir}",
         f"paths.runs_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    best = [line for line in (result.stdout + result.stderr).splitlines() if "Best value:" in line]
    assert best and 0 < float(best[-1].split("Best value:")[1]) < 20
    metrics = sorted((tmp_path / "runs").rglob("train_metrics.json"))
    assert len(metrics) == 2
    losses = [json.loads(path.read_text())["valid_loss"] for path in metrics]
    assert float(best[-1].split("Best value:")[1]) == pytest.approx(min(losses))


def test_decoding_into_an_unwritable_out_dir_fails_before_the_model_is_built(vocab_dir, tmp_path, monkeypatch):
    import nola.decode.stage as stage
    from nola.decode.stage import decode_from_config
    from train_support import tiny_overrides, write_dataset

    data_dir = write_dataset(tmp_path / "data", tasks=("e2e",))
    monkeypatch.setattr(stage, "build_model", lambda *args, **kwargs: pytest.fail("the model was built"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = load_config(tiny_overrides(data_dir, vocab_dir, tmp_path, "adapter=none", f"decode.out_dir={blocker}/out"))
    with pytest.raises(NolaError, match="set decode.out_dir to a writable directory"):
        decode_from_config(cfg, tmp_path / "run")


def test_help_starts_with_usage_and_examples():
    result = subprocess.run([sys.executable, "-m", "nola.train", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m nola.train")
    assert "examples:" in result.stdout and "experiment=e2e/nola_gpt2m" in result.stdout


def test_empty_torchrun_variables_count_as_unset_and_a_negative_seed_is_named():
    assert read_environment({"WORLD_SIZE": "", "RANK": ""}) == (1, 0, 0)
    with pytest.raises(NolaError, match="train.seed=-1 must be a non-negative integer"):
        typed_config(compose_config(["train.seed=-1"]))
