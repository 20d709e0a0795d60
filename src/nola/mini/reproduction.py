"""The offline mini reproduction: `python -m nola.mini [options] [hydra overrides]`.

`make mini` (scripts/mini.sh) prepares the data, then runs this. Every stage goes through the same
code as the full-scale runs (`nola.training.job.train`, `nola.pipeline.run`); only the configs differ
(conf/experiment/mini/*.yaml):

1. pretrain the mini GPT-2 (4 layers, 128 wide, GPT-2 tokenizer) from random init on a subset of
   DART + WebNLG training data, never E2E (`experiment=mini/pretrain`, a budget of one epoch) and
   export it as a Hugging Face directory `<paths.cache_dir>/mini-base`, which later runs reuse
   (delete it to pretrain again);
2. adapt it to a fixed subset of E2E train with full fine-tuning, LoRA r=4, LoRA r=1 and NOLA with
   512 and 256 parameters (a quarter and an eighth of LoRA r=1's), each with the same budget in
   steps, `--seeds` seeds each (train.seed 110, 111, ...), each run reported at the epoch of its
   lowest validation loss (the papers' protocol);
3. decode the first `--test-contexts` E2E test reference groups with the paper's beam settings for
   every adapted model and for the un-adapted base (`experiment=mini/base`);
4. score them (`nola.metrics`), and write `<out>/mini.md`: the table (mean ± sd over seeds, BLEU's
   bootstrap interval, paired bootstrap p-values against LoRA; `nola.tables`, `nola.stats`), every
   run, the machine, date and load, and `<out>/mini_params_vs_bleu.png`.
Training runs in float32 by default (`--precision`: bf16, or auto = bf16 where the device computes
bfloat16 natively; the report says which ran). Budgets are steps and epochs, never wall time:
train.max_time_s is a safety stop only, and a run it stops is marked incomplete (†).
Data subsets are written under `<paths.cache_dir>/mini-data/` by `write_subsets`; runs go to
`<paths.runs_dir>/mini/base-<fingerprint>-data-<recipe>/<method>[/seed-<seed>]`, so a new base
never reuses an old adapter. Rerunning resumes: every finished stage is skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nola.allocator import keep_freed_memory
from nola.build import build_model
from nola.config import Config, load_config
from nola.data import Example, ReferenceGroup, load_examples, load_reference_groups
from nola.data.records import split_path, write_examples
from nola.data.references import group_references, write_reference_files
from nola.errors import NolaError
from nola.export import export_hf_model
from nola.fileio import atomic_directory, read_json, sha256_file, write_json_atomic, write_text_atomic
from nola.machine import machine_description, native_bf16
from nola.model import base_fingerprint, load_gpt2
from nola.pipeline import run, train_stage
from nola.runtime import pick_device
from nola.tables import build_tables, plot_params_vs_bleu
from nola.tables.groups import RunGroup, group_runs
from nola.tables.render import our_row
from nola.tables.schema import headline_bleu, metric_name
from nola.tasks import get_task

METHODS = ("ft", "lora", "lora_r1", "nola_k32", "nola_k16")
BASE_RUN = "base"
BASE_DIR = "mini-base"
PRETRAIN_RECORD = "pretraining.json"
SUBSET_RECORD = "subset.json"
LOWER_IS_BETTER = {"TER"}


@dataclass(frozen=True)
class MiniSettings:
    """Sizes of the data subsets and the seeds (the training budgets, in epochs, are in the configs).

    pretrain_examples: DART + WebNLG training pairs drawn at random (seeded) among those with at
        most `pretrain_max_chars` characters of context + completion (short pairs cost less per step).
    adapt_examples: E2E training pairs drawn at random (seeded).
    valid_examples: validation pairs per task (validation loss at each epoch end).
    test_contexts: the first E2E test reference groups decoded and scored (all their references);
        630 is the whole E2E test set, as the papers score it; the default, the first half, keeps three
        seeds of five methods within 30 minutes on 2 cores (the intervals show what that costs).
    seeds: seeds per adapted method (train.seed, train.seed + 1, ...); the papers average 3.
    workers: runs trained, decoded and scored at a time, each in its own process with one torch
        thread (on 2 cores two 1-thread runs do more work per second than one 2-thread run, and a
        fixed thread count keeps every run bitwise reproducible); 1: one run at a time, all threads.
    precision: fp32 (default), bf16, or auto (bf16 where the device computes it natively). Measured on
        the 2-core Xeon VM (AVX-512 BF16 and AMX): bf16 autocast took a mini adaptation step from 120
        to 118 ms (LoRA) and 162 to 141 ms (full fine-tuning), because the float32 log-softmax over the
        50,257-token vocabulary dominates; pretraining took 335 s under bf16 against 293 s in float32
        and ended at validation loss 4.889 against 4.567. So the mini trains in float32, and the seeds
        are paid for by running two 1-thread runs at a time.
    """

    pretrain_examples: int = 40000
    pretrain_max_chars: int = 240
    adapt_examples: int = 3200
    valid_examples: int = 48
    test_contexts: int = 315
    seeds: int = 3
    workers: int = 2
    seed: int = 0
    precision: str = "fp32"


@dataclass
class MiniReport:
    """What the table header reports: timings per stage, machine, load, pretraining summary."""

    started: float
    stages_s: dict[str, float] = field(default_factory=dict)
    load_before: tuple[float, ...] = ()
    loads: list[float] = field(default_factory=list)  # 1-minute load average at the end of every stage
    pretraining: dict[str, Any] = field(default_factory=dict)
    precision_reason: str = ""
    runs: str = ""  # how the runs were scheduled (workers, threads)

    def stage_done(self, name: str, seconds: float) -> None:
        self.stages_s[name] = seconds
        self.loads.append(os.getloadavg()[0])


def stage_config(stage: str, overrides: list[str], *extra: str) -> Config:
    """The typed config of one mini stage: conf/experiment/mini/<stage>.yaml + the user's overrides."""
    return load_config([f"experiment=mini/{stage}", *overrides, *extra])


