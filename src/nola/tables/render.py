"""Markdown and LaTeX tables in the papers' layouts, our rows beside the published ones.

Layouts: E2E follows NOLA Table 1 (method, # trainable parameters, BLEU, NIST, MET, ROUGE-L,
CIDEr); DART follows LoRA Table 13 (BLEU, MET, TER); WebNLG follows LoRA Table 14 (BLEU, MET,
TER for unseen U, seen S and all A categories). Within a model, published rows keep the sources'
order and each of our runs follows the published row it reproduces (`PublishedRow.matches`); runs
without a counterpart (other configurations, the mini model) close the model's block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nola.tables.published import Published, PublishedRow
from nola.tables.results import validate_results
from nola.tables.schema import PAPER_SCALE, TASKS, flatten_metrics, metric_name, model_label

MISSING = "–"


@dataclass(frozen=True)
class Column:
    key: str  # flat metric key ("BLEU", "unseen.BLEU")
    header: str
    group: str  # spanning header ("BLEU↑" over U/S/A), "" for none
    decimals: int


def _webnlg_columns() -> tuple[Column, ...]:
    heads = (("BLEU", "BLEU↑", 1), ("METEOR", "MET↑", 2), ("TER", "TER↓", 2))
    splits = (("unseen", "U"), ("seen", "S"), ("all", "A"))
    return tuple(Column(f"{split}.{name}", short, group, dec) for name, group, dec in heads for split, short in splits)


LAYOUTS: dict[str, tuple[str, tuple[Column, ...]]] = {
    "e2e": (
        "E2E NLG Challenge (layout of NOLA Table 1; published rows from LoRA Table 3 and NOLA)",
        (Column("BLEU", "BLEU", "", 1), Column("NIST", "NIST", "", 2), Column("METEOR", "MET", "", 1),
         Column("ROUGE_L", "ROUGE-L", "", 1), Column("CIDEr", "CIDEr", "", 2)),
    ),
    "dart": (
        "DART (layout of LoRA Table 13)",
        (Column("BLEU", "BLEU↑", "", 1), Column("METEOR", "MET↑", "", 2), Column("TER", "TER↓", "", 2)),
    ),
    "webnlg": ("WebNLG (layout of LoRA Table 14; U unseen, S seen, A all categories)", _webnlg_columns()),
}


@dataclass(frozen=True)
class Row:
    """One printed row; metrics already on the papers' scale."""

    method: str
    params: str
    metrics: dict[str, float | None]
    plus_minus: dict[str, float]
    source: str
    ours: bool


def method_label(adapter: dict[str, Any]) -> str:
    """The papers' name for an adapter configuration, with the knobs that tell runs apart."""
    kind = adapter["kind"]
    if kind == "lora":
        return f"LoRA (r={adapter.get('rank')})"
    if kind == "nola":
        label = f"NOLA (r={adapter.get('rank')}, k={adapter.get('num_basis_a')}, l={adapter.get('num_basis_b')})"
        bits = adapter.get("quant_bits")
        return f"{label}, {bits}-bit" if bits else label
    return {"full": "Finetune", "none": "Frozen base"}.get(kind, kind)


def format_params(count: int) -> str:
    """Trainable parameters as the NOLA table prints them (0.036M); small counts in full."""
    return f"{count / 1e6:.3f}M" if count >= 10_000 else f"{count:,}"


def published_row(row: PublishedRow) -> Row:
    return Row(row.method, row.params_text, row.metrics, row.plus_minus, f"{row.paper.short}, {row.table}", False)


def our_row(result: dict[str, Any]) -> Row:
    """A results.json on the papers' scale (E2E BLEU/MET/ROUGE-L x100), labelled "(ours)"."""
    task = result["task"]
    flat = flatten_metrics(task, result["metrics"], str(result.get("run_dir")), "metrics", allow_null=False)
    scaled = {key: value * PAPER_SCALE[task][metric_name(key)] for key, value in flat.items() if value is not None}
    suffix = "ours" if result["split"] == "test" else f"ours, {result['split']}"
    source = result.get("tag") or result.get("run_dir") or result.get("experiment") or ""
    return Row(f"{method_label(result['adapter'])} ({suffix})", format_params(result["trainable_params"]),
               scaled, {}, source, True)


