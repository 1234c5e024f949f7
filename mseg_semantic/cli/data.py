"""``mseg data status|download|prepare|relabel|verify``: build the MSeg composite dataset, one step per command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.text import format_table, print_json
from mseg_semantic.errors import InputError

if TYPE_CHECKING:
    from mseg_semantic.dataprep.verification import VerifyReport

MAX_WARNINGS = 50
WORKERS_HELP = "processes (default and maximum: the CPUs this process may use)"
DATASET_NAMES = (
    "ade20k bdd cityscapes coco-panoptic idd mapillary sunrgbd (training); "
    "camvid kitti pascal-context scannet voc2012 wilddash (test)"
)

ORDER = """\
the sequence, for every dataset (ROOT = the MSeg data root, e.g. export MSEG_DATA=/data/mseg):
  mseg data download ade20k                   # public datasets: fetched and extracted; the others print
  mseg data prepare ade20k                    #   what to download by hand and where to put it
  mseg data relabel ade20k                    # training datasets only (the records ship with the package)
  mseg data verify ade20k
  mseg data status                            # what is present, prepared, relabeled, verified"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "data",
        description="Build the MSeg composite dataset below a data ROOT (--root, default $MSEG_DATA) in the "
        "original mseg-api layout: ROOT/ADE20K, ROOT/BDD, ROOT/Cityscapes, ROOT/COCOPanoptic, ... Label files are "
        "written at exactly the paths the shipped split lists name, pixel for pixel as the original writes them. "
        "Every command is resumable (existing outputs are kept unless --overwrite) and writes each file atomically.",
        epilog=ORDER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "status",
        help="what is present per dataset: raw, prepared, relabeled, verified",
        description="Counts, per dataset, the raw label files, the prepared and the relabeled label files that the "
        "train/val lists name, and shows when 'mseg data verify' last passed.",
    )
    _root(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_status)

    p = sub.add_parser(
        "download",
        help="download and extract a public dataset (others: where to get them)",
        description="Public datasets (ade20k, coco-panoptic, camvid, voc2012, pascal-context, sunrgbd) are "
        "downloaded into ROOT/<folder>/ (resumable: run again after an interruption), checked (size and checksum "
        "where known) and extracted into the original layout. The registration-gated ones (bdd, cityscapes, idd, "
        "kitti, mapillary, scannet, wilddash) print what to download by hand, from where, and where to put it; "
        "'mseg data prepare' then accepts the archives or the extracted folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", metavar="DATASET", help=DATASET_NAMES)
    _root(p)
    p.add_argument("--mirror", metavar="URL", help="fetch URL/<archive name> instead of the original host")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_download)

    p = sub.add_parser(
        "prepare",
        help="convert a dataset's raw labels into its semseg taxonomy",
        description="Runs the dataset's converters and remaps, as the original does: COCO panoptic JSON+PNG -> "
        "semantic labels (201 -> 133 classes), IDD polygons -> label PNGs (40 -> 39), PASCAL-Context .mat -> 460 "
        "-> 60 classes, colour-coded CamVid-32 / Mapillary-66 decoded, ADE20K 151 -> 150, Cityscapes/KITTI/WildDash "
        "34 -> 19, ScanNet 41 -> 20, SUN RGB-D 38 -> 37; for the train and val lists. Archives lying in the "
        "dataset folder are extracted first. BDD and VOC 2012 are used as distributed. COCO's train lists (not "
        "shipped) are written below ROOT/COCOPanoptic/mseg_lists/ from the train annotation JSON.",
    )
    _dataset(p)
    _root(p)
    _run_options(p)
    p.set_defaults(func=run_step)

    p = sub.add_parser(
        "relabel",
        help="write a training dataset's -relabeled labels (MSeg's 228,776 segment relabels)",
        description="Remaps the prepared labels X to X-relabeled, then overwrites every segment named by the "
        "relabeling records, as the original (records in manifest order, lines in file order). The original records "
        "ship with the package. ade20k, cityscapes (both 19 and 34 classes) and idd overwrite every pixel of a "
        "segment; bdd, coco-panoptic, mapillary and sunrgbd require each pixel to hold the record's 'from' class. "
        "A record whose segment this copy of the data does not hold as recorded (absent, fewer than 10 pixels on "
        "ADE20K, another class on the datasets above) is left out with a warning naming the record file:line and "
        "counted in the summary and in 'mseg data status'; --strict stops instead. All records are checked, and "
        "every image they touch is computed, before any relabeled file is written.",
        epilog="records: a folder with records.tsv (tab-separated: dataset split from to file, optionally lines "
        "and sha256) and the record files it names, one '<image id>_<segment id>.<ext>' per line; or a copy of "
        "mseg-api's mseg/relabeled_data. Default: the original records inside the package.",
    )
    _dataset(p, training=True)
    _root(p)
    p.add_argument("--records", metavar="DIR", help="use this records folder instead of the shipped records")
    p.add_argument("--strict", action="store_true", help="stop, writing nothing, when a record does not fit the data")
    _run_options(p)
    p.set_defaults(func=run_step)

    p = sub.add_parser(
        "verify",
        help="check every train/val list line: files exist, sizes agree, labels hold only classes",
        description="Checks every line of the dataset's train/val lists (semseg and -relabeled): the image and "
        "the label exist, their sizes agree, the label is single-channel 8-bit and holds only classes of its "
        "taxonomy or 255. Prints a per-split table; exits 1 listing the first problems when anything is wrong. "
        "With --names, DATASET is a dataset of your own, checked the same way against its names list.",
    )
    _dataset(p)
    _root(p)
    p.add_argument(
        "--list",
        dest="list_file",
        metavar="FILE",
        action="append",
        help="check only the images named in FILE; for a dataset of your own (--names): a split list to check "
        "whole, 'image label' per line relative to --root (repeatable)",
    )
    p.add_argument(
        "--names",
        metavar="FILE",
        help="DATASET is one of your own: its names list (line i names label i-1); labels are checked against it",
    )
    p.add_argument(
        "--master", metavar="FILE", help="with --names: a master table with a DATASET column, checked with the data"
    )
    p.epilog = (
        "examples:\n  mseg data verify ade20k --root data/\n"
        "  mseg data verify my-streets --root streets/ --names streets/names.txt --list streets/train.txt "
        "--master my_master.tsv"
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--workers", type=int, default=None, metavar="N", help=WORKERS_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_verify)


def _dataset(parser: argparse.ArgumentParser, training: bool = False) -> None:
    names = "ade20k bdd cityscapes coco-panoptic idd mapillary sunrgbd" if training else DATASET_NAMES
    parser.add_argument("dataset", metavar="DATASET", help=names)


def _root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", metavar="ROOT", help="the MSeg data root (default: $MSEG_DATA)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--list",
        dest="list_file",
        metavar="FILE",
        help="process only the images whose path (first column, as in the shipped lists) is in FILE",
    )
    parser.add_argument("--workers", type=int, default=None, metavar="N", help=WORKERS_HELP)
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _check_dataset(name: str, training: bool = False) -> None:
    """Unknown names (and test datasets given to relabel) fail before anything else is looked at."""
    from mseg_semantic.dataprep.datasets import get_dataset

    spec = get_dataset(name)
    if training and not spec.relabel:
        raise InputError(f"{spec.name} is a test dataset; only the training datasets are relabeled")


