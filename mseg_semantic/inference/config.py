"""Test-time settings: the original presets (``360_ms`` ...), YAML files in the original layout, speed-ups.

A preset name maps to a YAML file shipped in ``mseg_semantic/config/test/`` (the same files the original
``universal_demo.py --config=...`` command line reads), so there is one source for the values.

The speed-up settings (``precision``, ``pad``, ``max_window``, ``head``, ``batch_windows``, ``channels_last``) live
in the same object, so whatever carries a config (the demo, the evaluation, its results file) also carries how it
was run. Their defaults are the original algorithm; ``fast=True`` switches on those that keep >= 99% of the labels
(:data:`FAST`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mseg_semantic.errors import InputError

# Imported under this name by cli/modelargs.py (which could take INFERENCE_PRECISIONS from mseg_semantic.precision).
from mseg_semantic.precision import INFERENCE_PRECISIONS as PRECISIONS

MULTI_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

PADS = ("crop", "minimal")
HEADS = ("full", "low_res")

#: What ``fast=True`` changes: the speed-ups whose label maps agree with the faithful fp32 ones on >= 99% of the
#: pixels of real images (the trained camvid11-compact HRNet on the demo photos and CamVid val: 99.6% on average,
#: 99.2% on the worst image; see benchmarks/inference.py and the README). ``precision="auto"`` is bf16 where the
#: device computes it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs), fp16 on older GPUs, else fp32. Not included,
#: because they change more pixels: ``pad="minimal"``, ``max_window`` and ``flip=False`` (93-96% with the same
#: network).
FAST: dict[str, Any] = {
    "precision": "auto",
    "head": "low_res",
    "channels_last": True,
}

# Settings that change speed, not the algorithm's definition; they are not part of the original YAML files.
SPEED_FIELDS = ("precision", "pad", "max_window", "head", "batch_windows", "channels_last")

PRESET_FILES: dict[str, str] = {
    "360_ss": "default_config_360_ss.yaml",
    "360_ms": "default_config_360_ms.yaml",
    "720_ss": "default_config_720_ss.yaml",
    "720_ms": "default_config_720_ms.yaml",
    "1080_ss": "default_config_1080_ss.yaml",
    "1080_ms": "default_config_1080_ms.yaml",
    "batched_480": "480/default_config_batched_ss.yaml",
    "batched_720": "720/default_config_batched_ss.yaml",
    "batched_1080": "1080/default_config_batched_ss.yaml",
    "compact_360_ss": "compact_360_ss.yaml",  # the bundled camvid11-compact model's own
}

# Keys of the original test YAML files that do not change how an image is predicted: accepted and ignored.
_IGNORED_ORIGINAL_KEYS = {
    "dataset", "version", "split", "small", "arch", "network_name", "layers", "zoom_factor", "ignore_label",
    "has_prediction", "index_start", "index_step", "test_gpu", "model_path", "model_name", "input_file",
    "save_folder", "workers", "vis_freq", "img_name_unique", "batch_size_val", "native_img_h", "native_img_w",
    "test_list", "data_root", "classes", "colors_path", "names_path",
}  # fmt: skip


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
    - ``channels_last``: NHWC memory layout for the convolutions.
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
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.base_size is None and not self.batched:
            raise InputError("base_size is required unless the preset is batched")
        if self.base_size is not None and self.base_size <= 0:
            raise InputError(f"base_size must be positive, got {self.base_size}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise InputError(f"scales must be a non-empty list of positive numbers, got {list(self.scales)}")
        if self.crop_h <= 0 or self.crop_w <= 0:
            raise InputError(f"crop size must be positive, got {self.crop_h}x{self.crop_w}")
        if self.batched and tuple(self.scales) != (1.0,):
            raise InputError("batched inference is single-scale: scales must be [1.0]")
        for key, allowed in (("precision", PRECISIONS), ("pad", PADS), ("head", HEADS)):
            if getattr(self, key) not in allowed:
                raise InputError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        if not isinstance(self.batch_windows, int) or self.batch_windows < 1:
            raise InputError(f"batch_windows must be a positive integer, got {self.batch_windows!r}")
        if self.max_window is not None:
            if not isinstance(self.max_window, int) or self.max_window < 33:
                raise InputError(f"max_window must be an integer of at least 33 pixels, got {self.max_window!r}")
            if self.pad != "minimal":
                raise InputError("max_window needs pad='minimal' (with pad='crop' every window is the crop)")

    @property
    def faithful(self) -> bool:
        """True when every speed-up is off: the original numerics (batching windows does not change them)."""
        return (self.precision, self.pad, self.head, self.channels_last) == ("fp32", "crop", "full", False)


    def replace(self, **overrides: Any) -> InferenceConfig:
        """A copy with some values changed (``crop_size=N`` sets both crop sides, ``fast=True`` applies :data:`FAST`).

        Explicit values win over ``fast``: ``replace(fast=True, precision="fp32")`` is fast without bf16.
        """
        suffix = "+custom"
        if overrides.pop("fast", False):
            overrides = {**FAST, **overrides}
            suffix = "+fast"
        if "crop_size" in overrides:
            size = overrides.pop("crop_size")
            overrides["crop_h"], overrides["crop_w"] = (size, size) if isinstance(size, int) else tuple(size)
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown inference setting(s) {unknown}; known: {sorted(known | {'crop_size'})}")
        if "scales" in overrides:
            overrides["scales"] = tuple(float(s) for s in overrides["scales"])
        if overrides and "name" not in overrides:
            overrides["name"] = self.name + suffix
        return dataclasses.replace(self, **overrides)


def preset_names() -> list[str]:
    return list(PRESET_FILES)


def load_config(config: str | os.PathLike | InferenceConfig = "360_ms", **overrides: Any) -> InferenceConfig:
    """An :class:`InferenceConfig` from a preset name, a YAML path (ours or the original layout) or a config.

    ``overrides`` are :class:`InferenceConfig` values, ``crop_size`` and ``fast``.
    """
    if isinstance(config, InferenceConfig):
        return config.replace(**overrides) if overrides else config
    name = str(config)
    if name in PRESET_FILES:
        text = resources.files("mseg_semantic").joinpath("config", "test", PRESET_FILES[name]).read_text()
        base = _from_mapping(yaml.safe_load(text), name, source=f"preset {name}")
    else:
        path = Path(name)
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise InputError(f"unknown inference preset {name!r}; presets: {', '.join(PRESET_FILES)} (or a YAML file)")
        if not path.is_file():
            raise InputError(f"{path}: config file does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({exc})") from None
        base = _from_mapping(data, path.stem, source=str(path))
    return base.replace(**overrides) if overrides else base


def _from_mapping(data: Any, name: str, source: str) -> InferenceConfig:
    """Read our flat keys or the original sectioned layout (``DATA:``/``TEST:``; keys ``test_h``/``test_w``)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of settings")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)  # the original merges its DATA/TRAIN/TEST sections into one namespace
        else:
            flat[key] = value
    flat = {("crop_h" if k == "test_h" else "crop_w" if k == "test_w" else k): v for k, v in flat.items()}
    is_batched = "native_img_h" in flat or bool(flat.get("batched", False))
    fast = bool(flat.pop("fast", False))
    fields = {f.name for f in dataclasses.fields(InferenceConfig)}
    unknown = sorted(k for k in flat if k not in fields and k not in _IGNORED_ORIGINAL_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown setting(s) {unknown}; known: {sorted(fields - {'name'})}")
    values = {k: v for k, v in flat.items() if k in fields}
    values["batched"] = is_batched
    values.setdefault("name", name)
    if fast:
        values = {**FAST, **values}
    if "scales" in values:
        values["scales"] = tuple(float(s) for s in values["scales"])
    try:
        return InferenceConfig(**values)
    except TypeError as exc:
        raise InputError(f"{source}: {exc}") from None
