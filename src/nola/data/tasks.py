"""The three datasets as the data floor sees them: which raw file feeds which split, which converter
reads it, and how its references are laid out. `nola.tasks` adds how each is scored and printed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nola.data.config import check_task_name
from nola.data.dart import RAW_FILES as DART_FILES
from nola.data.dart import convert_dart
from nola.data.e2e import RAW_FILES as E2E_FILES
from nola.data.e2e import convert_e2e
from nola.data.records import ConvertedSplit
from nola.data.webnlg import RAW_FILES as WEBNLG_FILES
from nola.data.webnlg import convert_webnlg


@dataclass(frozen=True)
class TaskSpec:
    """A dataset: `raw_files` maps each split to its file's path in the mirror layout.

    multi_reference: the scorer reads one file of reference groups separated by blank lines
        (e2e-metrics' multi-reference format); otherwise reference0 ... reference5 column files
        (GenerationEval's `-nr`).
    categories: instances are seen or unseen categories, and scored for each (WebNLG).
    """

    name: str
    raw_files: dict[str, str]
    convert: Callable[[Path], ConvertedSplit]
    multi_reference: bool = False
    categories: bool = False


TASK_SPECS = {
    "e2e": TaskSpec("e2e", E2E_FILES, convert_e2e, multi_reference=True),
    "webnlg": TaskSpec("webnlg", WEBNLG_FILES, convert_webnlg, categories=True),
    "dart": TaskSpec("dart", DART_FILES, convert_dart),
}


def task_spec(name: str) -> TaskSpec:
    """The spec of a known task (NolaError for an unknown name)."""
    return TASK_SPECS[check_task_name(name)]
