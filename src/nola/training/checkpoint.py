"""Resumable training checkpoints, written so that a kill at any moment leaves a usable one.

Layout of `<run_dir>/checkpoints/`:

    step-00001000/trainable.safetensors   the exact trainable tensors (adapter_params names)
    step-00001000/optimizer.pt            optimizer and gradient-scaler state
    step-00001000/state.json              step, data position, history, config, sha256 of the files
    latest                                the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory, flushed and renamed into place
(`nola.fileio.atomic_directory`); only then is `latest` replaced (`nola.fileio.write_text_atomic`). A crash mid-write thus
leaves `latest` pointing at the previous, complete checkpoint, and the leftover temp directory is
removed by the next save. Loading verifies every file's sha256 and reads tensors safely
(safetensors; torch.load with weights_only=True).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nola.errors import NolaError
from nola.fileio import atomic_directory, sha256_file, write_text_atomic

LATEST = "latest"
TENSORS_FILE = "trainable.safetensors"
TRAINER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
STEP_DIR = re.compile(r"^step-(\d{8,})$")
TEMP_PREFIX = ".tmp-"


@dataclass
class Checkpoint:
    """A loaded checkpoint: where it is, its tensors, trainer state and JSON state."""

    path: Path
    tensors: dict[str, torch.Tensor]
    trainer: dict
    state: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    root: Path, step: int, tensors: dict[str, torch.Tensor], trainer: dict, state: dict, *, keep_last: int
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, prune to `keep_last`; return its path.

    A step that `latest` already names is not written again: the loop saves each step once, after
    that step's validation, so the same step never carries two different states.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    if latest_name(root) == final.name:
        return final
    remove_temporaries(root)
    with atomic_directory(final, staging_prefix=f"{TEMP_PREFIX}{final.name}-") as temp:
        save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, str(temp / TENSORS_FILE))
        _save_trainer(trainer, temp / TRAINER_FILE)
        manifest = {name: sha256_file(temp / name) for name in (TENSORS_FILE, TRAINER_FILE)}
        _write_bytes(temp / STATE_FILE, json.dumps({**state, "step": step, "files": manifest}, indent=2).encode())
    write_text_atomic(root / LATEST, f"{final.name}\n")
    prune(root, keep_last)
    return final


def latest_name(root: Path) -> str | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    return pointer.read_text(encoding="utf-8").strip() or None


def load_latest(root: Path) -> Checkpoint | None:
    """The checkpoint `latest` points to (verified), or None when the run has none yet.

    If the pointer is missing or names a directory that is gone (deleted by hand after a corruption
    error), the newest remaining checkpoint is used: every step directory is complete by construction.
    """
    name = latest_name(root)
    if name is None or not STEP_DIR.match(name) or not (root / name).is_dir():
        steps = _step_dirs(root)
        if not steps:
            return None
        name = steps[-1].name
    return load_checkpoint(root / name)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint directory."""
    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        manifest = state["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NolaError(
            f"{state_path}: unreadable checkpoint state ({err}); delete {path} to resume from an older one"
        ) from None
    for name, digest in manifest.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise NolaError(
                f"{path / name} is missing or corrupt (sha256 mismatch); delete {path} to resume from an older one"
            )
    try:
        tensors = load_file(str(path / TENSORS_FILE))
        trainer = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as err:
        raise NolaError(f"{path}: cannot read checkpoint ({str(err).splitlines()[0]})") from None
    return Checkpoint(path, tensors, trainer, state)


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (never the one `latest` names)."""
    keep = latest_name(root)
    steps = _step_dirs(root)
    for old in steps[: max(0, len(steps) - keep_last)]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def _step_dirs(root: Path) -> list[Path]:
    """The step directories under `root`, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def remove_temporaries(root: Path) -> None:
    """Remove what an interrupted save left behind."""
    for leftover in root.glob(f"{TEMP_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)



def _save_trainer(trainer: dict, path: Path) -> None:
    torch.save(trainer, path)


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
