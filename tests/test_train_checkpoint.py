"""Checkpoint files: atomic replacement of `latest`, keep-last-k, verification, interrupted writes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nola import fileio
from nola.errors import NolaError
from nola.training import checkpoint as ckpt


def tensors(value: float) -> dict[str, torch.Tensor]:
    return {"a.weight": torch.full((2, 3), value), "b": torch.arange(4, dtype=torch.float32) * value}


def trainer(value: float) -> dict:
    return {"optimizer": {"state": {0: {"exp_avg": torch.full((3,), value), "step": torch.tensor(3.0)}},
                          "param_groups": [{"lr": 0.1, "params": [0]}]}, "scheduler": {"last_epoch": 3}}


def write(root, step, value=None, keep_last=2):
    value = float(step) if value is None else value
    return ckpt.save_checkpoint(root, step, tensors(value), trainer(value), {"note": "x"}, keep_last=keep_last)


def test_roundtrip_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    assert ckpt.load_latest(root) is None
    write(root, 3)
    loaded = ckpt.load_latest(root)
    assert loaded.step == 3 and loaded.state["note"] == "x"
    assert torch.equal(loaded.tensors["b"], tensors(3.0)["b"])
    assert torch.equal(loaded.trainer["optimizer"]["state"][0]["exp_avg"], torch.full((3,), 3.0))
    assert (root / "latest").read_text().strip() == "step-00000003"


def test_keep_last_k(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4, 5):
        write(root, step, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000004", "step-00000005"]
    assert ckpt.load_latest(root).step == 5


def test_same_step_is_not_rewritten(tmp_path):
    root = tmp_path / "checkpoints"
    write(root, 2, value=2.0)
    write(root, 2, value=9.0)
    assert torch.equal(ckpt.load_latest(root).tensors["a.weight"], torch.full((2, 3), 2.0))


@pytest.mark.parametrize("die_in", ["save_file", "_save_trainer", "_write_bytes", "rename", "pointer"])
def test_kill_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch, die_in):
    """Whatever point of a save dies, `latest` still names a complete, verifiable checkpoint."""
    root = tmp_path / "checkpoints"
    write(root, 1)

    class Killed(BaseException):
        pass

    if die_in == "save_file":
        def die(tensors, path):
            with open(path, "wb") as handle:
                handle.write(b"half a file")
            raise Killed
        monkeypatch.setattr(ckpt, "save_file", die)
    elif die_in == "_save_trainer":
        def die_midway(trainer, path):
            path.write_bytes(b"PK partial")
            raise Killed
        monkeypatch.setattr(ckpt, "_save_trainer", die_midway)
    elif die_in == "_write_bytes":
        original = ckpt._write_bytes

        def die_on_state(path, data):
            original(path, data[: len(data) // 2])
            if path.name == ckpt.STATE_FILE:
                raise Killed
        monkeypatch.setattr(ckpt, "_write_bytes", die_on_state)
    else:
        real_replace = fileio.os.replace

        def die_replace(src, dst):
            is_pointer = str(dst).endswith(ckpt.LATEST)
            if (die_in == "pointer") == is_pointer:
                raise Killed
            return real_replace(src, dst)
        monkeypatch.setattr(fileio.os, "replace", die_replace)
    with pytest.raises(Killed):
        write(root, 2)
    monkeypatch.undo()
    loaded = ckpt.load_latest(root)
    assert loaded.step == 1 and torch.equal(loaded.tensors["a.weight"], torch.full((2, 3), 1.0))
    write(root, 3)  # the next save cleans up and succeeds
    assert ckpt.load_latest(root).step == 3
    assert not list(root.glob(".tmp-*"))


def test_corrupt_checkpoint_is_a_clear_error_and_deleting_it_falls_back(tmp_path):
    root = tmp_path / "checkpoints"
    write(root, 3)
    path = write(root, 4)
    data = bytearray((path / ckpt.TENSORS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / ckpt.TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(NolaError, match="corrupt.*delete") as err:
        ckpt.load_latest(root)
    assert "\n" not in str(err.value)
    shutil.rmtree(path)  # what the message says to do
    assert ckpt.load_latest(root).step == 3


def test_missing_pointer_uses_the_newest_complete_checkpoint(tmp_path):
    """A kill after the rename but before the pointer update leaves a complete newer directory."""
    root = tmp_path / "checkpoints"
    write(root, 1)
    write(root, 2)
    (root / "latest").unlink()
    assert ckpt.load_latest(root).step == 2


def test_state_json_records_manifest(tmp_path):
    path = write(tmp_path / "c", 7)
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    assert state["step"] == 7 and set(state["files"]) == {ckpt.TENSORS_FILE, ckpt.TRAINER_FILE}
