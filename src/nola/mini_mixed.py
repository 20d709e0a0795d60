"""`python -m nola.mini_mixed [options] [hydra overrides]`: many adapters from the mini base decoded in
one mixed batch (`make mini-mixed`, after `make mini`).

A shell: the options become `nola.mini.mixed.DemoSettings` and `run_demo` does the work (its module
docstring describes the stages); whether each task's mixed hypotheses equal its single-task ones is
printed as JSON, and a difference is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nola.allocator import keep_freed_memory
from nola.errors import NolaError, exit_on_user_error
from nola.mini import mixed
from nola.mini.mixed import DemoSettings, run_demo


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(prog="python -m nola.mini_mixed", description=mixed.__doc__.split("\n")[0])
    parser.add_argument("--out", default="eval/results")
    for name in ("train_examples", "valid_examples", "test_contexts", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("overrides", nargs="*", help="hydra overrides applied to every stage")
    args = parser.parse_args(argv)
    keep_freed_memory()
    settings = DemoSettings(**{name: getattr(args, name) for name in DemoSettings.__dataclass_fields__})
    report = run_demo(settings, list(args.overrides), Path(args.out))
    json.dump({row["task"]: row["identical"] for row in report["tasks"]}, sys.stdout)
    sys.stdout.write("\n")
    if not all(row["identical"] for row in report["tasks"]):
        raise NolaError("a task's mixed hypotheses differ from its single-task decode; see the report")


if __name__ == "__main__":
    main()
