"""Trainable parameters (log scale) against BLEU, one panel per task, ours beside the papers'.

Published points are hollow circles, ours filled stars, our un-adapted bases (0 trainable
parameters, off a log axis) dashed horizontal lines; colours tell the base models apart. BLEU
is on the papers' scale (E2E x100, WebNLG "all" categories). Drawn with matplotlib's Agg canvas
directly (no pyplot, no global backend switch) and written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nola.fileio import atomic_path
from nola.tables.published import Published
from nola.tables.render import our_row
from nola.tables.results import validate_results
from nola.tables.schema import TASKS, model_label

BLEU_KEY = {"e2e": "BLEU", "dart": "BLEU", "webnlg": "all.BLEU"}
TASK_TITLES = {"e2e": "E2E", "dart": "DART", "webnlg": "WebNLG (all categories)"}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray")


Point = tuple[str, bool, int, float]  # model, ours, trainable parameters, BLEU


def _points(results: list[dict[str, Any]], published: Published | None) -> dict[str, list[Point]]:
    """task -> points for every row that has both a parameter count and BLEU."""
    points: dict[str, list[Point]] = {task: [] for task in TASKS}
    for row in published.rows if published else ():
        bleu = row.metrics.get(BLEU_KEY[row.task])
        if bleu is not None:
            points[row.task].append((row.model, False, row.trainable_params, bleu))
    for result in results:
        score = our_row(result).metrics.get(BLEU_KEY[result["task"]])
        if result["trainable_params"] > 0 and score is not None:
            points[result["task"]].append((result["model"], True, result["trainable_params"], score))
    return {task: found for task, found in points.items() if found}


def _frozen_bases(results: list[dict[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """task -> (model, BLEU) of our runs with nothing trained (the un-adapted base)."""
    floors: dict[str, list[tuple[str, float]]] = {}
    for result in results:
        score = our_row(result).metrics.get(BLEU_KEY[result["task"]])
        if result["trainable_params"] == 0 and score is not None:
            floors.setdefault(result["task"], []).append((result["model"], score))
    return floors


def plot_params_vs_bleu(results: list[dict[str, Any]], published: Published | None, path: str | Path) -> None:
    """Write the PNG scatter of trainable parameters against BLEU to `path` (atomically)."""
    results = validate_results(results)
    points, floors = _points(results, published), _frozen_bases(results)
    models = list(dict.fromkeys(model for found in points.values() for model, *_ in found))
    colour = {model: COLOURS[i % len(COLOURS)] for i, model in enumerate(models)}
    figure = Figure(figsize=(4.2 * max(len(points), 1) + 2.0, 3.8), layout="constrained")  # + the legend
    FigureCanvasAgg(figure)
    if not points:
        axes = figure.subplots()
        axes.text(0.5, 0.5, "no rows with trainable parameters and BLEU", ha="center", va="center")
        axes.set_axis_off()
    else:
        panels = figure.subplots(1, len(points), squeeze=False)[0]
        for axes, (task, found) in zip(panels, points.items()):
            for model, ours, params, bleu in found:
                style = {"marker": "*", "s": 140, "color": colour[model]} if ours else \
                    {"marker": "o", "s": 40, "facecolors": "none", "edgecolors": colour[model]}
                axes.scatter([params], [bleu], zorder=3 if ours else 2, **style)
            for model, bleu in floors.get(task, []):
                axes.axhline(bleu, linestyle="--", linewidth=1, color=colour.get(model, "black"), zorder=1)
            axes.set_xscale("log")
            axes.set_xlabel("trainable parameters")
            axes.set_ylabel("BLEU")
            axes.set_title(TASK_TITLES[task])
            axes.grid(True, which="major", alpha=0.3)
        handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="black", label="published"),
                   Line2D([], [], marker="*", linestyle="", markersize=11, color="black", label="ours")]
        if any(task in floors for task in points):
            handles.append(Line2D([], [], linestyle="--", color="black", label="un-adapted base (ours)"))
        handles += [Line2D([], [], marker="s", linestyle="", color=colour[m], label=model_label(m)) for m in models]
        figure.legend(handles=handles, loc="outside right upper", fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
