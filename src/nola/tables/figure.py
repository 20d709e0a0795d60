"""Trainable parameters (log scale) against BLEU, one panel per task, ours beside the papers'.

Published points are hollow circles, ours filled stars (one per table row: the mean over its
seeds), our un-adapted bases (0 trainable parameters, off a log axis) dashed horizontal lines;
colours tell the base models apart. Error bars: for our rows the 95% bootstrap interval of BLEU over
test contexts (the table's "BLEU 95% CI"), for published rows the paper's ± where it prints one.
Every point is labelled with its method and size. BLEU is on the papers' scale (E2E x100, WebNLG
"all" categories). Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend
switch) and written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nola.fileio import atomic_path
from nola.tables.published import Published
from nola.tables.groups import group_runs
from nola.tables.render import INCOMPLETE_MARK, our_row
from nola.tables.results import validate_results
from nola.tables.schema import model_label
from nola.tasks import TABLE_ORDER, get_task

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray")


@dataclass(frozen=True)
class Point:
    model: str
    ours: bool
    params: int
    bleu: float
    error: tuple[float, float] | None  # distances below and above `bleu`
    label: str


def _label(method: str, params: str) -> str:
    return f"{method.replace(' (ours)', '').replace(INCOMPLETE_MARK, '†')}, {params}"


def _points(results: list[dict[str, Any]], published: Published | None) -> dict[str, list[Point]]:
    """task -> points for every row that has both a parameter count and BLEU."""
    points: dict[str, list[Point]] = {task: [] for task in TABLE_ORDER}
    for row in published.rows if published else ():
        bleu = row.metrics.get(get_task(row.task).bleu_key)
        if bleu is not None:
            spread = row.plus_minus.get(get_task(row.task).bleu_key)
            points[row.task].append(Point(row.model, False, row.trainable_params, bleu,
                                          (spread, spread) if spread is not None else None,
                                          _label(row.method, row.params_text)))
    for group in group_runs(results):
        row = our_row(group)
        bleu = row.metrics.get(get_task(group.task).bleu_key)
        if group.first["trainable_params"] > 0 and bleu is not None:
            error = (bleu - row.interval[0], row.interval[1] - bleu) if row.interval else None
            points[group.task].append(Point(group.first["model"], True, group.first["trainable_params"], bleu, error,
                                            _label(row.method, row.params)))
    return {task: found for task, found in points.items() if found}


def _frozen_bases(results: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """task -> (model, BLEU) of our rows with nothing trained (the un-adapted base)."""
    floors: dict[str, list[tuple[str, float]]] = {}
    for group in group_runs(results):
        if group.first["trainable_params"] == 0:
            task = get_task(group.task)
            score = group.spreads()[task.bleu_key].mean * task.paper_scale["BLEU"]
            floors.setdefault(group.task, []).append((group.first["model"], score))
    return floors


LABEL_STEP = 9.0  # points between stacked labels (6-point text)


def label_offsets(points: list[Point]) -> list[tuple[float, float]]:
    """Label offsets (points) that keep labels of nearby points apart: points close in log-parameters
    (within 1.2 decades: a label is wider than a decade) get their labels stacked in BLEU order, one `LABEL_STEP` apart."""
    order = sorted(range(len(points)), key=lambda i: (points[i].params, points[i].bleu))
    offsets: list[tuple[float, float]] = [(8.0, 0.0)] * len(points)
    cluster: list[int] = []

    def place(members: list[int]) -> None:
        ranked = sorted(members, key=lambda i: points[i].bleu)
        for rank, index in enumerate(ranked):
            offsets[index] = (8.0, (rank - (len(ranked) - 1) / 2) * LABEL_STEP * 1.6)

    for index in order:
        if cluster and math.log10(points[index].params) - math.log10(points[cluster[0]].params) > 1.2:
            place(cluster)
            cluster = []
        cluster.append(index)
    if cluster:
        place(cluster)
    return offsets


def plot_params_vs_bleu(results: list[dict[str, Any]], published: Published | None, path: str | Path) -> None:
    """Write the PNG scatter of trainable parameters against BLEU to `path` (atomically)."""
    results = validate_results(results)
    points, floors = _points(results, published), _frozen_bases(results)
    models = list(dict.fromkeys(point.model for found in points.values() for point in found))
    colour = {model: COLOURS[i % len(COLOURS)] for i, model in enumerate(models)}
    figure = Figure(figsize=(5.5 * max(len(points), 1) + 2.0, 4.6), layout="constrained")  # + the legend
    FigureCanvasAgg(figure)
    if not points:
        axes = figure.subplots()
        axes.text(0.5, 0.5, "no rows with trainable parameters and BLEU", ha="center", va="center")
        axes.set_axis_off()
    else:
        panels = figure.subplots(1, len(points), squeeze=False)[0]
        for axes, (task, found) in zip(panels, points.items()):
            for point in found:
                style = {"marker": "*", "s": 140, "color": colour[point.model]} if point.ours else \
                    {"marker": "o", "s": 40, "facecolors": "none", "edgecolors": colour[point.model]}
                axes.scatter([point.params], [point.bleu], zorder=3 if point.ours else 2, **style)
                if point.error is not None:
                    axes.errorbar([point.params], [point.bleu], yerr=[[point.error[0]], [point.error[1]]], fmt="none",
                                  ecolor=colour[point.model], elinewidth=1, capsize=3, zorder=2)
            for point, offset in zip(found, label_offsets(found)):
                axes.annotate(point.label, (point.params, point.bleu), xytext=offset, textcoords="offset points",
                              fontsize=6, color=colour[point.model], va="center",
                              arrowprops={"arrowstyle": "-", "linewidth": 0.4, "color": colour[point.model]})
            for model, bleu in floors.get(task, []):
                axes.axhline(bleu, linestyle="--", linewidth=1, color=colour.get(model, "black"), zorder=1)
            axes.set_xscale("log")
            axes.set_xlabel("trainable parameters")
            axes.set_ylabel("BLEU")
            axes.set_title(get_task(task).figure_title)
            axes.grid(True, which="major", alpha=0.3)
        handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="black", label="published"),
                   Line2D([], [], marker="*", linestyle="", markersize=11, color="black", label="ours")]
        if any(task in floors for task in points):
            handles.append(Line2D([], [], linestyle="--", color="black", label="un-adapted base (ours)"))
        handles += [Line2D([], [], marker="s", linestyle="", color=colour[m], label=model_label(m)) for m in models]
        figure.legend(handles=handles, loc="outside right upper", fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
