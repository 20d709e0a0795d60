"""Paper tables and the parameters-vs-BLEU figure from results.json files (eval/README.md).

Other stages (the mini reproduction) build their own tables from their own rows with
`build_tables(results, published_or_None)` and `plot_params_vs_bleu(results, published, path)`.
"""

from __future__ import annotations

from nola.tables.figure import plot_params_vs_bleu
from nola.tables.published import DEFAULT_PUBLISHED, Published, PublishedRow, load_published
from nola.tables.render import build_tables
from nola.tables.results import collect_results, read_result, validate_result, validate_results

__all__ = [
    "DEFAULT_PUBLISHED",
    "Published",
    "PublishedRow",
    "build_tables",
    "collect_results",
    "load_published",
    "plot_params_vs_bleu",
    "read_result",
    "validate_result",
    "validate_results",
]
