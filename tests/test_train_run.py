"""End-to-end training on the tiny model (CPU): exact resumption, NaN stop, bad input, and the
shared model builder used by decoding."""

from __future__ import annotations

import json

import pytest
import torch

from nola.build import build_model
from nola.errors import NolaError
from nola.training.job import train
from nola.training import checkpoint as ckpt
from nola.training import loop
from train_support import adapter_weights, scalars, tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("single_thread")

LORA = ("adapter=lora", "adapter.dropout=0.1", "train.lr=1e-2")  # dropout exercises the RNG on resume


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), tasks=("e2e",))


@pytest.fixture(scope="module")
def reference(data_dir, vocab_dir, tmp_path_factory, single_thread):
    """An uninterrupted 12-step LoRA run (2 epochs of 6 steps)."""
    runs = tmp_path_factory.mktemp("reference")
    metrics = train(tiny_config(data_dir, vocab_dir, runs, *LORA), runs / "run")
    return runs / "run", metrics


def test_reference_run_layout(reference):
    run_dir, metrics = reference
    assert metrics["completed"] and metrics["steps"] == 12 and metrics["micro_batches_per_epoch"] == 6
    assert [v["step"] for v in metrics["valid"]] == [6, 12]
    assert json.loads((run_dir / "train_metrics.json").read_text()) == metrics
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "tensorboard").glob("events.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step-00000010", "step-00000012"]
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["adapter"]["kind"] == "lora" and saved["base_fingerprint"] == metrics["base_fingerprint"]
    # lr of update k is lr * factor(k - 1): warmup 2 then linear decay to 0 at 12 (LoRA's schedule)
    expected = [0.0, 0.5] + [(12 - t) / 10 for t in range(2, 12)]
    assert [value for _, value in scalars(run_dir, "train/lr")] == pytest.approx([1e-2 * f for f in expected])
    assert [step for step, _ in scalars(run_dir, "valid/loss")] == [6, 12]
    assert all(value > 0 for _, value in scalars(run_dir, "train/tokens_per_s"))
    assert all(value > 0 for _, value in scalars(run_dir, "train/grad_norm")[1:])


@pytest.mark.parametrize("stop_at", [5, 6])
def test_resume_after_stop_is_bitwise_identical(reference, data_dir, vocab_dir, tmp_path, stop_at):
    """Stop at `stop_at` (mid-epoch / at the epoch end), rerun without the limit: the same adapter."""
    ref_dir, ref_metrics = reference
    stopped = train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA, f"train.max_steps={stop_at}"), tmp_path / "run")
    assert stopped["steps"] == stop_at and stopped["stop_reason"] == "max_steps" and not stopped["completed"]
    assert ckpt.load_latest(tmp_path / "run" / "checkpoints").step == stop_at
    resumed = train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA), tmp_path / "run")
    assert resumed["steps"] == 12 and resumed["completed"]
    assert adapter_weights(tmp_path / "run") == adapter_weights(ref_dir)
    assert resumed["valid"] == ref_metrics["valid"] and resumed["train_loss"] == ref_metrics["train_loss"]
    assert resumed["completion_tokens"] == ref_metrics["completion_tokens"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(reference, data_dir, vocab_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = loop.completion_loss_sum

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real_loss(*args, **kwargs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(loop, "completion_loss_sum", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(NolaError, match="step 5") as err:
        train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA), run_dir)
    message = str(err.value)
    assert "\n" not in message and "not finite" in message and "step-00000004" in message
    latest = ckpt.load_latest(run_dir / "checkpoints")
    assert latest.step == 4 and all(torch.isfinite(t).all() for t in latest.tensors.values())
    assert not (run_dir / "adapter").exists() and not (run_dir / "train_metrics.json").exists()
    monkeypatch.undo()
    train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA), run_dir)  # rerun resumes from step 4
    assert adapter_weights(run_dir) == adapter_weights(reference[0])


