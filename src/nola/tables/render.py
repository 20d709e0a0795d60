"""Markdown and LaTeX tables in the papers' layouts, our rows beside the published ones.

Layouts: E2E follows NOLA Table 1 (method, # trainable parameters, BLEU, NIST, MET, ROUGE-L,
CIDEr); DART follows LoRA Table 13 (BLEU, MET, TER); WebNLG follows LoRA Table 14 (BLEU, MET,
TER for unseen U, seen S and all A categories). Within a model, published rows keep the sources'
order and each of our rows follows the published row it reproduces (`PublishedRow.matches`); rows
without a counterpart (other configurations, the mini model) close the model's block.

Our runs that differ only in their seed are one row (`nola.tables.groups`): every metric is the mean
± sample sd over the seeds, with n in its own column. Every row of ours also gets BLEU's 95%
bootstrap interval over test contexts and, against our LoRA row of the same block (the highest
rank, as the papers' LoRA row is r=4), the paired bootstrap p-value of its BLEU difference
(`nola.stats`). A row whose training a wall-time safety limit stopped is marked † (incomplete).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nola.stats import bleu_interval, paired_bootstrap_p
from nola.tables.groups import RunGroup, group_runs
from nola.tables.published import Published, PublishedRow
from nola.tables.results import validate_results
from nola.tables.schema import model_label
from nola.tasks import TABLE_ORDER, Column, get_task

MISSING = "–"
INCOMPLETE_MARK = " †"
P_FLOOR = "<0.001"


@dataclass(frozen=True)
class Row:
    """One printed row; metrics already on the papers' scale.

    n: runs averaged (ours); interval: BLEU's bootstrap interval; p_value: paired bootstrap p of the
    BLEU difference to our LoRA row ("ref" on that row); group: our runs behind the row.
    """

    method: str
    params: str
    metrics: dict[str, float | None]
    plus_minus: dict[str, float]
    source: str
    ours: bool
    n: int | None = None
    interval: tuple[float, float] | None = None
    p_value: float | str | None = None
    group: RunGroup | None = None


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


def our_row(group: RunGroup) -> Row:
    """A row of our runs on the papers' scale (E2E BLEU/MET/ROUGE-L x100), labelled "(ours)": the mean
    over its seeds, ± their sample sd when there are several, and BLEU's bootstrap interval."""
    task, result = group.task, group.first
    spreads = group.spreads()
    factor = {key: get_task(task).paper_factor(key) for key in spreads}
    scaled = {key: spread.mean * factor[key] for key, spread in spreads.items()}
    sd = {key: spread.sd * factor[key] for key, spread in spreads.items() if spread.sd is not None}
    suffix = "ours" if result["split"] == "test" else f"ours, {result['split']}"
    method = f"{method_label(result['adapter'])} ({suffix})" + (INCOMPLETE_MARK if group.incomplete else "")
    segments = group.bleu_segments()
    interval = None
    if segments is not None:
        low, high = bleu_interval(segments)
        bleu_key = get_task(task).bleu_key
        interval = (low * factor[bleu_key], high * factor[bleu_key])
    return Row(method, format_params(result["trainable_params"]), scaled, sd, _source(group), True,
               n=group.n, interval=interval, group=group)


def _source(group: RunGroup) -> str:
    result = group.first
    source = result.get("tag") or result.get("run_dir") or result.get("experiment") or ""
    if group.n > 1:
        source = result.get("experiment") or source
        seeds = [seed for seed in group.seeds if seed is not None]
        if seeds:
            source += f", seeds {', '.join(map(str, seeds))}"
    epochs = [epoch for epoch in group.epochs if epoch is not None]
    if epochs:
        source += f", epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}"
    return source


def lora_reference(rows: list[Row]) -> Row | None:
    """Our LoRA row of a block that the others are tested against: the highest rank, the first on ties."""
    lora = [row for row in rows if row.group is not None and row.group.first["adapter"]["kind"] == "lora"]
    return max(lora, key=lambda row: row.group.first["adapter"].get("rank") or 0, default=None)


def with_p_values(rows: list[Row]) -> list[Row]:
    """Each of our rows with its paired bootstrap p-value against the block's LoRA row (same contexts)."""
    reference = lora_reference(rows)
    if reference is None or reference.group.bleu_segments() is None:
        return rows
    baseline = reference.group.bleu_segments()
    out = []
    for row in rows:
        if row is reference:
            row = replace(row, p_value="ref")
        elif row.group is not None and row.group.bleu_segments() is not None \
                and row.group.references_sha256 == reference.group.references_sha256:
            row = replace(row, p_value=paired_bootstrap_p(row.group.bleu_segments(), baseline))
        out.append(row)
    return out


def arrange(task: str, published: Published | None, results: list[dict[str, Any]]) -> list[tuple[str, list[Row]]]:
    """(model, rows) blocks of one task: published models first, then models only we ran."""
    pub_rows = [row for row in published.rows if row.task == task] if published else []
    ours = group_runs([result for result in results if result["task"] == task])
    models = list(dict.fromkeys([row.model for row in pub_rows]))
    models += sorted({group.first["model"] for group in ours} - set(models))
    placed: set[int] = set()
    blocks = []
    for model in models:
        rows: list[Row] = []
        for pub in (row for row in pub_rows if row.model == model):
            rows.append(published_row(pub))
            for index, group in enumerate(ours):
                if index not in placed and pub.matches(group.first):
                    rows.append(our_row(group))
                    placed.add(index)
        rows += [our_row(group) for index, group in enumerate(ours)
                 if index not in placed and group.first["model"] == model]
        blocks.append((model, with_p_values(rows)))
    return blocks


