"""`python -m nola.mini [options] [hydra overrides]`: the offline mini reproduction (`make mini`).

A shell: the options become `nola.mini.reproduction.MiniSettings` and `run_mini` does the work
(its module docstring describes the stages); the metrics of every run are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nola.allocator import keep_freed_memory
from nola.errors import exit_on_user_error
from nola.mini import reproduction
from nola.mini.reproduction import METHODS, PRECISION_CHOICES, MiniSettings, run_mini


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    defaults = MiniSettings()
    parser = argparse.ArgumentParser(prog="python -m nola.mini", description=reproduction.__doc__.split("\n")[0])
    parser.add_argument("--out", default="eval/results", help="where mini.md and the figure go")
    parser.add_argument("--started-at", type=float, default=None, help="epoch seconds the whole job started")
    for name in ("pretrain_examples", "pretrain_max_chars", "adapt_examples", "valid_examples", "test_contexts", "seeds",
                 "workers", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=defaults.precision,
                        help="training precision: fp32, bf16, or auto = bf16 where the device computes it natively")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated adapted models to run besides the un-adapted base (default: all of {','.join(METHODS)})")
    parser.add_argument("overrides", nargs="*", help="hydra overrides applied to every stage (e.g. model=tiny)")
    args = parser.parse_args(argv)
    return args, list(args.overrides)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    keep_freed_memory()
    settings = MiniSettings(**{name: getattr(args, name) for name in MiniSettings.__dataclass_fields__})
    results = run_mini(settings, overrides, Path(args.out), args.started_at, tuple(args.methods.split(",")))
    summary = {result["tag"]: result["metrics"] for result in results}  # one entry per run (and seed)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
