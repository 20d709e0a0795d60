"""`python -m nola.bench` (`make bench`): run the benchmark sections, write eval/results/bench.{json,md}.

    python -m nola.bench                              # every section, full size
    python -m nola.bench --sections adapter_step,training --repeats 5
    python -m nola.bench --quick --results-dir /tmp/b # tiny shapes, seconds (tests, smoke runs)
    python -m nola.bench --merge-from gpu/bench.json  # add sections measured on another machine

Sections needing transformers/peft (the `bench` extra) record why they were skipped when those are
missing; the GPU section records "skipped: no GPU" without CUDA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nola.allocator import keep_freed_memory
from nola.bench import adapter_step, decode, gpu, multi_adapter, serving, soak, training
from nola.machine import describe_machine, load_average
from nola.bench.report import SECTION_ORDER, merge_sections, read_report, write_report
from nola.errors import NolaError, exit_on_user_error
from nola.model import GPT2Config

QUICK_SHAPE = adapter_step.AdapterShape(
    "tiny", n_embd=64, n_head=4, n_layer=2, nola_rank=4, nola_alpha=4.0, num_basis=32
)
QUICK_GPU = (gpu.GpuRecipe("tiny", num_basis=32, nola_alpha=4.0, batch_size=8, grad_accum=2),)
# Per section: (run function, full-size arguments, --quick arguments). `repeats`/`warmup` are
# overridable from the command line.
SECTIONS: dict[str, tuple[Callable[..., dict], dict, dict]] = {
    "adapter_step": (
        adapter_step.run,
        dict(batch=8, seq_len=128, repeats=10, warmup=2),
        dict(batch=2, seq_len=16, repeats=2, warmup=1, shapes=(QUICK_SHAPE,)),
    ),
    "training": (
        training.run,
        dict(repeats=8, warmup=2),
        dict(repeats=2, warmup=1, config=GPT2Config(n_embd=64, n_layer=2, n_head=4), matmul_size=128,
             matmul_repeats=2, profile_top=5,
             output_layer=dict(config=GPT2Config(n_embd=64, n_layer=2, n_head=4),
                               mini=GPT2Config(n_embd=64, n_layer=1, n_head=4), context_lengths=(8, 9),
                               completion_lengths=(9, 7), chunk_tokens=4)),
    ),
    "decode": (  # 3 rounds: one round decodes 16 prompts × beam 10 × 64 tokens with each contender
        decode.bench_decode,
        dict(repeats=3),
        dict(quick=True),
    ),
    "multi_adapter": (  # 1,000 NOLA adapters on GPT-2 S shapes; 32 prompts, 32 adapters; server load test
        multi_adapter.run,
        dict(repeats=3),
        dict(quick=True),
    ),
    "serving": (  # the server's batching: varied max_tokens, short requests among long ones (join vs not)
        serving.run,
        dict(),
        dict(quick=True),
    ),
    "soak": (  # 3 minutes of 8 clients over 20+ adapters added, replaced and removed under them, then verified
        soak.run,
        dict(),
        dict(quick=True),
    ),
    "gpu": (
        gpu.run,
        dict(repeats=20, warmup=5),
        dict(repeats=2, warmup=1, recipes=QUICK_GPU, matmul_size=256),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nola.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTION_ORDER),
                        help=f"comma-separated subset of {', '.join(SECTION_ORDER)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and 2 repeats: checks the machinery in seconds")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison (default: per section)")
    parser.add_argument("--warmup", type=int, help="untimed rounds before timing (default: per section)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--results-dir", type=Path, default=Path("eval/results"), help="where bench.json/.md go")
    parser.add_argument("--merge-from", type=Path,
                        help="copy the sections of another bench.json into this one (measures nothing)")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown or not args.sections:
        raise NolaError(f"--sections: unknown section {unknown[0] if unknown else '(none)'!r}; "
                        f"choose from {', '.join(SECTION_ORDER)}")
    for key in ("repeats", "warmup", "threads"):
        value = getattr(args, key)
        if value is not None and value < (0 if key == "warmup" else 1):
            raise NolaError(f"--{key}={value} is too small")
    return args


def run_section(name: str, args: argparse.Namespace) -> dict:
    """Run one section and wrap its result with when, where and how it was measured."""
    function, full, quick = SECTIONS[name]
    kwargs = dict(quick if args.quick else full)
    kwargs.update({key: getattr(args, key) for key in ("repeats", "warmup") if getattr(args, key) is not None})
    before, started = load_average(), time.perf_counter()
    result = function(**kwargs)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "settings": {"quick": args.quick, **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, bool))}},
        "duration_s": time.perf_counter() - started,
        "load_average_before": before,
        "load_average_after": load_average(),
        "result": result,
    }


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge_from and not args.merge_from.is_file():
        raise NolaError(f"--merge-from {args.merge_from}: no such file; give the bench.json to copy sections from")
    report = read_report(args.results_dir / "bench.json")
    if args.merge_from:
        sections = read_report(args.merge_from)["sections"]
    else:
        sections = {name: run_section(name, args) for name in SECTION_ORDER if name in args.sections}
    json_path, md_path = write_report(args.results_dir, merge_sections(report, sections))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
