"""``mseg zoo list|info|download``: the released MSeg checkpoints by name."""

from __future__ import annotations

import argparse

from mseg_semantic import zoo
from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.text import format_table, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "zoo",
        description="The released MSeg checkpoints (HRNetV2-W48) by name. Any command taking --model accepts these "
        "names: the checkpoint is downloaded once into the cache ($MSEG_HOME, default ~/.cache/mseg), verified "
        "(a real checkpoint with the expected keys and class count; its sha256 recorded and checked afterwards) and "
        "converted to a slim safetensors copy. MSEG_MODEL_MIRROR=URL (or --mirror) downloads URL/<filename> "
        "instead of Google Drive.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    p_list = sub.add_parser("list", help="every model with its taxonomy and published zero-shot mIoU")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_list.set_defaults(func=run_list)
    p_info = sub.add_parser("info", help="everything known about one model")
    p_info.add_argument("name", metavar="NAME")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_info.set_defaults(func=run_info)
    p_get = sub.add_parser("download", help="download, verify and cache a model (resumes a partial download)")
    p_get.add_argument("name", metavar="NAME")
    p_get.add_argument("--mirror", metavar="URL", help="fetch URL/<filename> instead of the original source")
    p_get.add_argument("--quiet", action="store_true", help="no progress bar")
    p_get.set_defaults(func=run_download)


def _cached(model: zoo.ZooModel) -> str:
    return "yes" if (zoo.model_dir(model) / f"{model.name}.safetensors").exists() or model.bundled else "no"


def run_list(args: argparse.Namespace) -> int:
    models = [zoo.get_model_info(n) for n in zoo.model_names()]
    if args.json:
        print_json([{**m.info(), "cached": _cached(m) == "yes"} for m in models])
        return 0
    rows = [[m.name, m.taxonomy, m.num_classes, m.train_resolution, m.published.get("harmonic_mean", "-"),
             m.published.get(m.taxonomy, "") if m.taxonomy not in ("universal", "naive") else "", _cached(m)]
            for m in models]  # fmt: skip
    print(
        format_table(["name", "taxonomy", "classes", "trained at", "zero-shot h. mean", "oracle mIoU", "cached"], rows)
    )
    print(f"\ncache: {zoo.cache_dir()}  (set MSEG_HOME to move it)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    model = zoo.get_model_info(args.name)
    info = {**model.info(), "cached": _cached(model) == "yes", "cache_folder": str(zoo.model_dir(model))}
    if args.json:
        print_json(info)
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        print(f"{key.ljust(width)}  {value}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    path = zoo.fetch(args.name, mirror=args.mirror, progress=not args.quiet)
    where = "ships with the package" if zoo.get_model_info(args.name).bundled else "verified and cached"
    print(f"{args.name}: {where} at {path}")
    return 0
