"""`python -m nola.tables`: regenerate the paper tables and the parameters-vs-BLEU figure.

Reads every results.json under --results-dir (default runs/), writes tables.md, tables.tex and
params_vs_bleu.png to --out (default eval/results/), each atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nola.fileio import write_text_atomic
from nola.errors import exit_on_user_error
from nola.tables.figure import plot_params_vs_bleu
from nola.tables.published import DEFAULT_PUBLISHED, load_published
from nola.tables.render import build_tables
from nola.tables.results import ANY_SPLIT, collect_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nola.tables",
        description="Regenerate the paper tables and the parameters-vs-BLEU figure from results.json files.",
    )
    parser.add_argument("--results-dir", nargs="+", default=["runs"], help="directories searched for results.json")
    parser.add_argument("--out", default="eval/results", help="output directory")
    parser.add_argument("--published", default=str(DEFAULT_PUBLISHED), help="the papers' numbers (JSON)")
    parser.add_argument("--no-published", action="store_true", help="tables of our runs only")
    parser.add_argument("--only-tag", default=None, help="keep only runs whose results.json 'tag' equals this")
    parser.add_argument("--split", default="test", help=f"keep runs scored on this split ('{ANY_SPLIT}': all)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    published = None if args.no_published else load_published(args.published)
    collected = collect_results(args.results_dir, only_tag=args.only_tag, split=args.split)
    for note in collected.notes:
        print(f"warning: {note}", file=sys.stderr)
    tables = build_tables(collected.records, published)
    out = Path(args.out)
    written = [out / "tables.md", out / "tables.tex", out / "params_vs_bleu.png"]
    write_text_atomic(written[0], tables["md"])
    write_text_atomic(written[1], tables["tex"])
    plot_params_vs_bleu(collected.records, published, written[2])
    rows = len(published.rows) if published else 0
    print(f"{len(collected.records)} run(s), {rows} published row(s) -> " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