PRECISION_CHOICES = ("fp32", "auto", "bf16")


def training_precision(choice: str, overrides: list[str]) -> tuple[str, str]:
    """(train.precision, why) for `--precision`: fp32; bf16; or auto = bf16 where the training
    device computes bfloat16 natively (`native_bf16`: detected, never assumed), else fp32."""
    if choice != "auto":
        return choice, f"--precision {choice}"
    device = pick_device(stage_config("pretrain", overrides).train.device)
    if native_bf16(device):
        return "bf16", "--precision auto: this device computes bfloat16 natively"
    return "fp32", "--precision auto: this device has no native bfloat16"


def _pairs(examples: list[Example]) -> list[Example]:
    return [Example(example.context, example.completion) for example in examples]


def write_subset(target: Path, task: str, recipe: dict[str, Any], splits: dict[str, list[Example]],
                  groups: dict[str, list[ReferenceGroup]]) -> None:
    """Write a prepared task directory (splits + reference files) unless its recipe is unchanged."""
    record = target / task / SUBSET_RECORD
    if record.is_file() and read_json(record) == recipe:
        return
    record.unlink(missing_ok=True)
    for split, examples in splits.items():
        write_examples(split_path(target, task, split), examples)
    for split, chosen in groups.items():
        write_reference_files(target, task, split, chosen)
    write_json_atomic(record, recipe)