def _root_of(args: argparse.Namespace) -> str:
    root = args.root or os.environ.get("MSEG_DATA")
    if not root:
        raise InputError("give the data root with --root ROOT (or set MSEG_DATA)")
    from mseg_semantic.dataprep.run import check_root

    check_root(root)
    return root


def _workers(args: argparse.Namespace) -> int:
    """--workers, at most the CPUs this process may use (default: all of them)."""
    from mseg_semantic.locks import usable_cpus

    cpus = usable_cpus()
    if args.workers is None:
        return cpus
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > cpus:
        print(f"note: --workers {args.workers} lowered to {cpus}, the CPUs this process may use", file=sys.stderr)
        return cpus
    return args.workers


def run_status(args: argparse.Namespace) -> int:
    from mseg_semantic.dataprep.verification import status

    rows = status(_root_of(args))
    if args.json:
        print_json(rows)
        return 0

    def frac(value):
        return "-" if value is None else f"{value[0]}/{value[1]}"

    table = [
        [r["dataset"], r["role"], r["folder"] + ("" if r["present"] else " (missing)"), frac(r["raw"]),
         frac(r["prepared"]), frac(r["relabeled"]) if "relabeled" in r else "", r.get("unrelabeled", ""),
         r["verified"] or "no"]
        for r in rows
    ]  # fmt: skip
    headers = ["dataset", "role", "folder", "raw", "prepared", "relabeled", "unrelabeled", "verified"]
    print(format_table(headers, table))
    print("unrelabeled: segments a record names that this copy of the data does not hold as recorded (left as is)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    if args.dataset == "records":
        raise InputError("the relabeling records ship with the package: 'mseg data relabel' needs no download")
    from mseg_semantic.dataprep.datasets import get_dataset
    from mseg_semantic.dataprep.download import download_dataset, manual_instructions

    spec = get_dataset(args.dataset)
    root = args.root or os.environ.get("MSEG_DATA")
    if root and not os.path.exists(os.path.expanduser(root)):
        os.makedirs(os.path.expanduser(root))  # a new data root: the download is its first content
    root = _root_of(args)
    text = manual_instructions(spec.name, root)
    if text:
        print(text)  # registration-gated: nothing to fetch automatically, and that is not an error
        return 0
    placed = download_dataset(spec.name, root, mirror=args.mirror, progress=not args.quiet)
    if placed:
        names = ", ".join(p.name for p in placed)
        print(f"{spec.name}: downloaded and extracted below {Path(root) / spec.top}: {names}")
    else:
        print(f"{spec.name}: already downloaded and extracted below {Path(root) / spec.top}")
    print(f"next: mseg data prepare {spec.name}")
    return 0


def run_step(args: argparse.Namespace) -> int:
    """``prepare`` or ``relabel`` (the same options; relabel also takes --records)."""
    relabeling = args.data_command == "relabel"
    _check_dataset(args.dataset, training=relabeling)
    from mseg_semantic.dataprep.run import prepare, relabel

    options = dict(list_file=args.list_file, workers=_workers(args), overwrite=args.overwrite, progress=not args.quiet)
    root = _root_of(args)
    if relabeling:
        summaries = relabel(args.dataset, root, records=args.records, strict=args.strict, **options)
    else:
        summaries = [prepare(args.dataset, root, **options)]
    for summary in summaries:
        _warn_unrelabeled(summary.unrelabeled, Path(root))
        print("\n".join(summary.lines()))
    return 0


def _warn_unrelabeled(lines: list[str], root: Path) -> None:
    """One warning per update a relabel run left out (the first MAX_WARNINGS; all are in the skips file)."""
    from mseg_semantic.dataprep.run import SKIPS

    for line in lines[:MAX_WARNINGS]:
        print(f"warning: {line} (left unrelabeled)", file=sys.stderr)
    if len(lines) > MAX_WARNINGS:
        print(f"warning: ... and {len(lines) - MAX_WARNINGS} more, all listed in {root}/<dataset>/{SKIPS}",
              file=sys.stderr)  # fmt: skip


def _verify(args: argparse.Namespace) -> VerifyReport:
    """A built-in dataset's lists, or (``--names``) the lists of a dataset of the user's own."""
    from mseg_semantic.dataprep.verification import verify, verify_own

    lists, progress = args.list_file or [], not args.quiet
    if args.names is not None:
        if not lists:
            raise InputError("a dataset of your own has no shipped lists: give its split lists with --list FILE")
        return verify_own(
            args.dataset, _root_of(args), args.names, lists, master=args.master, workers=_workers(args),
            progress=progress,
        )  # fmt: skip
    if args.master is not None:
        raise InputError("--master goes with --names (a dataset of your own and its column in the table)")
    if len(lists) > 1:
        raise InputError("give --list once for a built-in dataset (the images to check)")
    _check_dataset(args.dataset)
    list_file = lists[0] if lists else None
    return verify(args.dataset, _root_of(args), list_file=list_file, workers=_workers(args), progress=progress)


def run_verify(args: argparse.Namespace) -> int:
    from mseg_semantic.dataprep.verification import MAX_SHOWN

    report = _verify(args)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print_json(report.as_dict())
        return 0 if report.passed else 1
    rows = [[s.taxonomy, s.split, s.entries, s.ok, s.problems] for s in report.splits]
    print(format_table(["taxonomy", "split", "entries", "ok", "problems"], rows))
    if report.passed:
        print(f"{report.dataset}: verified")
        return 0
    print(f"{report.dataset}: {len(report.problems)} problems; the first:")
    for line in report.problems[:MAX_SHOWN]:
        print(f"  {line}")
    return 1
