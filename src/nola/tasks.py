"""The task registry: one `Task` per dataset, everything the stages above the data need to know of it.

A Task joins the data floor's `TaskSpec` (raw files, converter, reference layout;
`nola.data.tasks`) to how the dataset is judged and printed: its scorer, its metrics and how they
are grouped, the scale its official tool prints them on, the factor to the papers' scale, the BLEU
it is judged by, and its table's title and columns. The pipeline, `python -m nola.score`, mixed
decoding, the tables and the mini reports read these facts here and nowhere else; adding a
dataset is its data module (converter and `TaskSpec`), its `Task` below and its `conf/task/` file.

Scorers: E2E as tuetschek/e2e-metrics `measure_scores.py` (BLEU, NIST, METEOR, ROUGE_L, CIDEr);
DART and WebNLG as GenerationEval `eval.py` (BLEU, METEOR, TER), WebNLG for all, seen and unseen
categories when the categories are known. Each metric keeps the scale its official tool prints
(eval/README.md, "Scales"), which is how results.json and `python -m nola.score` report it.
Tables print the papers' scale: e2e-metrics prints BLEU, METEOR and ROUGE-L as fractions (0.6593),
the papers x100 (LoRA Table 3, NOLA Table 1: 70.4); GenerationEval prints BLEU 0-100 and METEOR/TER
as fractions, exactly the scale of LoRA Tables 13 and 14.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nola.data import ReferenceGroup
from nola.data.config import check_task_name
from nola.data.tasks import TaskSpec, task_spec
from nola.errors import NolaError
from nola.metrics.bleu_nist import SEGMENT_FIELDS
from nola.metrics.e2e import e2e_bleu_segments, score_e2e
from nola.metrics.gem import GEM_BLEU_SCALE, GEM_NUM_REFS, gem_bleu_segments, score_gem, score_webnlg

WEBNLG_CATEGORIES = ("unseen", "seen", "all")  # results.json's WebNLG groups, in LoRA Table 14's order


@dataclass(frozen=True)
class Column:
    """One metric column of a paper table."""

    key: str  # flat metric key ("BLEU", "unseen.BLEU")
    header: str
    group: str  # spanning header ("BLEU↑" over U/S/A), "" for none
    decimals: int


@dataclass(frozen=True)
class BleuStatistics:
    """How a task's BLEU is computed from per-context statistics (bootstrap intervals, `nola.stats`):
    the variant's name, results.json BLEU = scale x corpus BLEU, and the per-context function."""

    variant: str
    scale: float
    segments: Callable[[Sequence[Sequence[str]], Sequence[str]], list]


@dataclass(frozen=True)
class Task:
    """A dataset and how it is judged; see the module docstring."""

    data: TaskSpec
    metrics: tuple[str, ...]  # the scorer's metrics, in the order its tool prints them
    groups: tuple[str, ...]  # results.json groups its metrics by these keys (WebNLG's categories); () for none
    scale: str  # the scale results.json holds, in words (`python -m nola.score` prints it)
    fractions: frozenset[str]  # metrics the official tool prints as fractions (results.json checks <= 1)
    percents: frozenset[str]  # metrics printed on 0-100 (checked <= 100)
    paper_scale: dict[str, float]  # results.json value x factor = the number the papers print
    bleu_key: str  # the BLEU the task is judged by (figure, bootstrap, a sweep's objective)
    bleu: BleuStatistics
    table_title: str
    figure_title: str
    columns: tuple[Column, ...]
    table_position: int  # where the papers print the task (tables come in this order)

    @property
    def name(self) -> str:
        return self.data.name

    def paper_factor(self, flat_key: str) -> float:
        """The factor from results.json to the papers' scale of a flat metric key ("all.BLEU")."""
        return self.paper_scale[flat_key.rsplit(".", 1)[-1]]

    def score(self, references: Sequence[Sequence[str]], hypotheses: Sequence[str], *,
              seen: Sequence[bool] | None = None, num_refs: int = GEM_NUM_REFS) -> dict[str, Any]:
        """The metrics of hypotheses (one per group of raw references). seen: the seen/unseen flag per
        instance of a task with categories (scores for all, seen and unseen; without it all only);
        num_refs: GenerationEval's `-nr`, the number of reference columns."""
        if seen is not None and not self.data.categories:
            raise NolaError(f"seen/unseen categories apply to task webnlg only, not {self.name}")
        if self.data.multi_reference:
            return score_e2e(references, hypotheses)
        if seen is None:
            return score_gem(references, hypotheses, num_refs=num_refs)
        return score_webnlg(references, hypotheses, seen, num_refs=num_refs)

    def bleu_segments(self, references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, Any]:
        """The per-context BLEU statistics behind the task's BLEU in results.json (WebNLG: all
        categories): {"variant", "scale", "fields", "segments": one list per reference group}."""
        segments = self.bleu.segments(references, hypotheses)
        return {"variant": self.bleu.variant, "scale": self.bleu.scale, "fields": list(SEGMENT_FIELDS),
                "segments": [list(s) for s in segments]}


