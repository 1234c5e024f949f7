"""Test-time settings: the original presets (``360_ms`` ...), YAML files in the original layout, speed-ups.

A preset name maps to a YAML file shipped in ``mseg_semantic/config/test/`` (the same files the original
``universal_demo.py --config=...`` command line reads), so there is one source for the values; the names, the
default and the choice of a model's preset are :mod:`mseg_semantic.presets`'s.

The speed-up settings (``precision``, ``pad``, ``max_window``, ``head``, ``batch_windows``, ``channels_last``,
``backend``, ``compile``, ``calibration``) live
in the same object, so whatever carries a config (the demo, the evaluation, its results file) also carries how it
was run. Their defaults are the original algorithm; ``fast=True`` switches on those that keep >= 99% of the labels
(:data:`FAST`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from mseg_semantic.configs import ConfigError, check, check_choice, parse_yaml, read_config, read_yaml, show
from mseg_semantic.errors import InputError
from mseg_semantic.precision import AUTO, INFERENCE_BACKENDS, INFERENCE_PRECISIONS
from mseg_semantic.presets import DEFAULT_PRESET, PRESET_FILES

MULTI_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

PADS = ("crop", "minimal")
HEADS = ("full", "low_res")

#: What ``fast=True`` changes: the speed-ups whose label maps agree with the faithful fp32 ones on >= 99% of the
#: pixels of real images (the trained camvid11-compact HRNet on the demo photos and CamVid val: 99.6% on average,
#: 99.2% on the worst image; see benchmarks/inference.py and the README). ``precision="auto"`` is bf16 where the
#: device computes it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs), fp16 on older GPUs, else fp32. Not included,
#: because they change more pixels: ``pad="minimal"``, ``max_window`` and ``flip=False`` (93-96% with the same
#: network). ``backend="auto"`` runs the network on OpenVINO (bf16) on a CPU when it is installed: the fastest
#: measured combination that keeps >= 99% (:mod:`mseg_semantic.inference.runtimes`).
FAST: dict[str, Any] = {
    "backend": AUTO,
    "precision": AUTO,
    "head": "low_res",
    "channels_last": True,
}

# Settings that change speed, not the algorithm's definition; they are not part of the original YAML files.
SPEED_FIELDS = (
    "precision",
    "pad",
    "max_window",
    "head",
    "batch_windows",
    "channels_last",
    "backend",
    "compile",
    "calibration",
)


def with_fast(values: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``values`` without their ``fast`` key, and with :data:`FAST` under them when it was true (the values given
    explicitly win); and whether it was. The one place ``fast`` is read, for keyword arguments and YAML files alike.
    """
    values = dict(values)
    fast = bool(values.pop("fast", False))
    return ({**FAST, **values} if fast else values), fast


@dataclass
class OriginalTestConfig:
    """The keys of the original test YAML files (sections merged), e.g. for its demo command line.

    :func:`load_config` reads ``base_size``, ``scales``, ``test_h``/``test_w`` (our ``crop_h``/``crop_w``) and
    ``native_img_h`` (present in batched presets) and accepts the others, which do not change how an image is
    predicted.
    """

    base_size: int | None = None
    test_h: int = 713
    test_w: int = 713
    scales: list[float] | None = None
    native_img_h: int | None = None
    native_img_w: int | None = None
    arch: str | None = "hrnet"
    model_name: str | None = "default"
    model_path: str | None = "default"
    input_file: str | None = "default"
    save_folder: str | None = "default"
    dataset: str | None = "default"
    version: Any = None
    split: str | None = "val"
    small: bool = True
    network_name: str | None = None
    layers: int = 50
    zoom_factor: int = 8
    ignore_label: int = 255
    has_prediction: bool = False
    index_start: int = 0
    index_step: int = 0
    test_gpu: list[int] = field(default_factory=lambda: [0])
    workers: int = 16
    vis_freq: int = 20
    img_name_unique: bool = False
    batch_size_val: int = 1
    test_list: str | None = None
    data_root: str | None = None
    classes: int | None = None
    colors_path: str | None = None
    names_path: str | None = None


#: The original layout's names of our keys; its other keys, but base_size and scales, change nothing and are ignored.
_ORIGINAL_ALIASES = {"test_h": "crop_h", "test_w": "crop_w"}
_IGNORED_ORIGINAL_KEYS = {f.name for f in fields(OriginalTestConfig)} - {"base_size", "scales", *_ORIGINAL_ALIASES}


