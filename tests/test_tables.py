"""Paper tables from results.json (nola.tables): layout, published data, figure, bad input.

Expected rows are written by hand: published cells are the papers' printed numbers (LoRA Table 3,
13, 14; the NOLA project-page table), ours are the hand-scaled results below (E2E BLEU 0.7012 ->
70.1, NIST 8.7654 -> 8.77, ...).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from nola.errors import NolaError
from nola.tables import build_tables, collect_results, load_published, plot_params_vs_bleu, read_result
from nola.tables.__main__ import main
from nola.tables.published import DEFAULT_PUBLISHED

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

E2E_NOLA_L = {
    "schema": 1, "experiment": "e2e/nola_gpt2l", "task": "e2e", "split": "test", "model": "gpt2-large",
    "adapter": {"kind": "nola", "rank": 8, "alpha": 2, "num_basis_a": 256, "num_basis_b": 256,
                "targets": ["q", "v"], "modules": ["c_attn"], "quant_bits": None},
    "trainable_params": 36864, "adapter_file_bytes": 9876,
    "metrics": {"BLEU": 0.7012, "NIST": 8.7654, "METEOR": 0.4678, "ROUGE_L": 0.7181, "CIDEr": 2.5234},
    "timings": {"train_s": 1.0, "decode_s": 1.0, "score_s": 1.0}, "device": "cpu", "date": "2026-11-23",
    "run_dir": "runs/e2e_nola_l", "tag": None,
}
WEBNLG_LORA_M = {
    "schema": 1, "experiment": None, "task": "webnlg", "split": "test", "model": "gpt2-medium",
    "adapter": {"kind": "lora", "rank": 4, "alpha": 32, "targets": ["q", "v"], "modules": ["c_attn"]},
    "trainable_params": 393216,
    "metrics": {"all": {"BLEU": 55.12, "METEOR": 0.4123, "TER": 0.3912},
                "seen": {"BLEU": 62.31, "METEOR": 0.4432, "TER": 0.3287},
                "unseen": {"BLEU": 46.58, "METEOR": 0.3812, "TER": 0.4623}},
    "run_dir": "runs/webnlg_lora_m", "tag": "paper",
}
DART_MINI = {
    "schema": 1, "task": "dart", "split": "test", "model": "mini",
    "adapter": {"kind": "nola", "rank": 8, "num_basis_a": 64, "num_basis_b": 64, "quant_bits": 4},
    "trainable_params": 1024, "metrics": {"BLEU": 12.34, "METEOR": 0.2012, "TER": 0.7777},
    "run_dir": "runs/mini_dart", "tag": "mini",
}


@pytest.fixture(scope="module")
def published():
    return load_published(DEFAULT_PUBLISHED)


def write_result(directory: Path, record: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def md_lines(tables: dict[str, str]) -> list[str]:
    return tables["md"].splitlines()


def test_e2e_rows_in_nola_layout_with_ours_after_its_published_row(published):
    lines = md_lines(build_tables([E2E_NOLA_L], published))
    header = "| Method | # Trainable Parameters | BLEU | NIST | MET | ROUGE-L | CIDEr | n | BLEU 95% CI | p vs LoRA | Source |"
    assert header in lines
    lora_m = "| LoRA (r=4) | 0.35M | 70.4±0.1 | 8.85±0.02 | 46.8±0.2 | 71.8±0.1 | 2.53±0.02 | – | – | – | LoRA, Table 3 |"
    finetune_l = "| Finetune | 774.03M | 68.5 | 8.78 | 46.0 | 69.9 | 2.45 | – | – | – | LoRA, Table 3 |"
    nola_l = "| NOLA (r=8) | 0.036M | 70.1 | – | 46.7 | 71.7 | – | – | – | – | NOLA, GPT-2 L E2E table (project page) |"
    ours = "| **NOLA (r=8, k=256, l=256) (ours)** | 0.037M | 70.1 | 8.77 | 46.8 | 71.8 | 2.52 | 1 | – | – | runs/e2e_nola_l |"
    for line in (lora_m, finetune_l, nola_l, ours):
        assert line in lines
    assert lines.index(ours) == lines.index(nola_l) + 1
    assert lines.index("### GPT-2 M") < lines.index(lora_m) < lines.index("### GPT-2 L") < lines.index(finetune_l)


def test_webnlg_and_dart_layouts(published):
    lines = md_lines(build_tables([WEBNLG_LORA_M, DART_MINI], published))
    webnlg_header = ("| Method | # Trainable Parameters | BLEU↑ U | BLEU↑ S | BLEU↑ A | MET↑ U | MET↑ S | MET↑ A "
                     "| TER↓ U | TER↓ S | TER↓ A | n | BLEU 95% CI | p vs LoRA | Source |")
    lora_m = ("| LoRA (r=4) | 0.35M | 46.7±0.4 | 62.1±0.2 | 55.3±0.2 | 0.38 | 0.44 | 0.41 | 0.46 | 0.33 | 0.39 "
              "| – | – | – | LoRA, Table 14 |")
    ours = "| **LoRA (r=4) (ours)** | 0.393M | 46.6 | 62.3 | 55.1 | 0.38 | 0.44 | 0.41 | 0.46 | 0.33 | 0.39 | 1 | – | – | paper |"
    assert webnlg_header in lines and lines.index(ours) == lines.index(lora_m) + 1
    assert "| Method | # Trainable Parameters | BLEU↑ | MET↑ | TER↓ | n | BLEU 95% CI | p vs LoRA | Source |" in lines
    assert "| FT-Top2 | 24M | 41.0 | 0.34 | 0.56 | – | – | – | LoRA, Table 13 |" in lines
    mini = "| **NOLA (r=8, k=64, l=64), 4-bit (ours)** | 1,024 | 12.3 | 0.20 | 0.78 | 1 | – | – | mini |"
    assert lines.index("### mini") < lines.index(mini)


def test_rows_without_published_counterpart_and_without_published_data():
    tables = build_tables([DART_MINI], None)
    lines = md_lines(tables)
    assert "## DART (layout of LoRA Table 13)" in lines and "### mini" in lines
    assert "| **NOLA (r=8, k=64, l=64), 4-bit (ours)** | 1,024 | 12.3 | 0.20 | 0.78 | 1 | – | – | mini |" in lines
    assert "## E2E" not in tables["md"] and "## Sources" not in tables["md"]
    assert r"\textit{NOLA (r=8, k=64, l=64), 4-bit (ours)} & 1,024 & 12.3 & 0.20 & 0.78 & 1 & -- & -- & mini \\" in tables["tex"]


def test_unmatched_run_closes_its_model_block_and_other_splits_are_labelled(published):
    valid_run = dict(E2E_NOLA_L, split="valid", trainable_params=98304, run_dir="runs/v",
                     adapter=dict(E2E_NOLA_L["adapter"], num_basis_a=680, num_basis_b=685))
    lines = md_lines(build_tables([valid_run], published))
    row = "| **NOLA (r=8, k=680, l=685) (ours, valid)** | 0.098M | 70.1 | 8.77 | 46.8 | 71.8 | 2.52 | 1 | – | – | runs/v |"
    block_end = lines.index("## DART (layout of LoRA Table 13)") - 1
    assert lines[block_end - 1] == row


def test_latex_groups_webnlg_headers_and_escapes(published):
    tex = build_tables([WEBNLG_LORA_M], published)["tex"]
    assert (r" &  & \multicolumn{3}{c}{BLEU$\uparrow$} & \multicolumn{3}{c}{MET$\uparrow$} & "
            r"\multicolumn{3}{c}{TER$\downarrow$} &  &  &  &  \\") in tex
    assert r"LoRA (r=4) & 0.35M & 70.4$\pm$0.1 & 8.85$\pm$0.02" in tex
    assert r"\# Trainable Parameters" in tex and tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 3


def test_published_data_loads_and_every_row_has_a_source(published):
    assert set(published.papers) == {"lora", "nola"}
    assert all(paper.url.startswith("https://") for paper in published.papers.values())
    for row in published.rows:
        assert row.paper in published.papers.values()
        assert row.table and row.row and row.where and row.params_text
    counts: dict[tuple[str, str], int] = {}
    for row in published.rows:
        counts[(row.paper.short, row.table)] = counts.get((row.paper.short, row.table), 0) + 1
    # LoRA Table 3 has 12 GPT-2 rows, Tables 13 and 14 have 11 each; 3 NOLA-only rows.
    assert counts == {("LoRA", "Table 3"): 12, ("LoRA", "Table 13"): 11, ("LoRA", "Table 14"): 11,
                      ("NOLA", "GPT-2 L E2E table (project page)"): 3}


def test_figure_draws_frozen_bases_as_lines_not_points():
    from nola.tables.figure import _frozen_bases, _points

    frozen = {**E2E_NOLA_L, "adapter": {"kind": "none"}, "trainable_params": 0,
              "metrics": {**E2E_NOLA_L["metrics"], "BLEU": 0.0280}}
    assert _frozen_bases([E2E_NOLA_L, frozen, DART_MINI]) == {"e2e": [("gpt2-large", pytest.approx(2.8))]}
    [point] = _points([E2E_NOLA_L, frozen], None)["e2e"]
    assert (point.model, point.ours, point.params, point.bleu) == ("gpt2-large", True, 36864, pytest.approx(70.12))
    assert point.label == "NOLA (r=8, k=256, l=256), 0.037M" and point.error is None


def test_figure_is_a_png(tmp_path, published):
    path = tmp_path / "fig" / "params_vs_bleu.png"
    plot_params_vs_bleu([E2E_NOLA_L, WEBNLG_LORA_M, DART_MINI], published, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    plot_params_vs_bleu([], None, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty.png", "fig", "params_vs_bleu.png"]


def test_cli_writes_tables_and_figure(tmp_path, capsys):
    write_result(tmp_path / "runs" / "a", E2E_NOLA_L)
    write_result(tmp_path / "runs" / "b" / "nested", WEBNLG_LORA_M)
    out = tmp_path / "out"
    main(["--results-dir", str(tmp_path / "runs"), "--out", str(out), "--only-tag", "paper"])
    assert sorted(p.name for p in out.iterdir()) == ["params_vs_bleu.png", "tables.md", "tables.tex"]
    markdown = (out / "tables.md").read_text(encoding="utf-8")
    assert "**LoRA (r=4) (ours)**" in markdown and "runs/e2e_nola_l" not in markdown
    assert (out / "params_vs_bleu.png").read_bytes()[:8] == PNG_MAGIC
    assert "1 run(s), 37 published row(s)" in capsys.readouterr().out


def test_malformed_results_json_names_the_file(tmp_path):
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text('{"schema": 1, "task": "e2e",', encoding="utf-8")
    with pytest.raises(NolaError, match=rf"{path}:1:\d+: not valid JSON"):
        collect_results([tmp_path])


def test_schema_mismatch_names_file_and_key(tmp_path):
    path = write_result(tmp_path / "run", dict(E2E_NOLA_L, schema=2))
    with pytest.raises(NolaError, match=rf"{path}: key 'schema' is 2"):
        read_result(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["metrics"].update(BLEU=70.4),
         r"'metrics.BLEU' is 70.4, but e2e results.json stores BLEU as a fraction"),
        (lambda r: r["metrics"].pop("CIDEr"), r"missing metric 'metrics.CIDEr'"),
        (lambda r: r["metrics"].update(NIST="8.7"), r"'metrics.NIST' must be a finite number"),
        (lambda r: r.update(task="wmt"), r"key 'task' is 'wmt'"),
        (lambda r: r.update(trainable_params=-1), r"'trainable_params' must be a non-negative integer"),
        (lambda r: r.pop("adapter"), r"key 'adapter' must be an object"),
    ],
)
def test_schema_errors_name_file_and_key(tmp_path, change, message):
    record = copy.deepcopy(E2E_NOLA_L)
    change(record)
    path = write_result(tmp_path / "run", record)
    with pytest.raises(NolaError, match=rf"{path}: .*{message}"):
        read_result(path)


def test_webnlg_fraction_bleu_is_fine_but_percent_meteor_is_not(tmp_path):
    record = copy.deepcopy(WEBNLG_LORA_M)
    record["metrics"]["seen"]["METEOR"] = 44.3
    path = write_result(tmp_path / "run", record)
    with pytest.raises(NolaError, match=r"'metrics.seen.METEOR' is 44.3"):
        read_result(path)


def test_tag_filter_matching_nothing_and_split_filter(tmp_path):
    write_result(tmp_path / "a", E2E_NOLA_L)
    write_result(tmp_path / "b", dict(E2E_NOLA_L, split="valid"))
    with pytest.raises(NolaError, match="--only-tag 'nope' matched none of the 2 results.json"):
        collect_results([tmp_path], only_tag="nope")
    kept = collect_results([tmp_path, tmp_path / "missing"])
    assert [r["split"] for r in kept.records] == ["test"]
    assert any("does not exist" in note for note in kept.notes)
    assert any("left out 1 run(s)" in note for note in kept.notes)
    assert len(collect_results([tmp_path], split="any").records) == 2


def test_bad_published_file_is_a_clear_error(tmp_path):
    document = json.loads(DEFAULT_PUBLISHED.read_text(encoding="utf-8"))
    del document["rows"][3]["source"]["table"]
    path = tmp_path / "published.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(NolaError, match=rf"{path}: rows\[3\]: key 'source.table' must be a non-empty string"):
        load_published(path)


def test_rows_handed_over_in_memory_are_checked_too():
    with pytest.raises(NolaError, match=r"results\[0\]: key 'schema' is None"):
        build_tables([{"task": "e2e"}], None)
