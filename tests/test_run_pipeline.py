"""`nola.run`: train → decode → score → results.json on the tiny model, resuming stage by stage,
and the per-dataset scripts. The scorers are replaced by recorders here (tests/test_mini_smoke.py
runs the real ones); what is asserted is what each stage hands to the next."""

from __future__ import annotations

import dataclasses

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import nola.decode.stage as decode_stage_module
import nola.pipeline as pipeline
import nola.tasks
from nola.config import compose_config, load_config, seed_configs
from nola.data import Example, ReferenceGroup, load_reference_groups
from nola.data.records import split_path, write_examples
from nola.data.references import group_references, write_reference_files
from nola.errors import NolaError
from nola.layout import RESULTS_NAME as RESULTS_FILE
from nola.pipeline import run, training_done
from nola.tasks import score_groups as score
from nola.tables import read_result
from train_support import synthetic_examples

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
E2E_KEYS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A prepared E2E task: 16 training pairs, valid/test with their reference groups."""
    root = tmp_path_factory.mktemp("data")
    for split, count, seed in (("train", 16, 1), ("valid", 4, 2), ("test", 6, 3)):
        examples = [Example(**row) for row in synthetic_examples(count, seed)]
        write_examples(split_path(root, "e2e", split), examples)
        if split != "train":
            write_reference_files(root, "e2e", split, group_references(examples))
    return root


def tiny_overrides(data_dir: Path, vocab_dir: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "~decode", "model=tiny", "task=e2e", "train=smoke", f"task.data_dir={data_dir}", f"paths.vocab_dir={vocab_dir}",
        f"paths.runs_dir={runs}", f"paths.cache_dir={runs}/cache", "train.device=cpu", "decode.beam=2",
        "decode.max_new_tokens=6", *extra,
    ]


def tiny(data_dir: Path, vocab_dir: Path, runs: Path, *extra: str):
    return load_config(tiny_overrides(data_dir, vocab_dir, runs, *extra))


def with_section(cfg, section: str, **changes):
    """`cfg` with some keys of one section changed."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


class Recorder:
    """Stands in for a stage and remembers its calls; `fail` makes any call an error."""

    def __init__(self, result=None, fail: bool = False):
        self.calls: list[tuple] = []
        self.result, self.fail = result, fail

    def __call__(self, *args, **kwargs):
        if self.fail:
            raise AssertionError("this stage should have been skipped")
        self.calls.append(args)
        return self.result(*args) if callable(self.result) else self.result


def fake_e2e(references, hypotheses):
    return {key: 0.5 for key in E2E_KEYS} | {"NIST": float(len(hypotheses)), "CIDEr": float(len(references[0]))}


@pytest.fixture()
def fake_scorer(monkeypatch):
    scorer = Recorder(lambda task, groups, hypotheses: fake_e2e([g.references for g in groups], hypotheses))
    monkeypatch.setattr(pipeline, "score_groups", scorer)
    return scorer


def test_run_writes_a_valid_results_json_then_rerun_skips_every_stage(data_dir, vocab_dir, tmp_path, fake_scorer,
                                                                     monkeypatch):
    cfg = tiny(data_dir, vocab_dir, tmp_path, "adapter=lora")
    results = run(cfg, tmp_path / "run", experiment="e2e/lora_tiny", tag="test")
    assert read_result(tmp_path / "run" / RESULTS_FILE) == results
    assert results["trainable_params"] == 2 * 2 * 4 * (64 + 64)  # 2 layers, q and v, r = 4, d = 64
    assert results["adapter_file_bytes"] == (tmp_path / "run" / "adapter" / "adapter.safetensors").stat().st_size
    assert results["training"]["steps"] == 2 and results["experiment"] == "e2e/lora_tiny"
    groups = [json.loads(line) for line in (data_dir / "e2e" / "test_references.jsonl").read_text().splitlines()]
    ((task, scored_groups, hypotheses),) = fake_scorer.calls
    assert task == "e2e" and [g.references for g in scored_groups] == [g["references"] for g in groups]
    assert (tmp_path / "run" / "test_hypotheses.txt").read_text(encoding="utf-8") == "".join(h + "\n" for h in hypotheses)
    assert results["metrics"]["NIST"] == len(groups) and results["contexts"] == len(groups)

    monkeypatch.setattr(pipeline, "train", Recorder(fail=True))
    monkeypatch.setattr(decode_stage_module, "decode_split", Recorder(fail=True))
    monkeypatch.setattr(pipeline, "score_groups", Recorder(fail=True))
    assert run(cfg, tmp_path / "run", experiment="e2e/lora_tiny", tag="test") == results