GEM_SCALE = "as GenerationEval prints: BLEU 0-100; METEOR, TER fractions"
GEM_BLEU = BleuStatistics("multi-bleu-detok", GEM_BLEU_SCALE, gem_bleu_segments)
GEM_METRICS = ("BLEU", "METEOR", "TER")


def _webnlg_columns() -> tuple[Column, ...]:
    heads = (("BLEU", "BLEU↑", 1), ("METEOR", "MET↑", 2), ("TER", "TER↓", 2))
    shorts = {"unseen": "U", "seen": "S", "all": "A"}
    return tuple(Column(f"{category}.{name}", shorts[category], group, decimals)
                 for name, group, decimals in heads for category in WEBNLG_CATEGORIES)


REGISTRY: dict[str, Task] = {
    "e2e": Task(
        data=task_spec("e2e"),
        metrics=("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"),
        groups=(),
        scale="as e2e-metrics prints: BLEU, METEOR, ROUGE_L fractions; NIST, CIDEr as printed",
        fractions=frozenset({"BLEU", "METEOR", "ROUGE_L"}),
        percents=frozenset(),
        paper_scale={"BLEU": 100.0, "NIST": 1.0, "METEOR": 100.0, "ROUGE_L": 100.0, "CIDEr": 1.0},
        bleu_key="BLEU",
        bleu=BleuStatistics("pymteval", 1.0, e2e_bleu_segments),
        table_title="E2E NLG Challenge (layout of NOLA Table 1; published rows from LoRA Table 3 and NOLA)",
        figure_title="E2E",
        columns=(Column("BLEU", "BLEU", "", 1), Column("NIST", "NIST", "", 2), Column("METEOR", "MET", "", 1),
                 Column("ROUGE_L", "ROUGE-L", "", 1), Column("CIDEr", "CIDEr", "", 2)),
        table_position=0,
    ),
    "webnlg": Task(
        data=task_spec("webnlg"),
        metrics=GEM_METRICS,
        groups=WEBNLG_CATEGORIES,
        scale=GEM_SCALE,
        fractions=frozenset({"METEOR"}),
        percents=frozenset({"BLEU"}),
        paper_scale={"BLEU": 1.0, "METEOR": 1.0, "TER": 1.0},
        bleu_key="all.BLEU",
        bleu=GEM_BLEU,
        table_title="WebNLG (layout of LoRA Table 14; U unseen, S seen, A all categories)",
        figure_title="WebNLG (all categories)",
        columns=_webnlg_columns(),
        table_position=2,
    ),
    "dart": Task(
        data=task_spec("dart"),
        metrics=GEM_METRICS,
        groups=(),
        scale=GEM_SCALE,
        fractions=frozenset({"METEOR"}),
        percents=frozenset({"BLEU"}),
        paper_scale={"BLEU": 1.0, "METEOR": 1.0, "TER": 1.0},
        bleu_key="BLEU",
        bleu=GEM_BLEU,
        table_title="DART (layout of LoRA Table 13)",
        figure_title="DART",
        columns=(Column("BLEU", "BLEU↑", "", 1), Column("METEOR", "MET↑", "", 2), Column("TER", "TER↓", "", 2)),
        table_position=1,
    ),
}
TABLE_ORDER = tuple(sorted(REGISTRY, key=lambda name: REGISTRY[name].table_position))


def get_task(name: str) -> Task:
    """The Task of a known name (NolaError naming the known ones otherwise)."""
    return REGISTRY[check_task_name(name)]


def check_task(name: Any, origin: str) -> Task:
    """The Task a record's 'task' key names; a NolaError naming `origin` otherwise."""
    if name not in REGISTRY:
        raise NolaError(f"{origin}: key 'task' is {name!r}; use one of {', '.join(TABLE_ORDER)}")
    return REGISTRY[name]


def score_task(task: str, references: Sequence[Sequence[str]], hypotheses: Sequence[str], *,
               seen: Sequence[bool] | None = None, num_refs: int = GEM_NUM_REFS) -> dict[str, Any]:
    """`Task.score` of the task named `task`."""
    return get_task(task).score(references, hypotheses, seen=seen, num_refs=num_refs)


def score_groups(task: str, groups: list[ReferenceGroup], hypotheses: list[str]) -> dict[str, Any]:
    """The metrics object of results.json: E2E five metrics; WebNLG all/seen/unseen; DART three."""
    spec = get_task(task)
    seen = [bool(group.seen) for group in groups] if spec.data.categories else None
    return spec.score([group.references for group in groups], hypotheses, seen=seen)


def bleu_segments(task: str, references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> dict[str, Any]:
    """`Task.bleu_segments` of the task named `task`."""
    return get_task(task).bleu_segments(references, hypotheses)
