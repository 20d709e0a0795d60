"""Decoding a split: LoRA's text post-processing, the hypothesis files, rank sharding, and the
`python -m nola.decode` entry point on a tiny random model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from nola.config import load_config
from nola.data import Example, load_reference_groups
from nola.data.records import split_path, write_examples
from nola.data.references import group_references, write_reference_files
from nola.decode import DecodeConfig, Hypothesis, beam_search, decode_split, hypothesis_text, write_hypotheses
from nola.decode.stage import decode_from_config
from nola.errors import NolaError
from nola.model import GPT2Config, init_gpt2
from nola.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
CONTEXTS = [
    "name : Aromi | food : Chinese | area : city centre",
    "name : The Mill | area : riverside",
    "name : Zizzi | food : English | area : riverside | family friendly : no",
    "name : Cocum",
    "name : Loch Fyne | food : French",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = DecodeConfig(beam=3, max_new_tokens=5, batch_size=2)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tokenizer(vocab_dir):
    return load_tokenizer(vocab_dir)


@pytest.fixture(scope="module")
def model():
    """A random tiny GPT-2 whose bos/eos row is zero: with tied embeddings a random model repeats
    its last token, and every prompt ends with 50256, so it would stop at once."""
    model = init_gpt2(GPT2Config.named("tiny"), seed=3).eval()
    with torch.no_grad():
        model.transformer.wte.weight[50256] = 0.0
    return model


@pytest.mark.parametrize(
    "text, expected",
    [
        (" The Mill serves food.<|endoftext|>", "The Mill serves food."),
        (" The Mill serves food.\n\n", "The Mill serves food."),  # eos id 628
        (" The Mill\n\n serves food.", "The Mill"),  # a blank line from other tokens cuts too
        (" The Mill\nserves  food. ", "The Mill serves food."),  # one line, whitespace runs joined
        ("<|endoftext|>", ""),
    ],
)
def test_text_is_cut_as_lora_gpt2_decode_does(tokenizer, text, expected):
    tokens = tokenizer.encode(text.replace("<|endoftext|>", "")) + ([50256] if "<|endoftext|>" in text else [])
    assert hypothesis_text(tokenizer, tokens) == expected


def test_blank_line_from_two_newline_tokens_cuts(tokenizer):
    assert hypothesis_text(tokenizer, [383, 9212, 198, 198, 9179]) == "The Mill"


def test_decode_split_prompts_are_context_plus_bos_in_order(model, tokenizer):
    found = decode_split(model, tokenizer, CONTEXTS, SMALL, progress=False)
    prompts = [tokenizer.encode(c) + [50256] for c in CONTEXTS]
    expected = beam_search(model, prompts, beam=3, max_new_tokens=5, batch_size=1)
    assert [h.index for h in found] == list(range(len(CONTEXTS)))
    assert [h.context for h in found] == CONTEXTS
    assert [h.tokens for h in found] == expected
    assert all(h.text == hypothesis_text(tokenizer, h.tokens) for h in found)
    assert all(len(h.tokens) == 5 and h.text for h in found)


def test_ranks_split_the_contexts_and_rank_0_gathers(model, tokenizer, monkeypatch):
    """Two ranks simulated in one process: their shares are disjoint, cover every context, and the
    gathered list equals the single-process answer."""
    single = decode_split(model, tokenizer, CONTEXTS, SMALL, progress=False)
    shares: dict[int, list[Hypothesis]] = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)

    def as_rank(rank: int) -> list[Hypothesis]:
        def gather_object(obj, object_gather_list=None, dst=0):
            shares[rank] = obj
            if object_gather_list is not None:
                object_gather_list[:] = [shares[0], shares[1]]

        monkeypatch.setattr(dist, "get_rank", lambda: rank)
        monkeypatch.setattr(dist, "gather_object", gather_object)
        return decode_split(model, tokenizer, CONTEXTS, SMALL, progress=False)

    assert as_rank(1) == []
    gathered = as_rank(0)
    assert [(h.index, h.tokens, h.text) for h in gathered] == [(h.index, h.tokens, h.text) for h in single]
    assert [h.score for h in gathered] == pytest.approx([h.score for h in single], rel=1e-5)
    indices = [h.index for h in shares[0]] + [h.index for h in shares[1]]
    assert sorted(indices) == list(range(len(CONTEXTS))) and min(len(shares[0]), len(shares[1])) >= 2


def test_write_hypotheses_writes_lines_and_records(tmp_path):
    hypotheses = [
        Hypothesis(0, "a", [383, 50256], -0.5, True, "The"),
        Hypothesis(1, "b", [9212, 9212], None, False, ""),
    ]
    text_path, records_path = write_hypotheses(hypotheses, tmp_path / "out", "test")
    assert text_path.read_text(encoding="utf-8") == "The\n\n"
    records = [json.loads(line) for line in records_path.read_text(encoding="utf-8").splitlines()]
    assert records[0] == {
        "index": 0, "context": "a", "tokens": [383, 50256], "score": -0.5, "finished": True, "text": "The"
    }
    assert records[1]["score"] is None and records[1]["text"] == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test_hypotheses.jsonl", "test_hypotheses.txt"]


def test_write_hypotheses_refuses_a_missing_context(tmp_path):
    with pytest.raises(NolaError, match="one per context"):
        write_hypotheses([Hypothesis(1, "b", [1], -1.0, False, "x")], tmp_path, "test")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A prepared E2E task whose test split has 4 examples over 3 distinct contexts."""
    root = tmp_path_factory.mktemp("data")
    examples = [Example(CONTEXTS[0], "Aromi is Chinese."), Example(CONTEXTS[1], "The Mill is by the river."),
                Example(CONTEXTS[0], "Aromi serves Chinese food."), Example(CONTEXTS[3], "Cocum.")]
    for split in ("train", "valid", "test"):
        write_examples(split_path(root, "e2e", split), examples)
        if split != "train":
            write_reference_files(root, "e2e", split, group_references(examples))
    return root