def write_subsets(data_dir: Path, pretrain_dir: Path, e2e_dir: Path, settings: MiniSettings) -> str:
    """The pretraining corpus (DART + WebNLG, stored as task "dart") and the E2E subset, from `data_dir`.

    Returns a short digest of the recipe (settings + source files), which names the run directories.
    """
    sources = {f"{task}/{split}": sha256_file(split_path(data_dir, task, split))
               for task in ("dart", "webnlg", "e2e") for split in ("train", "valid", "test")}
    recipe = {"settings": asdict(settings), "sources": sources}
    rng = random.Random(settings.seed)
    corpus = [e for task in ("dart", "webnlg") for e in _pairs(load_examples(data_dir, task, "train"))
              if len(e.context) + len(e.completion) <= settings.pretrain_max_chars]
    if len(corpus) < settings.pretrain_examples:
        raise NolaError(f"only {len(corpus)} DART/WebNLG pairs are short enough; lower --pretrain-examples")
    pretrain = rng.sample(corpus, settings.pretrain_examples)
    half = settings.valid_examples // 2
    valid = [e for task in ("dart", "webnlg") for e in _pairs(load_examples(data_dir, task, "valid"))[:half]]
    write_subset(pretrain_dir, "dart", recipe, {"train": pretrain, "valid": valid, "test": valid}, {})
    e2e_train = load_examples(data_dir, "e2e", "train")
    adapt = rng.sample(e2e_train, min(settings.adapt_examples, len(e2e_train)))
    e2e_valid = load_examples(data_dir, "e2e", "valid")[: settings.valid_examples]
    test_groups = load_reference_groups(data_dir, "e2e", "test")[: settings.test_contexts]
    test = [Example(group.context, reference) for group in test_groups for reference in group.references]
    write_subset(e2e_dir, "e2e", recipe, {"train": adapt, "valid": e2e_valid, "test": test},
                  {"valid": group_references(e2e_valid), "test": test_groups})
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def pretrain_base(overrides: list[str], data_key: str) -> tuple[Path, dict[str, Any]]:
    """Stage 1: pretrain (resuming if interrupted) and export the base; reuse an exported base."""
    cfg = stage_config("pretrain", overrides, "model.source=random")
    base_dir = Path(cfg.paths.cache_dir) / BASE_DIR
    if (base_dir / PRETRAIN_RECORD).is_file():
        return base_dir, read_json(base_dir / PRETRAIN_RECORD)
    run_dir = Path(cfg.paths.runs_dir) / "mini" / f"pretrain-data-{data_key}"
    adapter_dir, record = train_stage(cfg, run_dir)
    built = build_model(cfg, for_training=False, adapter_dir=adapter_dir)
    summary = {key: record.get(key) for key in ("steps", "total_steps", "stop_reason", "train_loss", "valid_loss",
                                                "train_s", "completion_tokens")}
    summary.update(model=cfg.model.name, examples=_count_lines(split_path(cfg.task.data_dir, "dart", "train")),
                   run_dir=str(run_dir))
    with atomic_directory(base_dir) as staging:
        export_hf_model(built.model, staging)
        write_json_atomic(staging / PRETRAIN_RECORD, summary)
    return base_dir, summary


def _count_lines(path: Path) -> int:
    return path.read_text(encoding="utf-8").count("\n")


@dataclass(frozen=True)
class MiniJob:
    """One run of stages 2–4: a method (or the base) with one seed, in its own run directory."""

    name: str
    seed: int | None  # None: the base, which trains nothing
    overrides: tuple[str, ...]
    run_dir: Path
    threads: int  # torch threads of the run (fixed, so a rerun computes bit-for-bit the same)

    @property
    def tag(self) -> str:
        return f"mini/{self.name}" if self.seed is None else f"mini/{self.name}/seed-{self.seed}"


def run_job(job: MiniJob) -> dict[str, Any]:
    """`nola.pipeline.run` for one job (in this process or a worker process)."""
    import torch

    torch.set_num_threads(job.threads)
    keep_freed_memory()
    extra = () if job.seed is None else (f"train.seed={job.seed}",)
    cfg = stage_config(job.name, list(job.overrides), *extra)
    return run(cfg, job.run_dir, experiment=f"mini/{job.name}", tag=job.tag)


def adapt_and_score(overrides: list[str], base_dir: Path, data_key: str, methods: tuple[str, ...],
                    report: MiniReport, settings: MiniSettings) -> list[dict[str, Any]]:
    """Stages 2–4 for the base and every method with `settings.seeds` seeds (train.seed, + 1, ...),
    each run in its own directory named by the base's fingerprint and the data recipe (so neither is
    ever mixed with another), `settings.workers` runs at a time. Returns every run's results.json,
    in job order whatever order they finish in."""
    import torch

    fingerprint = base_fingerprint(load_gpt2(base_dir))[:12]
    probe = stage_config(BASE_RUN, overrides)
    root = Path(probe.paths.runs_dir) / "mini" / f"base-{fingerprint}-data-{data_key}"
    first_seed = int(stage_config(methods[0] if methods else BASE_RUN, overrides).train.seed)
    shared = (*overrides, f"model.source={base_dir}")
    threads = 1 if settings.workers > 1 else torch.get_num_threads()
    jobs = [MiniJob(BASE_RUN, None, shared, root / BASE_RUN, threads)]
    jobs += [MiniJob(name, seed, shared, root / name / f"seed-{seed}", threads)
             for name in methods for seed in range(first_seed, first_seed + settings.seeds)]
    report.runs = f"{settings.workers} at a time, {threads} torch thread{'s' if threads > 1 else ''} each"
    started = time.perf_counter()
    if settings.workers == 1:
        results = [run_job(job) for job in jobs]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=settings.workers, mp_context=context) as pool:
            results = list(pool.map(run_job, jobs))
    report.stage_done("adapt, decode, score", time.perf_counter() - started)
    return results