def arrange(task: str, published: Published | None, results: list[dict[str, Any]]) -> list[tuple[str, list[Row]]]:
    """(model, rows) blocks of one task: published models first, then models only we ran."""
    pub_rows = [row for row in published.rows if row.task == task] if published else []
    ours = [result for result in results if result["task"] == task]
    models = list(dict.fromkeys([row.model for row in pub_rows]))
    models += sorted({result["model"] for result in ours} - set(models))
    placed: set[int] = set()
    blocks = []
    for model in models:
        rows: list[Row] = []
        for pub in (row for row in pub_rows if row.model == model):
            rows.append(published_row(pub))
            for index, result in enumerate(ours):
                if index not in placed and pub.matches(result):
                    rows.append(our_row(result))
                    placed.add(index)
        rows += [our_row(result) for index, result in enumerate(ours)
                 if index not in placed and result["model"] == model]
        blocks.append((model, rows))
    return blocks


def _cell(row: Row, column: Column) -> str:
    value = row.metrics.get(column.key)
    if value is None:
        return MISSING
    text = f"{value:.{column.decimals}f}"
    spread = row.plus_minus.get(column.key)
    return f"{text}±{spread:.{column.decimals}f}" if spread is not None else text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(task: str, blocks: list[tuple[str, list[Row]]]) -> str:
    title, columns = LAYOUTS[task]
    header = ["Method", "# Trainable Parameters"]
    header += [f"{c.group} {c.header}" if c.group else c.header for c in columns] + ["Source"]
    lines = [f"## {title}", ""]
    for model, rows in blocks:
        lines += [f"### {model_label(model)}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---", "---:"] + ["---:"] * len(columns) + ["---"]) + "|"]
        for row in rows:
            method = f"**{_md_escape(row.method)}**" if row.ours else _md_escape(row.method)
            cells = [method, row.params] + [_cell(row, column) for column in columns] + [_md_escape(row.source)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)


def latex_table(task: str, blocks: list[tuple[str, list[Row]]]) -> str:
    title, columns = LAYOUTS[task]
    width = len(columns) + 3
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(title)}}}", rf"\label{{tab:{task}}}",
             r"\begin{tabular}{lr" + "r" * len(columns) + "l}", r"\hline"]
    groups = list(dict.fromkeys(column.group for column in columns))
    if any(groups):
        spans = [rf"\multicolumn{{{sum(c.group == g for c in columns)}}}{{c}}{{{latex_escape(g)}}}" for g in groups]
        lines.append(" & ".join(["", ""] + spans + [""]) + r" \\")
    header = ["Method", r"\# Trainable Parameters"] + [latex_escape(c.header) for c in columns] + ["Source"]
    lines += [" & ".join(header) + r" \\", r"\hline"]
    for model, rows in blocks:
        lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(model_label(model))}}}}} \\")
        for row in rows:
            method = latex_escape(row.method)
            cells = [rf"\textit{{{method}}}" if row.ours else method, latex_escape(row.params)]
            cells += [latex_escape(_cell(row, column)) for column in columns] + [latex_escape(row.source)]
            lines.append(" & ".join(cells) + r" \\")
        lines.append(r"\hline")
    lines += [r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


SCALE_NOTE = (
    "Published rows: numbers as printed in the source (± is the paper's confidence interval). "
    "Rows in bold / marked (ours): this repository's results.json, on the papers' scale "
    "(E2E BLEU, MET and ROUGE-L ×100; NIST, CIDEr and all WebNLG/DART numbers as stored). "
    "– means the source does not print that number."
)


def build_tables(results: list[dict[str, Any]], published: Published | None) -> dict[str, str]:
    """{"md": Markdown, "tex": LaTeX} for every task that has a published or reproduced row.

    `results` are results.json objects (checked here, so a caller's own rows get the same errors);
    `published` may be None (e.g. the mini reproduction, whose rows have no published counterpart).
    """
    results = validate_results(results)
    md = ["# Paper tables, reproduced", "", "Generated by `python -m nola.tables`; do not edit.", "",
          SCALE_NOTE, ""]
    tex = ["% Generated by python -m nola.tables; do not edit.", ""]
    for task in TASKS:
        blocks = [(model, rows) for model, rows in arrange(task, published, results) if rows]
        if blocks:
            md.append(markdown_table(task, blocks))
            tex.append(latex_table(task, blocks))
    if published is not None:
        md += ["## Sources", ""]
        md += [f"- {paper.short}: {paper.citation}. {paper.url}" for paper in published.papers.values()]
        md.append("")
    return {"md": "\n".join(md), "tex": "\n".join(tex)}