def overrides(data_dir: Path, vocab_dir: Path, runs: Path, *extra: str) -> list[str]:
    return ["model=tiny", "task=e2e", "decode=e2e", f"task.data_dir={data_dir}", f"paths.vocab_dir={vocab_dir}",
            f"paths.runs_dir={runs}", f"paths.cache_dir={runs}/cache", "train.device=cpu", "decode.beam=2",
            "decode.max_new_tokens=4", *extra]


def test_cli_function_decodes_each_reference_group_once(data_dir, vocab_dir, tmp_path):
    cfg = load_config(overrides(data_dir, vocab_dir, tmp_path, "adapter=none"))
    summary = decode_from_config(cfg, tmp_path / "run")
    groups = load_reference_groups(data_dir, "e2e", "test")
    assert summary["contexts"] == len(groups) == 3
    lines = Path(summary["hypotheses"]).read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[-1] == ""  # three newline-terminated lines
    records = [json.loads(line) for line in Path(summary["records"]).read_text(encoding="utf-8").splitlines()]
    assert [r["context"] for r in records] == [g.context for g in groups]
    assert [r["text"] for r in records] == lines[:3]


def test_cli_without_a_trained_adapter_says_what_to_do(data_dir, vocab_dir, tmp_path):
    cfg = load_config(overrides(data_dir, vocab_dir, tmp_path, "adapter=lora"))
    with pytest.raises(NolaError, match="no trained adapter at .*train first"):
        decode_from_config(cfg, tmp_path / "run")


def test_module_entry_point(data_dir, vocab_dir, tmp_path):
    args = overrides(data_dir, vocab_dir, tmp_path, "adapter=none", "name=decoded", f"decode.out_dir={tmp_path}/out")
    done = subprocess.run([sys.executable, "-m", "nola.decode", *args], cwd=REPO, capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["contexts"] == 3
    assert len((tmp_path / "out" / "test_hypotheses.txt").read_text(encoding="utf-8").splitlines()) == 3
    failed = subprocess.run([sys.executable, "-m", "nola.decode", *args, "decode.beam=0"], cwd=REPO,
                            capture_output=True, text=True, env=ENV,
                            timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "error: decode.beam=0 must be between 1 and" in failed.stderr


@pytest.mark.slow
def test_torchrun_two_processes_write_what_one_process_writes(data_dir, vocab_dir, tmp_path):
    args = overrides(data_dir, vocab_dir, tmp_path, "adapter=none", "name=decoded")
    one = subprocess.run([sys.executable, "-m", "nola.decode", *args, f"decode.out_dir={tmp_path}/one"], cwd=REPO,
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "nola.decode", *args,
                          f"decode.out_dir={tmp_path}/two"], cwd=REPO, capture_output=True, text=True, env=ENV,
                         timeout=600)
    assert two.returncode == 0, two.stderr
    assert json.loads(two.stdout)["processes"] == 2
    texts = [(tmp_path / run / "test_hypotheses.txt").read_text(encoding="utf-8") for run in ("one", "two")]
    assert texts[0] == texts[1] and texts[0].count("\n") == 3
    records = [[json.loads(line) for line in (tmp_path / run / "test_hypotheses.jsonl").read_text().splitlines()]
               for run in ("one", "two")]
    assert [{**r, "score": None} for r in records[0]] == [{**r, "score": None} for r in records[1]]
    assert [r["score"] for r in records[0]] == pytest.approx([r["score"] for r in records[1]], rel=1e-5)