def test_gradient_checkpointing_and_time_budget(reference, data_dir, vocab_dir, tmp_path):
    """Recomputing activations (with LoRA dropout) changes nothing; a time budget stops after a step."""
    plain = train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA, "train.max_steps=3"), tmp_path / "plain")
    recomputed = train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA, "train.max_steps=3",
                                   "model.gradient_checkpointing=true"), tmp_path / "recomputed")
    assert recomputed["train_loss"] == plain["train_loss"]
    assert adapter_weights(tmp_path / "recomputed") == adapter_weights(tmp_path / "plain")
    timed = train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA, "train.max_time_s=1e-9"), tmp_path / "timed")
    assert timed["stop_reason"] == "max_time" and timed["steps"] == 1
    assert ckpt.load_latest(tmp_path / "timed" / "checkpoints").step == 1


def test_bf16_autocast_on_cpu(data_dir, vocab_dir, tmp_path):
    metrics = train(tiny_config(data_dir, vocab_dir, tmp_path, "train.precision=bf16", "train.max_steps=1"), tmp_path / "r")
    assert metrics["precision"] == "bfloat16" and metrics["steps"] == 1
    assert 5.0 < metrics["train_loss"] < 20.0


def test_resume_refuses_a_changed_recipe(reference, data_dir, vocab_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA, "train.max_steps=2"), run_dir)
    with pytest.raises(NolaError, match=r"train\.lr=0\.01.*0\.02"):
        train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA, "train.lr=2e-2"), run_dir)


def test_resume_false_refuses_to_overwrite_checkpoints(reference, data_dir, vocab_dir, tmp_path):
    with pytest.raises(NolaError, match="train.resume=false"):
        train(tiny_config(data_dir, vocab_dir, tmp_path, *LORA, "train.resume=false"), reference[0])


def test_missing_data_says_make_data(vocab_dir, tmp_path):
    with pytest.raises(NolaError, match="make data") as err:
        train(tiny_config(tmp_path / "nowhere", vocab_dir, tmp_path), tmp_path / "run")
    assert "\n" not in str(err.value)


def test_unwritable_run_directory(data_dir, vocab_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(NolaError, match="cannot write to .*set paths.runs_dir") as err:
        train(tiny_config(data_dir, vocab_dir, tmp_path), blocker / "run")
    assert "\n" not in str(err.value)


def test_no_weights_offline_fails_first(vocab_dir, tmp_path, monkeypatch):
    """A hub model that cannot be downloaded stops the run before the data (absent here) is read."""
    monkeypatch.setenv("NOLA_HUB_ENDPOINT", "http://127.0.0.1:9")
    cfg = tiny_config(tmp_path / "no-data", vocab_dir, tmp_path, "model=gpt2")
    with pytest.raises(NolaError, match="make mini") as err:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    cfg = tiny_config(tmp_path / "no-data", vocab_dir, tmp_path, "model.source=/no/such/weights")
    with pytest.raises(NolaError, match="make mini"):
        train(cfg, tmp_path / "run")


def test_decoding_build_matches_training_model(reference, data_dir, vocab_dir, tmp_path):
    """build_model(for_training=False) merges the saved adapter: same logits as the adapted model."""
    run_dir, _ = reference
    cfg = tiny_config(data_dir, vocab_dir, tmp_path, *LORA)
    trained = build_model(cfg, for_training=True, adapter_dir=run_dir / "adapter")
    decoding = build_model(cfg, for_training=False, adapter_dir=run_dir / "adapter", tokenizer=trained.tokenizer)
    assert decoding.merged and not decoding.model.training and not decoding.trainable
    assert not any(p.requires_grad for p in decoding.model.parameters())
    assert set(trained.trainable) and all(p.requires_grad for p in trained.trainable.values())
    assert decoding.base_fingerprint == trained.base_fingerprint
    ids = torch.tensor([trained.tokenizer.encode("name : Aromi | food : Chinese") + [50256]])
    trained.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(decoding.model(ids), trained.model(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "override, message",
    [("model.init_seed=1", "base"), ("adapter.rank=2", "differs"), ("adapter=nola", "differs")],
)
def test_adapter_model_mismatch(reference, data_dir, vocab_dir, tmp_path, override, message):
    cfg = tiny_config(data_dir, vocab_dir, tmp_path, *LORA, override)
    with pytest.raises(NolaError, match=message) as err:
        build_model(cfg, for_training=False, adapter_dir=reference[0] / "adapter")
    assert "\n" not in str(err.value)
