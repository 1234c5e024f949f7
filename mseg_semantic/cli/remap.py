"""``mseg remap``: convert a folder of label PNGs between two taxonomies."""

from __future__ import annotations

import argparse

from mseg_semantic.cli import add_command_parser
from mseg_semantic.taxonomy import remap_label_folder, remap_tables


def register(subparsers: argparse._SubParsersAction) -> None:
    pairs = "\n".join(f"  {s} -> {t}" for s, t in sorted(remap_tables()))
    parser = add_command_parser(
        subparsers,
        "remap",
        description="Convert every label PNG below INPUT_DIR from taxonomy A to taxonomy B and write it to the same "
        "relative path below OUTPUT_DIR (uint8 PNG, or uint16 when B has more than 255 classes). Colour-coded raw "
        "labels (camvid-32, mapillary-public66) are decoded with their palette. Inputs are never modified; each "
        "output is written atomically; existing outputs are only replaced with --overwrite. A label value that is "
        "not a class of A stops the run with the file name, unless --non-strict sends it to 255.",
        epilog="pairwise tables:\n" + pairs + "\nany training taxonomy (or a raw one with a table to it) can also go "
        "to 'universal', and an unrelabeled training taxonomy to 'naive'.\n\nexample:\n"
        "  mseg remap --from cityscapes-34 --to cityscapes-19 gtFine/ gtFine_19cls/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input_dir", metavar="INPUT_DIR", help="folder with label PNGs (searched recursively)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder for the converted labels")
    parser.add_argument("--from", dest="source", required=True, metavar="A", help="taxonomy of the input labels")
    parser.add_argument("--to", dest="target", required=True, metavar="B", help="taxonomy of the output labels")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument("--non-strict", action="store_true", help="map values that are not classes of A to 255")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="files converted in parallel (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, keyword_options={"strict": "--non-strict"})


def run(args: argparse.Namespace) -> int:
    written = remap_label_folder(
        args.input_dir,
        args.output_dir,
        args.source,
        args.target,
        overwrite=args.overwrite,
        strict=not args.non_strict,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(f"wrote {len(written)} label files ({args.source} -> {args.target}) to {args.output_dir}")
    return 0
