"""Many adapters from the mini base, the library of `python -m nola.mini_mixed` (`make mini-mixed`, after `make mini`).

NOLA adapters trained on E2E, WebNLG and DART from the mini reproduction's base
(`<paths.cache_dir>/mini-base`), then the three tasks' test subsets decoded in ONE mixed batch, each
context with its task's adapter (`nola.decode.mixed`, `nola.adapters.bank`):

1. subsets of each task (`--train-examples` random training pairs, `--valid-examples` validation
   pairs, `--test-contexts` test reference groups drawn at random, kept in file order) are written to
   `<paths.cache_dir>/mini-data/tasks/`;
2. each task is adapted with the mini NOLA recipe (`experiment=mini/nola_k32`, one seed) and its
   test subset decoded and scored alone (`nola.pipeline.run`: the single-task reference);
3. the three test subsets are decoded together from a manifest and scored per task;
4. `<out>/mini_mixed.md` reports, per task, whether the mixed hypotheses equal the single-task ones
   (file for file), the scores of both, and the time of one mixed decode against the three separate ones.
The base was pretrained on DART and WebNLG training pairs (never E2E, never their test sets), so those
two tasks start from a base that has seen their kind of input; the demo is about decoding many
adapters at once, not about the scores.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nola.config import load_config
from nola.data import Example, load_examples, load_reference_groups
from nola.data.records import split_path
from nola.data.references import group_references
from nola.decode.mixed import decode_manifest
from nola.errors import NolaError
from nola.fileio import read_json, sha256_file, write_json_atomic, write_text_atomic
from nola.machine import machine_description
from nola.mini.reproduction import BASE_DIR, PRETRAIN_RECORD, SUBSET_RECORD, write_subset
from nola.pipeline import run
from nola.tables.schema import headline_bleu
from nola.tasks import REGISTRY, get_task

RECIPE = "mini/nola_k32"


@dataclass(frozen=True)
class DemoSettings:
    train_examples: int = 1600
    valid_examples: int = 48
    test_contexts: int = 100
    seed: int = 0


def write_task_subsets(data_dir: Path, target: Path, settings: DemoSettings) -> None:
    """Each task's subsets under `target/<task>/` (rewritten only when the recipe changed)."""
    rng = random.Random(settings.seed)
    for task in REGISTRY:
        recipe = {"settings": asdict(settings), "source": sha256_file(split_path(data_dir, task, "train")),
                  "test": "seeded sample of reference groups, in file order"}
        record = target / task / SUBSET_RECORD
        if record.is_file() and read_json(record) == recipe:
            continue
        train = load_examples(data_dir, task, "train")
        chosen = rng.sample(train, min(settings.train_examples, len(train)))
        valid = load_examples(data_dir, task, "valid")[: settings.valid_examples]
        every = load_reference_groups(data_dir, task, "test")
        # a seeded sample in file order (WebNLG's test file lists seen categories first, then unseen)
        groups = [every[i] for i in sorted(rng.sample(range(len(every)), min(settings.test_contexts, len(every))))]
        test = [Example(g.context, ref, g.category, g.seen) for g in groups for ref in g.references]
        write_subset(target, task, recipe, {"train": chosen, "valid": valid, "test": test},
                     {"valid": group_references(valid), "test": groups})


def task_overrides(task: str, subsets: Path, base_dir: Path) -> list[str]:
    return [f"experiment={RECIPE}", f"task={'mini_e2e' if task == 'e2e' else task}", f"task.data_dir={subsets}",
            f"decode={task}", f"model.source={base_dir}", f"name=mini_mixed/{task}"]


def run_demo(settings: DemoSettings, overrides: list[str], out: Path) -> dict[str, Any]:
    probe = load_config([f"experiment={RECIPE}", *overrides])
    cache = Path(probe.paths.cache_dir)
    base_dir = cache / BASE_DIR
    if not (base_dir / PRETRAIN_RECORD).is_file():
        raise NolaError(f"no mini base at {base_dir}; run `make mini` first (it pretrains and exports it)")
    subsets = cache / "mini-data" / "tasks"
    write_task_subsets(Path(probe.paths.data_dir), subsets, settings)
    runs = Path(probe.paths.runs_dir) / "mini_mixed"
    single: dict[str, dict[str, Any]] = {}
    for task in REGISTRY:
        cfg = load_config([*task_overrides(task, subsets, base_dir), *overrides])
        single[task] = run(cfg, runs / task, experiment=RECIPE, tag=f"mini_mixed/{task}")
    manifest = runs / "manifest.json"
    write_json_atomic(manifest, [{"name": task, "task": task, "split": "test", "data_dir": str(subsets),
                                  "adapter_dir": single[task]["selection"]["adapter_dir"]
                                  if single[task].get("selection") else str(runs / task / "adapter")}
                                 for task in REGISTRY])
    mixed_cfg = load_config([*task_overrides("e2e", subsets, base_dir), *overrides, f"decode.manifest={manifest}"])
    mixed = decode_manifest(mixed_cfg, runs / "mixed")
    rows = []
    for task in REGISTRY:
        same = (runs / "mixed" / task / "test_hypotheses.txt").read_bytes() == \
            (runs / task / "test_hypotheses.txt").read_bytes()
        rows.append({"task": task, "identical": same, "contexts": single[task]["contexts"],
                     "single": single[task]["metrics"], "mixed": mixed["entries"][task]["metrics"],
                     "single_decode_s": single[task]["timings"]["decode_s"]})
    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_description(),
              "settings": asdict(settings), "mixed_decode_s": mixed["decode_s"], "tasks": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "mini_mixed.md", render(report))
    return report


def _bleu(task: str, metrics: dict) -> float:
    """The task's BLEU on the papers' scale (E2E x100)."""
    return headline_bleu(task, metrics) * get_task(task).paper_scale["BLEU"]


def render(report: dict[str, Any]) -> str:
    separate = sum(row["single_decode_s"] for row in report["tasks"])
    lines = ["# Three adapters, one mixed batch (`python -m nola.mini_mixed`)", "",
             "Generated by `python -m nola.mini_mixed`; do not edit. NOLA (r=8, k=l=32) adapters trained on E2E, "
             "WebNLG and DART from the mini base; their test subsets decoded in one mixed batch, every context with "
             "its task's adapter, against each task decoded alone with its adapter merged.", "",
             f"- date: {report['date']}", f"- machine: {report['machine']}",
             f"- subsets: {report['settings']['train_examples']} training pairs per task, "
             f"{report['settings']['test_contexts']} test contexts of each drawn at random (seed "
             f"{report['settings']['seed']})",
             f"- decode time: one mixed run {report['mixed_decode_s']:.1f} s; three single-task runs {separate:.1f} s", "",
             "| task | contexts | mixed hypotheses = single-task ones | BLEU (mixed) | BLEU (single) |",
             "|---|---:|---|---:|---:|"]
    for row in report["tasks"]:
        lines.append(f"| {row['task']} | {row['contexts']} | {'yes, byte for byte' if row['identical'] else 'NO'} | "
                     f"{_bleu(row['task'], row['mixed']):.1f} | {_bleu(row['task'], row['single']):.1f} |")
    lines += ["", "Per-task scores of the mixed run:", "", "```json",
              json.dumps({row["task"]: row["mixed"] for row in report["tasks"]}, indent=1), "```", ""]
    return "\n".join(lines)
