"""``mseg results``: collect metrics.json files into the paper's table with the harmonic mean."""

from __future__ import annotations

import argparse
from pathlib import Path

from mseg_semantic.cli import add_command_parser
from mseg_semantic.evaluation.tables import collect
from mseg_semantic.fileio import write_bytes_atomic


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "results",
        description="Read the metrics.json files written by 'mseg eval' (the files given, or found recursively in "
        "the folders given) and print the table the MSeg paper reports: one row per model, one column per dataset "
        "(mIoU, percent), and the harmonic mean across the datasets. Several results for one model and dataset "
        "(e.g. base sizes 360/720/1080) are combined by their maximum, as in the paper.",
        epilog="example:\n  mseg results mseg_eval/ --out results/zero_shot   # writes .md, .csv and .json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="metrics.json files or folders holding them")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown", help="printed format")
    parser.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md, PREFIX.csv and PREFIX.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = collect(args.paths)
    texts = {"markdown": table.to_markdown(), "csv": table.to_csv(), "json": table.to_json()}
    print(texts[args.format], end="")
    if args.out:
        prefix = Path(args.out)
        for suffix, key in ((".md", "markdown"), (".csv", "csv"), (".json", "json")):
            write_bytes_atomic(prefix.with_name(prefix.name + suffix), texts[key].encode())
    return 0
