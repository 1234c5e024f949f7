"""The options of the commands that run a model (``demo``, ``eval``) and the frozen :class:`ModelSpec` made of them.

:func:`model_spec` reads those options once: it fills in the bundled default model and the preset, checks the
device and the thread count, and parses the inference settings (preset or YAML file plus the overrides) into one
:class:`~mseg_semantic.inference.InferenceConfig`. The commands then work from the spec; nothing rewrites the
argparse namespace or parses the settings a second time. All of it is cheap (no checkpoint is read), so a typo
is reported before a 500 MB model loads.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from mseg_semantic import distributed, zoo
from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.inference.config import HEADS, PADS, SPEED_FIELDS, InferenceConfig, load_config
from mseg_semantic.precision import INFERENCE_BACKENDS, INFERENCE_PRECISIONS
from mseg_semantic.presets import preset_for, preset_names
from mseg_semantic.taxonomy import get_taxonomy, taxonomy_names


@dataclass(frozen=True)
class ModelSpec:
    """Which model runs where, and how: what the model options of the command line say, resolved and checked."""

    model: str  # a checkpoint path or a zoo name (the bundled model when --model was not given)
    arch: str | None
    num_classes: int | None
    model_taxonomy: str | None  # as given; None: the one the model carries
    device: torch.device  # checked to exist; under torchrun, "cuda" is this process's GPU
    threads: int | None
    config: InferenceConfig  # the preset with the overrides of the command line applied
    default_model: bool  # --model was not given

    def apply_threads(self) -> None:
        """``--threads N``: the number of CPU threads PyTorch uses in this process."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def load(self) -> tuple[nn.Module, str]:
        """The model on :attr:`device` and its taxonomy (what :func:`mseg_semantic.load_model` gives the model; a
        model whose class count does not tell it needs ``--model-taxonomy``)."""
        # A checkpoint path, or a zoo name downloaded and cached on first use (options contradicting it are errors).
        model = zoo.load_model(
            self.model, arch=self.arch, num_classes=self.num_classes, device=self.device, taxonomy=self.model_taxonomy
        )
        if model.taxonomy is None:
            others = [t for t in taxonomy_names() if get_taxonomy(t).num_classes == model.num_classes]
            hint = f"; taxonomies with {model.num_classes} classes: {', '.join(others)}" if others else ""
            raise TaxonomyError(
                f"cannot tell the taxonomy of a model with {model.num_classes} outputs: pass --model-taxonomy{hint}"
            )
        return model, model.taxonomy

    def describe_default_model(self) -> str | None:
        """One line about the bundled default model when the user did not pick a model, else None."""
        if not self.default_model:
            return None
        return (
            f"model: {zoo.DEFAULT_MODEL}, the small CamVid-11 model shipped with the package (11 street-scene "
            "classes); for the 194-class MSeg universal model use --model mseg-3m (downloaded once, 528 MB)"
        )


def model_spec(args: argparse.Namespace, *, default_preset: str, zoo_preset: bool = False) -> ModelSpec:
    """The :class:`ModelSpec` of the options added by :func:`add_model_arguments` and :func:`add_config_arguments`.

    Without ``--preset``: the bundled model's own preset; with ``zoo_preset``, any zoo model's; else
    ``default_preset``. Cheap: reads the zoo table, not the checkpoint.
    """
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    model = args.model or zoo.DEFAULT_MODEL
    entry = None if args.preset is not None else zoo.lookup(model)
    # A bundled model's preset is part of it (its eval protocol too); other zoo models' presets are for the demo.
    use_zoo = entry is not None and (zoo_preset or entry.bundled is not None)
    preset = preset_for(entry if use_zoo else None, args.preset, default_preset)
    if args.model_taxonomy:
        get_taxonomy(args.model_taxonomy)
    return ModelSpec(
        model=model,
        arch=args.arch,
        num_classes=args.num_classes,
        model_taxonomy=args.model_taxonomy,
        device=distributed.resolve_device(args.device),
        threads=args.threads,
        config=load_config(preset, **_config_overrides(args)),
        default_model=args.model is None,
    )