def flatten_sections(data: Any, source: str) -> dict[str, Any]:
    """One mapping of the original sectioned layout (``DATA:``/``TEST:``) or of our flat one."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {show(data)}", source=source)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)  # the original merges its DATA/TRAIN/TEST sections into one namespace
        else:
            flat[key] = value
    return flat


@dataclass(frozen=True)
class InferenceConfig:
    """How one image is predicted.

    - ``base_size``: target length of the short side at scale 1.0 (``None`` in batched presets: computed per image
      so the whole image fits one crop);
    - ``scales``: multipliers of ``base_size``; per-scale probabilities are resized back and averaged;
    - ``crop_h``, ``crop_w``: sliding-window size (images are padded with the mean pixel up to it);
    - ``flip``: average each window with its horizontally flipped copy (always on in the original);
    - ``batched``: the original batched variant (one padded crop per image, no sliding window).

    Speed-ups (defaults = the original numerics):

    - ``precision``: the network's arithmetic, ``fp32``, ``bf16`` or ``fp16`` autocast, or ``auto`` (see :data:`FAST`);
    - ``pad``: ``crop`` pads an image smaller than the crop up to the full crop (original); ``minimal`` shrinks the
      window to the image, padding only as far as the network's stride-32 alignment needs (HRNet accepts any size);
    - ``max_window``: with ``pad="minimal"``, windows may grow up to this many pixels per side (default: the
      crop), so a resized image that fits is run whole in one forward instead of in overlapping crops;
    - ``head``: ``full`` upsamples logits to the window and takes the softmax there (original); ``low_res`` takes
      softmax, projection and flip average at the network's output resolution (1/4) and upsamples probabilities;
    - ``batch_windows``: windows (each with its flip) per forward pass, also across the frames of
      :meth:`Segmenter.predict_batch`;
    - ``channels_last``: NHWC memory layout for the convolutions;
    - ``backend``: what runs the network: ``torch`` (original), ``onnxruntime``, ``openvino`` (the model exported
      once and cached, :mod:`~mseg_semantic.inference.runtimes`) or ``auto``;
    - ``compile``: ``torch.compile`` the network (backend torch; pays off over many images, not one);
    - ``calibration``: a folder of images to calibrate ``precision="int8"`` on (default: the bundled examples).
    """

    base_size: int | None = 360
    scales: tuple[float, ...] = MULTI_SCALES
    crop_h: int = 713
    crop_w: int = 713
    flip: bool = True
    batched: bool = False
    precision: str = "fp32"
    pad: str = "crop"
    max_window: int | None = None
    head: str = "full"
    batch_windows: int = 1
    channels_last: bool = False
    backend: str = "torch"
    compile: bool = False
    calibration: str | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        check(self.base_size is not None or self.batched, "base_size", "is required unless the preset is batched")
        check(self.base_size is None or self.base_size > 0, "base_size", f"must be positive, got {self.base_size}")
        scales = list(self.scales)
        check(bool(scales) and min(scales) > 0, "scales", f"must be a non-empty list of positive numbers, got {scales}")
        for key in ("crop_h", "crop_w"):
            check(getattr(self, key) > 0, key, f"must be positive, got {getattr(self, key)}")
        check(not self.batched or scales == [1.0], "scales", "batched inference is single-scale: must be [1.0]")
        choices = (("precision", INFERENCE_PRECISIONS), ("pad", PADS), ("head", HEADS), ("backend", INFERENCE_BACKENDS))
        for key, allowed in choices:
            check_choice(getattr(self, key), allowed, key)
        windows, largest = self.batch_windows, self.max_window  # also checked when built directly, not read
        check(isinstance(windows, int) and windows >= 1, "batch_windows", f"must be an integer >= 1, got {windows!r}")
        if largest is not None:
            check(isinstance(largest, int) and largest >= 33, "max_window", f"must be an integer >= 33, got {largest}")
            check(self.pad == "minimal", "max_window", "needs pad='minimal' (with pad='crop' every window is the crop)")

    @property
    def faithful(self) -> bool:
        """True when every speed-up is off: the original numerics (batching windows does not change them)."""
        speed = (self.precision, self.pad, self.head, self.channels_last, self.backend, self.compile)
        return speed == ("fp32", "crop", "full", False, "torch", False)

    def replace(self, **overrides: Any) -> InferenceConfig:
        """A copy with some values changed (``crop_size=N`` sets both crop sides, ``fast=True`` applies :data:`FAST`).

        Explicit values win over ``fast``: ``replace(fast=True, precision="fp32")`` is fast without bf16.
        """
        overrides, fast = with_fast(overrides)
        suffix = "+fast" if fast else "+custom"
        if "crop_size" in overrides:
            size = overrides.pop("crop_size")
            overrides["crop_h"], overrides["crop_w"] = (size, size) if isinstance(size, int) else tuple(size)
        if overrides and "name" not in overrides:
            overrides["name"] = self.name + suffix
        values = {**{f.name: getattr(self, f.name) for f in fields(self)}, **overrides}
        return read_config(InferenceConfig, values, source="inference settings")


def load_config(config: str | os.PathLike | InferenceConfig = DEFAULT_PRESET, **overrides: Any) -> InferenceConfig:
    """An :class:`InferenceConfig` from a preset name, a YAML path (ours or the original layout) or a config.

    ``overrides`` are :class:`InferenceConfig` values, ``crop_size`` and ``fast``.
    """
    if isinstance(config, InferenceConfig):
        return config.replace(**overrides) if overrides else config
    name = str(config)
    if name in PRESET_FILES:
        text = resources.files("mseg_semantic").joinpath("config", "test", PRESET_FILES[name]).read_text()
        base = _from_mapping(parse_yaml(text, f"preset {name}"), name, source=f"preset {name}")
    else:
        path = Path(name)
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise InputError(f"unknown inference preset {name!r}; presets: {', '.join(PRESET_FILES)} (or a YAML file)")
        base = _from_mapping(read_yaml(path), path.stem, source=str(path))
    return base.replace(**overrides) if overrides else base


def _from_mapping(data: Any, name: str, source: str) -> InferenceConfig:
    """Read our flat keys or the original sectioned layout (keys ``test_h``/``test_w``, ``native_img_h``)."""
    flat, _ = with_fast(flatten_sections(data, source))
    flat.setdefault("name", name)
    flat["batched"] = "native_img_h" in flat or flat.get("batched", False)
    return read_config(InferenceConfig, flat, source=source, aliases=_ORIGINAL_ALIASES, ignore=_IGNORED_ORIGINAL_KEYS)
