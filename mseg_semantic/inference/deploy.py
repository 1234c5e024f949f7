"""``mseg export`` as a function: a model as an ONNX or OpenVINO file, with its preset, int8 calibrated.

:mod:`mseg_semantic.export` writes files from a network and knows nothing of presets or of the test-time
algorithm; the inference backends use it below :class:`~mseg_semantic.Segmenter`. Exporting a model for a user
needs more, from above the Segmenter: the preset the file is meant for (recorded in its metadata) and, for int8, the
windows that preset cuts from real images, which are what the network sees and so what calibration must see. That
is this module: :func:`export_model` chains :func:`~mseg_semantic.export.export_onnx`,
:func:`~mseg_semantic.export.quantize_onnx` and :func:`~mseg_semantic.export.onnx_to_openvino` for one format and
precision.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mseg_semantic.errors import InputError
from mseg_semantic.export import (
    export_onnx,
    model_metadata,
    onnx_to_openvino,
    output_files,
    projection_for,
    quantize_onnx,
    require_for,
)
from mseg_semantic.inference.config import InferenceConfig, load_config
from mseg_semantic.inference.runtimes import calibration_images
from mseg_semantic.inference.segmenter import Segmenter
from mseg_semantic.presets import preset_for
from mseg_semantic.taxonomy import Taxonomy, resolve_taxonomy


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
    low_res: bool = False,
    preset: str | os.PathLike | None = None,
    calibration: str | os.PathLike | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
    output_taxonomy: str | os.PathLike | Taxonomy | None = None,
) -> list[Path]:
    """Write the model as a file for ONNX Runtime (``.onnx``) or OpenVINO (``.xml`` + ``.bin``); returns the files.

    What ``mseg export`` does. ``format``: ``onnx`` or ``openvino`` (default: from the suffix, see
    :func:`~mseg_semantic.export.output_files`). ``precision``: ``fp32``, or ``int8`` calibrated on the network
    inputs that ``preset`` cuts from the ``calibration`` images (a folder or file of images and videos; default the
    bundled examples; see :func:`~mseg_semantic.inference.runtimes.calibration_images`); a static file calibrates
    on windows of its own size. ``input_size`` (H, W): a static file (batch 1); None: batch and size dynamic.
    ``low_res``: the logits before the final resize (1/4 of the input size). ``preset``: the preset recorded as
    the one to run the file with (default the model's own, see :func:`~mseg_semantic.presets.preset_for`).
    ``metadata``: extra string entries, added to :func:`~mseg_semantic.export.model_metadata`'s.
    ``output_taxonomy``: a taxonomy file (or a test taxonomy for a universal model) whose linear map is baked in:
    the file outputs ``probs`` over its classes (:func:`~mseg_semantic.export.projection_for`). The output
    appears whole or not at all (written in a temporary folder beside it).
    """
    format, files = output_files(path, format, overwrite=overwrite)
    path = files[0]
    require_for(format, precision)
    if calibration is not None and precision != "int8":
        raise InputError("calibration images are for precision int8 only")
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise InputError(f"input_size must be (height, width), both positive; got {input_size}")
    if input_size is not None:
        _check_memory(model, input_size)
    taxonomy = None if output_taxonomy is None else projection_for(model, resolve_taxonomy(output_taxonomy))[0]
    config = load_config(preset_for(model, preset))
    values = model_metadata(model, low_res=low_res, precision=precision, preset=config, input_size=input_size,
                            output_taxonomy=taxonomy)  # fmt: skip
    windows = None
    if precision == "int8":
        windows, source = _calibration(model, config, calibration, input_size)
        size = f" at {input_size[0]}x{input_size[1]}" if input_size else ""
        values["calibration"] = f"{source}: the windows of preset {config.name}{size}"
    values.update(metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_exports(path.parent)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f"{EXPORT_PREFIX}{os.getpid()}-") as tmp:
        last = path if format == "onnx" and precision == "fp32" else Path(tmp) / "fp32.onnx"
        export_onnx(model, last, input_size=input_size, low_res=low_res, metadata=values, output_taxonomy=taxonomy)
        if windows is not None:
            int8 = path if format == "onnx" else Path(tmp) / "int8.onnx"
            last = quantize_onnx(last, int8, windows)
        if format == "openvino":
            onnx_to_openvino(last, path)
    return files


EXPORT_PREFIX = ".mseg-export-"
"""The working folder of an export beside its output: ``.mseg-export-<pid>-<random>``."""

BYTES_PER_PIXEL_AND_CLASS = 16
"""Export memory per input pixel and output class (measured on HRNet: the logits at full size several times over,
the features at 1/4; a rough upper bound that turns an impossible --input-size into a message, not a crash)."""


def remove_dead_exports(folder: Path) -> None:
    """Delete the working folders that killed exports left in ``folder`` (their process no longer runs)."""
    for leftover in folder.glob(f"{EXPORT_PREFIX}*"):
        pid = leftover.name.removeprefix(EXPORT_PREFIX).split("-", 1)[0]
        if leftover.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _check_memory(model: nn.Module, input_size: tuple[int, int]) -> None:
    """Refuse an input size whose export cannot fit in this machine's memory (instead of an allocator crash)."""
    classes = int(getattr(model, "num_classes", 0) or 194)
    height, width = input_size
    needed = height * width * (classes + 64) * BYTES_PER_PIXEL_AND_CLASS
    available = _available_memory()
    if available is not None and needed > available:
        raise InputError(
            f"input size {height}x{width} would need about {needed / 2**30:,.0f} GiB to export ({classes} classes), "
            f"more than the {available / 2**30:,.1f} GiB available; choose a smaller --input-size or --dynamic"
        )


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux: MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _calibration(
    model: nn.Module, config: InferenceConfig, images: str | os.PathLike | None, input_size: tuple[int, int] | None
) -> tuple[Iterator[np.ndarray], str]:
    """The int8 calibration windows: what the preset gives the network for the calibration images (for a static
    file, the preset's windows made the file's size), and a description of their source."""
    read, _ = calibration_images(images)
    # Named without its full path: the file may be shipped.
    source = "the bundled examples" if images is None else f"{Path(images).resolve().name}"
    # The geometry of the preset cuts the windows; PyTorch fp32 runs nothing here (the windows are inputs).
    settings: dict[str, Any] = {"backend": "torch", "precision": "fp32", "compile": False}
    if input_size is not None:
        settings.update(crop_size=tuple(input_size), pad="crop", max_window=None)
    segmenter = Segmenter(model, config=config.replace(**settings))
    return segmenter.calibration_windows(read()), source


__all__ = ["export_model"]
