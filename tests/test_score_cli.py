"""`python -m nola.score`: official numbers through the CLI, and its one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nola.metrics.java
import nola.score
from nola.score import main
from nola.tasks import get_task

FIXTURES = Path(__file__).parent / "fixtures" / "scoring"
OFFICIAL = json.loads((FIXTURES / "official_scores.json").read_text(encoding="utf-8"))
E2E_REFS = FIXTURES / "e2e_example" / "devel-conc.txt"
E2E_HYPS = FIXTURES / "e2e_example" / "baseline-output.txt"
SMALL = FIXTURES / "webnlg_small"
SMALL_REFS = [str(SMALL / f"reference{index}") for index in range(6)]

requires_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime")


def run_main(capsys, *argv: str) -> tuple[dict, str]:
    """The printed scores (their "scale" note checked and removed) and stderr."""
    main(list(argv))
    captured = capsys.readouterr()
    scores = json.loads(captured.out)
    task = argv[argv.index("--task") + 1]
    expected = "BLEU 0-100" if task in ("webnlg", "dart") else "BLEU, METEOR, ROUGE_L fractions"
    assert expected in scores.pop("scale")
    return scores, captured.err


def expect_user_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


@requires_java
def test_e2e_with_an_empty_hypothesis_matches_measure_scores(capsys, tmp_path):
    # e2e-metrics' own example (first 10 dev MRs, TGen outputs) with the 3rd output emptied
    lines = E2E_HYPS.read_text(encoding="utf-8").split("\n")
    lines[2] = ""
    hyps = tmp_path / "hyps.txt"
    hyps.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "scores.json"
    scores, err = run_main(capsys, "--task", "e2e", "--refs", str(E2E_REFS), "--hyps", str(hyps), "--out", str(out))
    assert "warning:" in err and "1 empty hypotheses (line 3)" in err
    official = OFFICIAL["e2e_example_line3_empty"]
    assert list(scores) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert scores == pytest.approx(official, abs=1e-9)
    assert json.loads(out.read_text(encoding="utf-8")) == {"scale": get_task("e2e").scale, **scores}


@requires_java
def test_webnlg_with_categories_matches_generation_eval(capsys):
    # 25 seen + 25 unseen WebNLG 2017 test instances, Tilburg SMT outputs; every file ends with a
    # newline, which GenerationEval would have counted as one more (empty) instance
    scores, err = run_main(capsys, "--task", "webnlg", "--refs", *SMALL_REFS, "--hyps", str(SMALL / "hypothesis"),
                           "--categories", str(SMALL / "categories"))
    assert err == ""
    assert list(scores) == ["all", "seen", "unseen"]
    for subset, official in OFFICIAL["webnlg_small"].items():
        assert f"{scores[subset]['BLEU']:.2f}" == f"{official['BLEU']:.2f}"
        assert scores[subset]["METEOR"] == pytest.approx(official["METEOR"], abs=1e-9)
        assert scores[subset]["TER"] == pytest.approx(official["TER"], abs=1e-9)


def test_e2e_line_count_mismatch(capsys, tmp_path):
    hyps = tmp_path / "hyps.txt"
    hyps.write_text("one\ntwo\nthree\n", encoding="utf-8")
    message = expect_user_error(capsys, "--task", "e2e", "--refs", str(E2E_REFS), "--hyps", str(hyps))
    assert str(hyps) in message and "3 hypotheses" in message and "10" in message


def test_gem_reference_files_of_different_lengths(capsys, tmp_path):
    short = tmp_path / "reference5"
    short.write_text("only one line\n", encoding="utf-8")
    message = expect_user_error(capsys, "--task", "dart", "--refs", *SMALL_REFS[:5], str(short),
                                "--hyps", str(SMALL / "hypothesis"))
    assert str(short) in message and "1 lines" in message and "50" in message


def test_non_utf8_file_names_file_and_line(capsys, tmp_path):
    hyps = tmp_path / "latin1.txt"
    hyps.write_bytes(b"fine\nCaf\xe9 au lait\n")
    message = expect_user_error(capsys, "--task", "e2e", "--refs", str(E2E_REFS), "--hyps", str(hyps))
    assert str(hyps) in message and "line 2" in message and "UTF-8" in message


def test_missing_file(capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    message = expect_user_error(capsys, "--task", "e2e", "--refs", str(missing), "--hyps", str(E2E_HYPS))
    assert str(missing) in message and "not found" in message


def test_bad_category_value(capsys, tmp_path):
    categories = tmp_path / "categories.txt"
    categories.write_text("seen\n" * 10 + "Seen\n" + "unseen\n" * 39, encoding="utf-8")
    message = expect_user_error(capsys, "--task", "webnlg", "--refs", *SMALL_REFS, "--hyps", str(SMALL / "hypothesis"),
                                "--categories", str(categories))
    assert str(categories) in message and "line 11" in message and "'Seen'" in message


def test_e2e_reference_file_with_an_empty_group(capsys, tmp_path):
    refs = tmp_path / "refs.txt"
    refs.write_text("a\nb\n\n\nc\n", encoding="utf-8")
    message = expect_user_error(capsys, "--task", "e2e", "--refs", str(refs), "--hyps", str(E2E_HYPS))
    assert str(refs) in message and "line 4" in message


def test_java_missing(capsys, monkeypatch):
    monkeypatch.setattr(nola.metrics.java.shutil, "which", lambda name: None)
    message = expect_user_error(capsys, "--task", "e2e", "--refs", str(E2E_REFS), "--hyps", str(E2E_HYPS))
    assert "java" in message and "apt-get install default-jre-headless" in message


def test_empty_hypotheses_are_scored_not_dropped(capsys, monkeypatch, tmp_path):
    seen = {}

    def fake_score_gem(references, hypotheses, *, num_refs):
        seen.update(references=references, hypotheses=hypotheses, num_refs=num_refs)
        return {"BLEU": 0.5, "METEOR": 0.25, "TER": 0.75}

    monkeypatch.setattr(nola.tasks, "score_gem", fake_score_gem)
    ref0, ref1, hyps = tmp_path / "reference0", tmp_path / "reference1", tmp_path / "hyps"
    ref0.write_text("a b\nc d\ne f\n", encoding="utf-8")
    ref1.write_text("a\nc\ne\n", encoding="utf-8")
    hyps.write_text("a b\n\ne\n", encoding="utf-8")
    scores, err = run_main(capsys, "--task", "dart", "--refs", str(ref0), str(ref1), "--hyps", str(hyps))
    assert scores == {"BLEU": 0.5, "METEOR": 0.25, "TER": 0.75}
    assert "1 empty hypotheses (line 2)" in err
    assert seen == {"references": [["a b", "a"], ["c d", "c"], ["e f", "e"]], "hypotheses": ["a b", "", "e"],
                    "num_refs": 2}


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    missing = tmp_path / "missing.txt"
    result = subprocess.run([sys.executable, "-m", "nola.score", "--task", "e2e", "--refs", str(missing),
                             "--hyps", str(missing)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {missing}: file not found"
