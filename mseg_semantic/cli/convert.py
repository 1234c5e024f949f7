"""``mseg convert IN.pth OUT.safetensors --arch hrnet_w48``: an original checkpoint to a slim safetensors file.

The released MSeg checkpoints are 528 MB because they carry the optimizer state; the converted file holds the
weights only (about 264 MB for HRNet-W48) plus the arch, class count and config, so ``load_model`` and the other
commands need no ``--arch`` for it.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from mseg_semantic.cli import add_command_parser
from mseg_semantic.errors import InputError
from mseg_semantic.models import convert_checkpoint, list_models
from mseg_semantic.models.checkpoint import RESERVED_METADATA


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "convert",
        description="Load a checkpoint (the original {'state_dict': ..., 'optimizer': ...} layout, a bare state_dict "
        "or a .safetensors file) strictly into the given architecture and write its weights with the arch, class "
        "count and config as metadata. The file is read with torch.load(weights_only=True): no code in it runs.",
    )
    parser.add_argument("input", metavar="IN", type=Path, help="checkpoint to convert, e.g. mseg-3m.pth")
    parser.add_argument("output", metavar="OUT", type=Path, help="file to write, e.g. mseg-3m.safetensors")
    parser.add_argument(
        "--arch",
        choices=list_models(),
        help="architecture of the checkpoint (required for original .pth files; all released MSeg models are "
        "hrnet_w48)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="class count (default: read from the checkpoint's classifier head; 194 for universal models)",
    )
    parser.add_argument("--config", type=Path, metavar="YAML", help="HRNet stage config for --arch hrnet")
    parser.add_argument(
        "--taxonomy",
        metavar="NAME",
        help="taxonomy of the model's outputs to record, e.g. universal or camvid-11 (commands default to it)",
    )
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra metadata to record (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run, keyword_options={"overwrite": "--force"})


def _parse_meta(items: list[str]) -> dict[str, str]:
    # Keys the converter writes itself, or that would collide with its own arguments.
    reserved = {*RESERVED_METADATA, *inspect.signature(convert_checkpoint).parameters}
    metadata = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--meta expects KEY=VALUE, got {item!r}")
        if key in reserved:
            raise InputError(f"--meta {key}=... is not allowed: {key!r} is set by 'mseg convert' itself")
        metadata[key] = value
    return metadata


def run(args: argparse.Namespace) -> int:
    metadata = _parse_meta(args.meta)
    if args.taxonomy:
        metadata["taxonomy"] = args.taxonomy
    out = convert_checkpoint(
        args.input,
        args.output,
        args.arch,
        args.num_classes,
        config=args.config,
        overwrite=args.force,
        **metadata,
    )
    size_in, size_out = args.input.stat().st_size, out.stat().st_size
    print(f"wrote {out} ({size_out / 1e6:.1f} MB; {args.input} was {size_in / 1e6:.1f} MB)")
    return 0
