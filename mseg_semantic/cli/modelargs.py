"""Command-line options shared by the commands that run a model (``demo``, later ``eval``)."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.inference.config import HEADS, PADS, PRECISIONS, SPEED_FIELDS, preset_names
from mseg_semantic.taxonomy import get_taxonomy, taxonomy_names


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="PATH|NAME",
        help="checkpoint: an original MSeg .pth (needs --arch), a .safetensors from 'mseg convert', or a model name "
        "from 'mseg zoo list' (downloaded and cached on first use). Default: camvid11-compact, a small CamVid-11 "
        "model that ships with the package (11 street-scene classes; use --model mseg-3m for the 194-class "
        "universal MSeg model)",
    )
    group.add_argument(
        "--arch", help="architecture of an original .pth: hrnet_w48 (all released models), pspnet50, ..."
    )
    group.add_argument(
        "--num-classes", type=int, metavar="K", help="output classes (default: read from the checkpoint)"
    )
    group.add_argument(
        "--model-taxonomy",
        metavar="T",
        help="taxonomy of the model's outputs (default: the zoo model's or recorded in the checkpoint; universal for "
        "194 classes, naive for 316, the test taxonomy with that many classes for oracle models)",
    )
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for the network (default: PyTorch's, one per core). With several processes on one "
        "machine (torchrun, parallel jobs) give each its share: oversubscribed cores make PyTorch many times slower",
    )


def add_config_arguments(parser: argparse.ArgumentParser, default: str, *, zoo_preset: bool = False) -> None:
    """``--config`` and the speed-up options; ``zoo_preset``: a zoo model's own preset is the default."""
    group = parser.add_argument_group("inference settings")
    if zoo_preset:
        choice = f"the zoo model's own preset ('mseg zoo info NAME'), {default} for other checkpoints"
    else:
        choice = f"{default}; compact_360_ss for the bundled camvid11-compact"
    group.add_argument(
        "--config",
        metavar="PRESET|FILE.yaml",
        help=f"preset ({', '.join(preset_names())}) or a YAML file (default: {choice})",
    )
    parser.set_defaults(default_config=default, zoo_preset=zoo_preset)
    group.add_argument("--base-size", type=int, metavar="N", help="override: short side at scale 1.0")
    group.add_argument("--scales", type=float, nargs="+", metavar="S", help="override: scale multipliers")
    group.add_argument("--crop-size", type=int, metavar="N", help="override: square sliding-window size")
    group.add_argument("--no-flip", action="store_true", help="override: no flip averaging (faster, not the original)")
    speed = parser.add_argument_group(
        "speed-ups",
        "Defaults reproduce the original numerics. --fast = --precision auto --head low_res --channels-last: 2.4-3.4x "
        "faster for HRNet-W48 on a CPU with AVX512-BF16 (measured; AMX CPUs and GPUs should gain more, not "
        "measured), label maps agreeing with the original ones on >= 99% of pixels. "
        "--pad minimal, --max-window and --no-flip save more but change more labels (README: Fast inference). An "
        "explicit option wins over --fast: --fast --precision fp32.",
    )
    speed.add_argument("--fast", action="store_true", default=None, help="the speed-ups that keep >= 99%% of labels")
    speed.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="network arithmetic: fp32 (original), bf16 (a BatchNorm-folded bf16 copy), fp16 (autocast), "
        "auto = bf16 where the hardware has it",
    )
    speed.add_argument(
        "--pad",
        choices=PADS,
        help="crop: pad small images to the full crop (original); minimal: only as far as the stride-32 grid needs",
    )
    speed.add_argument(
        "--max-window", type=int, metavar="N", help="with --pad minimal: run images up to N pixels a side whole"
    )
    speed.add_argument(
        "--head",
        choices=HEADS,
        help="full: softmax at full resolution (original); low_res: softmax and flip average at 1/4, then upsample",
    )
    speed.add_argument(
        "--batch-windows", type=int, metavar="N", help="windows (with their flips) and video frames per forward pass"
    )
    speed.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC layout for convolutions"
    )


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads N``: the number of CPU threads PyTorch uses in this process."""
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


def config_overrides(args: argparse.Namespace) -> dict:
    """The inference settings given on the command line, for ``load_config``/``Segmenter`` keyword arguments."""
    overrides: dict = {
        key: getattr(args, key)
        for key in ("fast", *SPEED_FIELDS)
        if getattr(args, key, None) is not None
    }
    if args.base_size is not None:
        overrides["base_size"] = args.base_size
    if args.scales:
        overrides["scales"] = args.scales
    if args.crop_size is not None:
        overrides["crop_size"] = args.crop_size
    if args.no_flip:
        overrides["flip"] = False
    return overrides


def resolve_model_args(args: argparse.Namespace) -> None:
    """Fill in ``args.model`` (the bundled default model) and ``args.config`` (the zoo model's preset) when not given.

    Cheap: reads the zoo table only, so commands can check their arguments before loading a checkpoint."""
    from mseg_semantic import zoo

    if args.model is None:
        args.model = zoo.DEFAULT_MODEL
    if args.config is None:
        entry = zoo.lookup(args.model)
        # A bundled model's preset is part of it (its eval protocol too); other zoo models' presets are for the demo.
        use_zoo = entry is not None and (args.zoo_preset or entry.bundled is not None)
        args.config = entry.preset if use_zoo else args.default_config


def describe_default_model(args: argparse.Namespace) -> str | None:
    """One line about the bundled default model when the user did not pick a model, else None."""
    from mseg_semantic import zoo

    if args.model != zoo.DEFAULT_MODEL:
        return None
    return (
        f"model: {zoo.DEFAULT_MODEL}, the small CamVid-11 model shipped with the package (11 street-scene classes); "
        "for the 194-class MSeg universal model use --model mseg-3m (downloaded once, 528 MB)"
    )


def load_model_from_args(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The model named by ``--model`` (and ``--arch``/``--num-classes``/``--model-taxonomy``) and its taxonomy; after
    :func:`resolve_model_args`. The taxonomy is what :func:`mseg_semantic.load_model` gives the model; a model whose
    class count does not tell it needs ``--model-taxonomy``."""
    from mseg_semantic.zoo import load_model

    # A checkpoint path, or a zoo name downloaded and cached on first use (options contradicting it are errors).
    model = load_model(
        args.model, arch=args.arch, num_classes=args.num_classes, device=args.device, taxonomy=args.model_taxonomy
    )
    if model.taxonomy is None:
        others = [t for t in taxonomy_names() if get_taxonomy(t).num_classes == model.num_classes]
        hint = f"; taxonomies with {model.num_classes} classes: {', '.join(others)}" if others else ""
        raise TaxonomyError(
            f"cannot tell the taxonomy of a model with {model.num_classes} outputs: pass --model-taxonomy{hint}"
        )
    return model, model.taxonomy