def _cell(row: Row, column: Column) -> str:
    value = row.metrics.get(column.key)
    if value is None:
        return MISSING
    text = f"{value:.{column.decimals}f}"
    spread = row.plus_minus.get(column.key)
    return f"{text}±{spread:.{column.decimals}f}" if spread is not None else text


EXTRA_HEADERS = ("n", "BLEU 95% CI", "p vs LoRA")


def _extra_cells(row: Row, column: Column) -> list[str]:
    """n, BLEU's bootstrap interval (BLEU's decimals) and the p-value; – where they do not apply."""
    n = str(row.n) if row.n is not None else MISSING
    interval = f"[{row.interval[0]:.{column.decimals}f}, {row.interval[1]:.{column.decimals}f}]" if row.interval else MISSING
    if isinstance(row.p_value, float):
        p = P_FLOOR if row.p_value < 0.001 else f"{row.p_value:.3f}"
    else:
        p = row.p_value or MISSING
    return [n, interval, p]


def _bleu_column(task: str) -> Column:
    spec = get_task(task)
    return next(column for column in spec.columns if column.key == spec.bleu_key)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(task: str, blocks: list[tuple[str, list[Row]]]) -> str:
    title, columns = get_task(task).table_title, get_task(task).columns
    header = ["Method", "# Trainable Parameters"]
    header += [f"{c.group} {c.header}" if c.group else c.header for c in columns] + list(EXTRA_HEADERS) + ["Source"]
    lines = [f"## {title}", ""]
    for model, rows in blocks:
        lines += [f"### {model_label(model)}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---", "---:"] + ["---:"] * (len(columns) + len(EXTRA_HEADERS)) + ["---"]) + "|"]
        for row in rows:
            method = f"**{_md_escape(row.method)}**" if row.ours else _md_escape(row.method)
            cells = [method, row.params] + [_cell(row, column) for column in columns]
            cells += _extra_cells(row, _bleu_column(task)) + [_md_escape(row.source)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if any(row.method.endswith(INCOMPLETE_MARK) for row in rows):
            lines += [INCOMPLETE_NOTE, ""]
    return "\n".join(lines)


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "–": "--", "†": r"$\dagger$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)


def latex_table(task: str, blocks: list[tuple[str, list[Row]]]) -> str:
    title, columns = get_task(task).table_title, get_task(task).columns
    extra = len(EXTRA_HEADERS)
    width = len(columns) + extra + 3
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(title)}}}", rf"\label{{tab:{task}}}",
             r"\begin{tabular}{lr" + "r" * (len(columns) + extra) + "l}", r"\hline"]
    groups = list(dict.fromkeys(column.group for column in columns))
    if any(groups):
        spans = [rf"\multicolumn{{{sum(c.group == g for c in columns)}}}{{c}}{{{latex_escape(g)}}}" for g in groups]
        lines.append(" & ".join(["", ""] + spans + [""] * extra + [""]) + r" \\")
    header = ["Method", r"\# Trainable Parameters"] + [latex_escape(c.header) for c in columns]
    header += [latex_escape(h) for h in EXTRA_HEADERS] + ["Source"]
    lines += [" & ".join(header) + r" \\", r"\hline"]
    for model, rows in blocks:
        lines.append(rf"\multicolumn{{{width}}}{{l}}{{\textit{{{latex_escape(model_label(model))}}}}} \\")
        for row in rows:
            method = latex_escape(row.method)
            cells = [rf"\textit{{{method}}}" if row.ours else method, latex_escape(row.params)]
            cells += [latex_escape(_cell(row, column)) for column in columns]
            cells += [latex_escape(cell) for cell in _extra_cells(row, _bleu_column(task))] + [latex_escape(row.source)]
            lines.append(" & ".join(cells) + r" \\")
        lines.append(r"\hline")
    lines += [r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


SCALE_NOTE = (
    "Published rows: numbers as printed in the source (± is the paper's confidence interval). "
    "Rows in bold / marked (ours): this repository's results.json, on the papers' scale "
    "(E2E BLEU, MET and ROUGE-L ×100; NIST, CIDEr and all WebNLG/DART numbers as stored); runs that "
    "differ only in their seed are one row, mean ± sample sd over the n seeds. BLEU 95% CI: percentile "
    "bootstrap over test contexts (1,000 resamples, seeded) of the row's (seed-mean) BLEU. p vs LoRA: "
    "two-sided paired bootstrap p-value of the BLEU difference to our LoRA row (ref) of the same block; "
    "it measures test-set uncertainty only, the sd measures seed spread. "
    "– means the source does not print that number."
)
INCOMPLETE_NOTE = "† stopped by its wall-time safety limit (train.max_time_s) before its step budget: incomplete."


def build_tables(results: list[dict[str, Any]], published: Published | None) -> dict[str, str]:
    """{"md": Markdown, "tex": LaTeX} for every task that has a published or reproduced row.

    `results` are results.json objects (checked here, so a caller's own rows get the same errors);
    `published` may be None (e.g. the mini reproduction, whose rows have no published counterpart).
    """
    results = validate_results(results)
    md = ["# Paper tables, reproduced", "", "Generated by `python -m nola.tables`; do not edit.", "",
          SCALE_NOTE, ""]
    tex = ["% Generated by python -m nola.tables; do not edit.", ""]
    for task in TABLE_ORDER:
        blocks = [(model, rows) for model, rows in arrange(task, published, results) if rows]
        if blocks:
            md.append(markdown_table(task, blocks))
            tex.append(latex_table(task, blocks))
    if published is not None:
        md += ["## Sources", ""]
        md += [f"- {paper.short}: {paper.citation}. {paper.url}" for paper in published.papers.values()]
        md.append("")
    return {"md": "\n".join(md), "tex": "\n".join(tex)}