def _config_overrides(args: argparse.Namespace) -> dict:
    """The inference settings given on the command line, as :func:`load_config` keyword arguments."""
    overrides: dict = {key: getattr(args, key) for key in ("fast", *SPEED_FIELDS) if getattr(args, key) is not None}
    if args.base_size is not None:
        overrides["base_size"] = args.base_size
    if args.scales:
        overrides["scales"] = args.scales
    if args.crop_size is not None:
        overrides["crop_size"] = args.crop_size
    if args.no_flip:
        overrides["flip"] = False
    return overrides


def add_checkpoint_arguments(group: argparse._ArgumentGroup) -> None:
    """``--arch``, ``--num-classes``, ``--model-taxonomy``: how a checkpoint is read (demo, eval and export)."""
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
    add_checkpoint_arguments(group)
    group.add_argument(
        "--device",
        default="cpu",
        help="auto (cuda when available, else cpu), cpu, cuda, cuda:N; under torchrun cuda is each process's own GPU "
        "(default: cpu)",
    )
    group.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for the network (default: PyTorch's, one per core). With several processes on one "
        "machine (torchrun, parallel jobs) give each its share: oversubscribed cores make PyTorch many times slower",
    )


def add_config_arguments(parser: argparse.ArgumentParser, default: str, *, zoo_preset: bool = False) -> None:
    """``--preset`` (alias ``--config``) and the speed-up options; ``zoo_preset``: a zoo model's own preset is the
    default (the help text only: :func:`model_spec` applies it)."""
    group = parser.add_argument_group("inference settings")
    if zoo_preset:
        choice = f"the zoo model's own preset ('mseg zoo info NAME'), {default} for other checkpoints"
    else:
        bundled = zoo.get_model_info(zoo.DEFAULT_MODEL)
        choice = f"{default}; {bundled.preset} for the bundled {bundled.name}"
    group.add_argument(
        "--preset",
        "--config",
        dest="preset",
        metavar="PRESET|FILE.yaml",
        help=f"inference preset ({', '.join(preset_names())}) or a YAML file of settings (default: {choice}); "
        "--config is an alias",
    )
    group.add_argument("--base-size", type=int, metavar="N", help="override: short side at scale 1.0")
    group.add_argument("--scales", type=float, nargs="+", metavar="S", help="override: scale multipliers")
    group.add_argument("--crop-size", type=int, metavar="N", help="override: square sliding-window size")
    group.add_argument("--no-flip", action="store_true", help="override: no flip averaging (faster, not the original)")
    # A group's description is printed as it is (only help strings are %-formatted): one % sign.
    speed = parser.add_argument_group(
        "speed-ups",
        "Defaults reproduce the original numerics. --fast = --backend auto --precision auto --head low_res "
        "--channels-last: label maps agreeing with the original ones on >= 99% of pixels (speed: README, Fast "
        "inference); on a CPU with OpenVINO installed that is OpenVINO in bf16. --precision int8, --pad minimal, "
        "--max-window and --no-flip save more but change more labels. An explicit option wins over --fast: "
        "--fast --precision fp32.",
    )
    speed.add_argument("--fast", action="store_true", default=None, help="the speed-ups that keep >= 99%% of labels")
    speed.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        help="network arithmetic: fp32 (original), bf16 (torch: a BatchNorm-folded bf16 copy; openvino), fp16 "
        "(torch autocast), int8 (onnxruntime, openvino: calibrated once, cached), auto: bf16 where the hardware has "
        "it",
    )
    speed.add_argument(
        "--backend",
        choices=INFERENCE_BACKENDS,
        help="what runs the network: torch (original), onnxruntime or openvino (CPU; the model is exported once and "
        "cached; pip install 'mseg-semantic[onnx]' or '[openvino]'), auto = the fastest installed for the device",
    )
    speed.add_argument(
        "--calibrate",
        dest="calibration",
        metavar="DIR",
        help="with --precision int8: calibrate on these images/videos instead of the bundled examples (once, cached)",
    )
    speed.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the network (backend torch): each window size compiles once; pays off for many images",
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
        "--batch-windows",
        type=int,
        metavar="N",
        help="windows (with their flips) per forward pass, taken from N images or video frames at a time (demo)",
    )
    speed.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC layout for convolutions"
    )