def test_new_settings_decode_again_and_new_references_score_again(data_dir, vocab_dir, tmp_path, fake_scorer,
                                                                   monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    cfg = tiny(data, vocab_dir, tmp_path, "adapter=nola", "adapter.num_basis_a=8", "adapter.num_basis_b=8")
    first = run(cfg, tmp_path / "run")
    monkeypatch.setattr(pipeline, "train", Recorder(fail=True))
    decoder = Recorder(decode_stage_module.decode_split)
    monkeypatch.setattr(decode_stage_module, "decode_split", decoder)
    shorter = with_section(cfg, "decode", max_new_tokens=3)
    second = run(shorter, tmp_path / "run")
    assert len(decoder.calls) == 1 and decoder.calls[0][3].max_new_tokens == 3
    assert second["training"] == first["training"]

    groups = load_reference_groups(data, "e2e", "test")
    write_reference_files(data, "e2e", "test", [ReferenceGroup(g.context, g.references + ["Extra."]) for g in groups])
    monkeypatch.setattr(decode_stage_module, "decode_split", Recorder(fail=True))
    third = run(shorter, tmp_path / "run")
    assert fake_scorer.calls[-1][1][0].references[-1] == "Extra." and len(fake_scorer.calls) == 3
    assert third["metrics"]["CIDEr"] == len(groups[0].references) + 1  # the recorder's stand-in metric


def test_frozen_base_is_decoded_without_training(data_dir, vocab_dir, tmp_path, fake_scorer, monkeypatch):
    monkeypatch.setattr(pipeline, "train", Recorder(fail=True))
    results = run(tiny(data_dir, vocab_dir, tmp_path, "adapter=none"), tmp_path / "run")
    assert results["trainable_params"] == 0 and results["adapter_file_bytes"] == 0
    assert results["timings"]["train_s"] == 0 and not (tmp_path / "run" / "adapter").exists()


def test_budget_stopped_training_counts_as_done_while_the_budget_stands():
    budget = lambda **kw: OmegaConf.create({"max_steps": 0, "max_time_s": 0.0, **kw})  # noqa: E731
    assert training_done({"completed": True, "stop_reason": "finished"}, budget())
    assert training_done({"completed": False, "stop_reason": "max_time"}, budget(max_time_s=60.0))
    assert not training_done({"completed": False, "stop_reason": "max_time"}, budget())
    assert training_done({"completed": False, "stop_reason": "max_steps", "steps": 5}, budget(max_steps=5))
    assert not training_done({"completed": False, "stop_reason": "max_steps", "steps": 5}, budget(max_steps=9))


def test_webnlg_and_dart_are_scored_with_generation_eval_scales(monkeypatch):
    calls = []

    def score_webnlg(references, hypotheses, seen, num_refs):
        calls.append((references, hypotheses, seen))
        return {"all": {"BLEU": 46.52, "METEOR": 0.39, "TER": 0.46}, "seen": {"BLEU": 50.0, "METEOR": 0.4, "TER": 0.4},
                "unseen": {"BLEU": 25.0, "METEOR": 0.3, "TER": 0.5}}

    monkeypatch.setattr(nola.tasks, "score_webnlg", score_webnlg)
    monkeypatch.setattr(nola.tasks, "score_gem", lambda references, hypotheses, num_refs: {"BLEU": 46.52, "METEOR": 0.39, "TER": 0.46})
    groups = [ReferenceGroup("a", ["A"], "Airport", True), ReferenceGroup("b", ["B"], "Film", False),
              ReferenceGroup("c", ["C", "C2"], "Food", True)]
    metrics = score("webnlg", groups, ["x", "y", "z"])
    assert calls == [([["A"], ["B"], ["C", "C2"]], ["x", "y", "z"], [True, False, True])]
    # eval/README.md: GenerationEval prints "BLEU = 46.52" (0-100); METEOR and TER stay fractions
    assert metrics["all"] == pytest.approx({"BLEU": 46.52, "METEOR": 0.39, "TER": 0.46})
    assert metrics["unseen"]["BLEU"] == pytest.approx(25.0) and metrics["seen"]["TER"] == 0.4
    assert score("dart", groups, ["x", "y", "z"]) == pytest.approx({"BLEU": 46.52, "METEOR": 0.39, "TER": 0.46})


def test_decoding_the_train_split_is_refused(data_dir, vocab_dir, tmp_path):
    with pytest.raises(NolaError, match="decode.split"):
        run(tiny(data_dir, vocab_dir, tmp_path, "decode.split=train"), tmp_path / "run")


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("task, adapter, cell", [("e2e", "lora_r1", "e2e/lora_gpt2m_r1"), ("dart", "nola", "dart/nola_gpt2m")])
def test_dataset_scripts_run_the_paper_cell(task, adapter, cell):
    result = script(f"scripts/{task}.sh", adapter, "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert f"name: {cell}" in result.stdout


@pytest.mark.parametrize("args, message", [(("e2e", "bogus"), "unknown adapter 'bogus'"),
                                           (("webnlg", "ft"), "conf/experiment/webnlg/ft_gpt2m.yaml")])
def test_dataset_scripts_refuse_unknown_cells(args, message):
    task, adapter = args
    result = script(f"scripts/{task}.sh", adapter)
    assert result.returncode == 2 and message in result.stderr


def test_the_seed_decides_the_adapter_and_the_hypotheses(data_dir, vocab_dir, tmp_path, fake_scorer):
    """Same config and seed twice: bitwise the same adapter and hypotheses; another seed: others.
    `seeds=2` runs train.seed and train.seed + 1, one directory each."""
    for adapter in (["adapter=lora"], ["adapter=nola", "adapter.num_basis_a=8", "adapter.num_basis_b=8"]):
        name = adapter[0].split("=")[1]
        configs = seed_configs(compose_config(tiny_overrides(data_dir, vocab_dir, tmp_path, *adapter, "train.max_steps=0",
                                                             "train.epochs=2", "train.batch_size=4", "seeds=2")))
        first = pipeline.run_seeds(configs, tmp_path / f"{name}-a", tag="t")
        again = pipeline.run(tiny(data_dir, vocab_dir, tmp_path, *adapter, "train.max_steps=0", "train.epochs=2",
                                  "train.batch_size=4"), tmp_path / f"{name}-b")
        assert [r["seed"] for r in first] == [110, 111] and again["seed"] == 110
        assert [r["tag"] for r in first] == ["t/seed-110", "t/seed-111"]
        files = [Path(r["run_dir"]) for r in (*first, again)]
        assert files[0] == tmp_path / f"{name}-a" / "seed-110" and files[1] == tmp_path / f"{name}-a" / "seed-111"
        weights = [(d / "adapter" / "adapter.safetensors").read_bytes() for d in files]
        hypotheses = [(d / "test_hypotheses.txt").read_bytes() for d in files]
        assert weights[0] == weights[2] and hypotheses[0] == hypotheses[2]
        assert weights[0] != weights[1]
        assert first[0]["config_key"] == first[1]["config_key"] == again["config_key"]


def test_each_epoch_keeps_its_adapter_and_the_best_is_reported(data_dir, vocab_dir, tmp_path, fake_scorer,
                                                               monkeypatch):
    cfg = tiny(data_dir, vocab_dir, tmp_path, "adapter=lora", "train.max_steps=0", "train.epochs=3",
               "train.batch_size=4")
    results = run(cfg, tmp_path / "run")
    training = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    losses = {entry["epoch"]: entry["loss"] for entry in training["valid"]}
    assert sorted(losses) == [1, 2, 3]
    for epoch in losses:
        saved = json.loads((tmp_path / "run" / "epochs" / f"epoch-{epoch}" / "adapter_config.json").read_text())
        assert saved["extra"]["train"]["epoch"] == epoch
    best = min(losses, key=lambda epoch: (losses[epoch], epoch))
    selection = results["selection"]
    assert selection["by"] == "valid_loss" and selection["epoch"] == best
    assert selection["candidates"] == {str(e): v for e, v in losses.items()}
    decoded = json.loads((tmp_path / "run" / "decode.json").read_text())
    assert decoded["adapter_dir"] == str(tmp_path / "run" / "epochs" / f"epoch-{best}")

    # choosing by validation BLEU decodes the validation split with every epoch's adapter
    bleu = pipeline.select_epoch(with_section(cfg, "train", select_epoch="valid_bleu"), tmp_path / "run",
                                 tmp_path / "run" / "adapter", training)[1]
    assert bleu["by"] == "valid_bleu" and sorted(bleu["candidates"]) == ["1", "2", "3"]
    assert all((tmp_path / "run" / "epochs" / f"epoch-{e}" / "valid_hypotheses.txt").is_file() for e in (1, 2, 3))
    top = max(bleu["candidates"].values())
    assert bleu["epoch"] == min(int(e) for e, v in bleu["candidates"].items() if v == top)
    last = pipeline.select_epoch(with_section(cfg, "train", select_epoch="last"), tmp_path / "run",
                                 tmp_path / "run" / "adapter", training)
    assert last[0] == tmp_path / "run" / "adapter" and last[1]["by"] == "last"


@pytest.mark.parametrize("overrides, message", [
    (["train.select_epoch=best"], "train.select_epoch='best'; choose one of valid_loss, valid_bleu, last"),
    (["train.save_epoch_adapters=false"], "set train.save_epoch_adapters=true or train.select_epoch=last"),
    (["train.eval_every_epoch=false"], "train.select_epoch=valid_loss needs the validation loss of every epoch"),
    (["seeds=0"], "seeds=0 must be at least 1"),
])
def test_bad_protocol_settings_are_named(data_dir, vocab_dir, tmp_path, overrides, message):
    with pytest.raises(NolaError, match=re.escape(message)):
        run(tiny(data_dir, vocab_dir, tmp_path, "adapter=lora", *overrides), tmp_path / "run")
