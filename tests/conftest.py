"""Shared fixtures: the real-data mirror (../shared/data, optional) and the GPT-2 vocabulary (shipped)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_path() -> Path:
    """Where the real datasets live: $NOLA_SHARED_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("NOLA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data mirror; tests using it skip cleanly when it is absent."""
    path = shared_data_path()
    if not (path / "e2e" / "test.txt").is_file():
        pytest.skip(f"real data mirror not found at {path}")
    return path


VOCAB_DIR = REPO_ROOT / "tests" / "fixtures" / "vocab"


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    """GPT-2's encoder.json + vocab.bpe, shipped with the tests (OpenAI GPT-2, MIT; the same files as
    microsoft/LoRA examples/NLG/vocab, sha256 in tests/fixtures/vocab/README.md)."""
    return VOCAB_DIR


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module's tiny-model tests: op-by-op work spin-waits on a busy 2-core
    machine, and subprocesses get OMP_NUM_THREADS=1, so the same thread count keeps bitwise comparisons."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