def _printed(group: RunGroup) -> dict[str, float]:
    """A row's metric means as the table prints them (papers' scale and decimals)."""
    spreads = group.spreads()
    task = get_task(group.task)
    return {c.key: round(spreads[c.key].mean * task.paper_factor(c.key), c.decimals) for c in task.columns}


def comparison(results: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: for every adapted row (seed means), the metrics on which it beats the un-adapted
    base, and whether its BLEU interval lies above the base's BLEU.

    A metric counts as won only if the numbers differ as printed in the table (papers' scale and
    decimals), so BLEU 1e-13 against 0 is a tie, not a win.
    """
    groups = group_runs(results)
    base = next(g for g in groups if g.first["adapter"]["kind"] == "none")
    floor = _printed(base)
    bleu_key = get_task(base.task).bleu_key
    lines = []
    for group in groups:
        if group is base:
            continue
        mine = _printed(group)
        better = [key for key in floor if (mine[key] < floor[key] if metric_name(key) in LOWER_IS_BETTER
                                           else mine[key] > floor[key])]
        verdict = "all" if len(better) == len(floor) else f"{len(better)} of"
        interval = _bleu_interval_text(group, floor[bleu_key])
        lines.append(f"- {group.first['experiment']}: beats the un-adapted base on {verdict} {len(floor)} metrics as "
                     f"printed" + ("" if len(better) == len(floor) else f" ({', '.join(better) or 'none'})")
                     + f"; {interval}")
    return lines


def _bleu_interval_text(group: RunGroup, base_bleu: float) -> str:
    row = our_row(group)
    if row.interval is None:
        return "no BLEU interval"
    low, high = row.interval
    where = "above" if low > base_bleu else ("below" if high < base_bleu else "overlapping")
    return f"BLEU 95% interval [{low:.1f}, {high:.1f}] {where} the base's {base_bleu:.1f}"


STATISTICS_NOTE = """What these statistics support and what they don't:
- mean ± sd is over {seeds} seeds (train.seed {seed_list}): batch order, dropout, the adapter's initialisation and
  NOLA's bases all change with the seed. With n = {seeds} the sd itself is uncertain by roughly half its value;
  differences within about one sd are not evidence of anything.
- the BLEU 95% interval is a percentile bootstrap over the {contexts} test contexts (1,000 seeded resamples) of the
  seed-mean BLEU: it shows how much BLEU would move on another test set drawn like this one, not over seeds,
  another base, another training subset or another budget.
- p vs LoRA is a two-sided paired bootstrap test of the BLEU difference to LoRA r=4 on the same resampled
  contexts, one test per row with no correction for multiple comparisons; a small p says the test set is large
  enough to tell the two seed-means apart, not that one method is better in general.
- everything here is one 4-layer base pretrained for a few minutes, {adapt} E2E training pairs and a short budget:
  it checks that the pipeline adapts and measures; it does not reproduce the papers' GPT-2 M/L numbers."""


def render_report(results: list[dict[str, Any]], report: MiniReport, settings: MiniSettings) -> str:
    """eval/results/mini.md: header (date, machine, load, budgets), the E2E table, every run, comparison."""
    table = build_tables(results, None)["md"]
    table = table[table.index("## "):]  # drop the paper-tables title; keep the E2E section
    load_after = os.getloadavg()
    total = time.time() - report.started
    pre = report.pretraining
    precision = sorted({(r.get("training") or {}).get("precision") for r in results if r.get("training")} - {None})
    seeds = sorted({r["seed"] for r in results if r.get("seed") is not None})
    lines = [
        "# Mini reproduction (`make mini`)", "",
        "Generated by `python -m nola.mini`; do not edit. What it shows and what it can't: README.md, "
        "section *Mini reproduction*.", "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_description()}",
        f"- training precision: {', '.join(precision) or '–'} ({report.precision_reason})",
        f"- load average (1/5/15 min) at start {_load(report.load_before)}, at end {_load(load_after)}; "
        f"1-min load at the end of each stage {min(report.loads):.1f}–{max(report.loads):.1f} "
        f"(a load above {os.cpu_count()} means other processes shared the {os.cpu_count()} cores)",
        f"- stage wall times: {', '.join(f'{name} {seconds / 60:.1f} min' for name, seconds in report.stages_s.items())}"
        f" (runs: {report.runs})",
        f"- total wall time: {total / 60:.1f} min (data preparation included when started by scripts/mini.sh)",
        f"- base: GPT-2 `{pre.get('model')}` pretrained from random init on {pre.get('examples')} DART+WebNLG "
        f"pairs: {pre.get('steps')} of {pre.get('total_steps')} steps ({pre.get('stop_reason')}), "
        f"{_num(pre.get('train_s'), 0)} s, final train loss {_num(pre.get('train_loss'), 3)}, "
        f"valid loss {_num(pre.get('valid_loss'), 3)}",
        f"- E2E: {settings.adapt_examples} training pairs drawn at random; {settings.seeds} seeds per method, each "
        f"reported at the epoch of its lowest validation loss ({settings.valid_examples} validation pairs); the first "
        f"{results[0]['contexts']} test contexts with all their references; decoding "
        f"{_settings(results[0]['scored']['decode'])}", "",
        table,
        "## Every run", "",
        "| run | seed | epoch (valid loss per epoch) | steps (of budget) | stop | BLEU [95% CI] | train s | decode s "
        "| adapter bytes |",
        "|---|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for result in results:
        training, timings = result.get("training", {}), result["timings"]
        lines.append(f"| {result['tag']} | {result.get('seed') if result.get('seed') is not None else '–'} | "
                     f"{_epoch_text(result.get('selection'))} | {training.get('steps', '–')} "
                     f"({training.get('total_steps', '–')}) | {training.get('stop_reason', '–')} | {_run_bleu(result)} | "
                     f"{timings['train_s']:.0f} | {timings['decode_s']:.0f} | {result['adapter_file_bytes']:,} |")
    lines += ["", "## Against the un-adapted base", "", *comparison(results), "",
              "## What the statistics can and cannot support", "",
              STATISTICS_NOTE.format(seeds=settings.seeds, seed_list=", ".join(map(str, seeds)),
                                     contexts=results[0]["contexts"], adapt=settings.adapt_examples), ""]
    return "\n".join(lines)


def _epoch_text(selection: dict[str, Any] | None) -> str:
    if not selection:
        return "–"
    values = ", ".join(f"{value:.3f}" for value in selection["candidates"].values())
    return f"{selection['epoch']} ({values})" if values else str(selection["epoch"])


def _run_bleu(result: dict[str, Any]) -> str:
    scale = get_task(result["task"]).paper_scale["BLEU"]
    bleu = headline_bleu(result["task"], result["metrics"])
    interval = result.get("bleu_interval")
    if not interval:
        return f"{bleu * scale:.1f}"
    return f"{bleu * scale:.1f} [{interval['low'] * scale:.1f}, {interval['high'] * scale:.1f}]"


def _settings(decode: dict[str, Any]) -> str:
    return (f"beam {decode['beam']}, length penalty {decode['length_penalty']}, no-repeat "
            f"{decode['no_repeat_ngram_size']}-grams, repetition penalty {decode['repetition_penalty']}, "
            f"at most {decode['max_new_tokens']} tokens")


def _load(values: tuple[float, ...]) -> str:
    return "/".join(f"{value:.1f}" for value in values) if values else "–"


def _num(value: Any, decimals: int) -> str:
    return f"{value:.{decimals}f}" if isinstance(value, (int, float)) else "–"


def run_mini(settings: MiniSettings, overrides: list[str], out_dir: Path, started: float | None = None,
             methods: tuple[str, ...] = METHODS) -> list[dict]:
    """All four stages; returns the results.json of the base and of every run of every method."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise NolaError(f"unknown mini method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    for key in ("seeds", "workers"):
        if getattr(settings, key) < 1:
            raise NolaError(f"--{key}={getattr(settings, key)} must be at least 1")
    report = MiniReport(started=started or time.time(), load_before=os.getloadavg())
    precision, report.precision_reason = training_precision(settings.precision, overrides)
    overrides = [f"train.precision={precision}", *overrides]  # the user's own train.precision wins
    probe = stage_config("pretrain", overrides)
    clock = time.perf_counter()
    data_key = write_subsets(Path(probe.paths.data_dir), Path(probe.task.data_dir),
                             Path(stage_config(BASE_RUN, overrides).task.data_dir), settings)
    report.stage_done("subsets", time.perf_counter() - clock)
    clock = time.perf_counter()
    base_dir, report.pretraining = pretrain_base(overrides, data_key)
    report.stage_done("pretrain", time.perf_counter() - clock)
    results = adapt_and_score(overrides, base_dir, data_key, tuple(methods), report, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "mini.md", render_report(results, report, settings))
    plot_params_vs_bleu(results, None, out_dir / "mini_params_vs_bleu.png")
    return results
