"""The network as a file for a deployment runtime: ONNX (ONNX Runtime) and OpenVINO IR, fp32 or int8.

A leaf: it turns a network into files and reads them back, and imports nothing of this package above the
taxonomy tables, so that both its users sit above it without a cycle: the ``onnxruntime``/``openvino`` inference
backends (:mod:`mseg_semantic.inference.runtimes`, which cache the files they make) and ``mseg export``
(:func:`mseg_semantic.inference.deploy.export_model`, which chooses the preset and cuts the int8 calibration
windows with a :class:`~mseg_semantic.Segmenter`). What is exported is the network's forward pass only; resizing,
sliding windows, flips and the taxonomy projection stay in :class:`~mseg_semantic.Segmenter`, unless an output taxonomy
is baked in (``output_taxonomy``: a taxonomy file's, or a test taxonomy for a universal model): the file then ends
with the softmax and the fixed linear map, and outputs probabilities over that taxonomy's classes (``probs``).

- :func:`export_onnx` traces the model with ``torch.onnx.export`` (the dynamo exporter: the older TorchScript exporter
  gives wrong HRNet logits), with a dynamic batch and image size unless ``input_size`` fixes them, and records
  :func:`model_metadata` in the file: class names, mean/std, taxonomy, the preset given, the output's resolution.
- :func:`quantize_onnx` makes the int8 file with ONNX Runtime's static post-training quantization (QDQ format, weights
  per channel, activation ranges from calibration windows). The first convolution (it sees raw pixels) and the
  classifier stay in float: rounding there changes the most labels for the least time.
- :func:`onnx_to_openvino` converts either file to OpenVINO IR (``.xml`` + ``.bin``); OpenVINO reads the QDQ int8 file
  as int8.
- :func:`output_files` checks a destination (never overwriting a file unasked) and :func:`require_for` the packages
  an export needs, both cheap, before a model loads. :func:`read_metadata` and :func:`tensor_shapes` read a written
  file back.

The runtimes are optional dependencies: ``pip install "mseg-semantic[onnx]"`` (onnx, onnxscript, onnxruntime) and
``"mseg-semantic[openvino]"``; without them these functions raise an :class:`~mseg_semantic.errors.InputError` naming
the extra (:func:`mseg_semantic.optional.require`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mseg_semantic.errors import InputError
from mseg_semantic.models.registry import takes_resize
from mseg_semantic.normalization import MEAN_RGB, STD_RGB
from mseg_semantic.optional import require
from mseg_semantic.precision import FILE_PRECISIONS
from mseg_semantic.taxonomy import Taxonomy, get_taxonomy

#: The ONNX opset the files use (ONNX Runtime >= 1.16 and OpenVINO >= 2023.1 read it).
OPSET = 18
#: Input and output names of every exported file.
INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: Metadata keys are prefixed with this (ONNX ``metadata_props``; OpenVINO ``rt_info`` section ``mseg``).
METADATA_PREFIX = "mseg."
#: The file formats and the suffix each is written with.
FORMATS: dict[str, str] = {"onnx": ".onnx", "openvino": ".xml"}


class PresetSettings(Protocol):
    """What the metadata records of the preset a file is meant for (an
    :class:`~mseg_semantic.inference.InferenceConfig` has it)."""

    name: str
    base_size: int | None
    scales: tuple[float, ...]
    crop_h: int
    crop_w: int
    flip: bool
    batched: bool


#: The output's name when an output taxonomy is baked in (probabilities, not logits).
PROBS_NAME = "probs"


class _Forward(nn.Module):
    """The model's forward pass as exported: full-resolution logits, or with ``low_res`` the logits before the
    final resize (our models' ``resize=False``); with a ``projection`` (T, K) the softmax over the K classes summed
    onto the T classes of an output taxonomy, as :class:`~mseg_semantic.Segmenter` does per window."""

    def __init__(self, model: nn.Module, low_res: bool, projection: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.low_res = low_res
        self.projection = projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x, resize=False) if self.low_res else self.model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if self.projection is None:
            return out
        return torch.einsum("tc,nchw->nthw", self.projection.to(out.dtype), out.softmax(dim=1))


def projection_for(model: nn.Module, output_taxonomy: str | Taxonomy) -> tuple[Taxonomy, torch.Tensor]:
    """The output taxonomy to bake into ``model``'s file and its (T, K) matrix over the model's K classes; raises
    :class:`~mseg_semantic.errors.TaxonomyError` when the model does not predict what the taxonomy sums."""
    from mseg_semantic.taxonomy import TaxonomyConverter, resolve_taxonomy
    from mseg_semantic.taxonomy.files import FILE_KIND, source_mismatch

    taxonomy = resolve_taxonomy(output_taxonomy)
    predicted = getattr(model, "taxonomy", None) or "universal"
    if taxonomy.kind == FILE_KIND and taxonomy.source != predicted:
        raise source_mismatch(taxonomy, predicted, "the model predicts")
    matrix = TaxonomyConverter().universal_to_test_matrix(taxonomy if taxonomy.kind == FILE_KIND else taxonomy.name,
                                                          source=predicted)  # fmt: skip
    return taxonomy, torch.from_numpy(matrix)


def _output_text(low_res: bool, model_taxonomy: str | None, output_taxonomy: Taxonomy | None) -> str:
    """What the file's output is, for its metadata."""
    output = (
        "float32 (N, K, ceil(H/4), ceil(W/4)), the logits before the model's final resize: resize them to (H, W) "
        "bilinearly with align_corners=True; the label map is their argmax over K"
        if low_res
        else "float32 (N, K, H, W), logits at the input size; the label map is their argmax over K"
    )
    if output_taxonomy is None:
        return output
    return output.replace("logits", f"the softmax over the model's {model_taxonomy} classes summed onto the classes "
                          f"of {output_taxonomy.name} (probabilities)")  # fmt: skip


def model_metadata(
    model: nn.Module,
    *,
    low_res: bool = False,
    precision: str = "fp32",
    preset: PresetSettings | None = None,
    input_size: tuple[int, int] | None = None,
    output_taxonomy: Taxonomy | None = None,
) -> dict[str, str]:
    """What a user of the file needs to feed it and read its output, as string values (keys without the prefix).

    ``preset``: the inference settings to run the file with, recorded with their name, so that a user without this
    package can reproduce the algorithm around the network (short side, windows, flips); None records none
    (:func:`~mseg_semantic.inference.deploy.export_model` passes the model's own). ``input_size``: the fixed
    (H, W) of a static file; None: dynamic. ``output_taxonomy``: the taxonomy baked in (:func:`projection_for`).
    """
    from mseg_semantic import __version__

    if isinstance(preset, (str, os.PathLike)):
        raise InputError(
            f"model_metadata records loaded settings, not a preset name: pass preset=load_config({str(preset)!r}) "
            "(mseg_semantic.inference.load_config)"
        )
    taxonomy = getattr(model, "taxonomy", None)
    num_classes = getattr(model, "num_classes", None)
    names: list[str] | None = None
    if taxonomy is not None:
        names = list(get_taxonomy(taxonomy).classes)
        num_classes = len(names)
    output = _output_text(low_res, taxonomy, output_taxonomy)
    baked: dict[str, Any] = {}
    if output_taxonomy is not None:
        from mseg_semantic.taxonomy.files import taxonomy_record

        baked = {"model_taxonomy": taxonomy, **taxonomy_record(output_taxonomy)}
        taxonomy, names, num_classes = output_taxonomy.name, list(output_taxonomy.classes), output_taxonomy.num_classes
    values: dict[str, Any] = {
        "producer": f"mseg-semantic {__version__}",
        "arch": getattr(model, "arch", type(model).__name__),
        "num_classes": num_classes,
        "taxonomy": taxonomy,
        "class_names": names,
        "preset": None if preset is None else preset.name,
        "preset_settings": None if preset is None else _preset_settings(preset),
        "precision": precision,
        "input": f"{INPUT_NAME}: float32 (N, 3, H, W), RGB in 0..255 normalised per channel as (x - mean) / std",
        "input_size": "dynamic" if input_size is None else f"{input_size[0]}x{input_size[1]}",
        "mean": [round(v, 6) for v in MEAN_RGB],
        "std": [round(v, 6) for v in STD_RGB],
        "output": f"{OUTPUT_NAME if output_taxonomy is None else PROBS_NAME}: {output}",
        "output_stride": 4 if low_res else 1,
        **baked,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items() if v is not None}


def _preset_settings(preset: PresetSettings) -> dict[str, Any]:
    return {
        "base_size": preset.base_size,
        "scales": list(preset.scales),
        "crop_h": preset.crop_h,
        "crop_w": preset.crop_w,
        "flip": preset.flip,
        "batched": preset.batched,
    }


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``mseg.*`` metadata of an exported ``.onnx`` or OpenVINO ``.xml`` file (keys without the prefix)."""
    path = Path(path)
    if path.suffix == ".xml":
        ov = require("openvino", "reading an OpenVINO file")
        model = ov.Core().read_model(str(path))
        info = model.get_rt_info()
        if "mseg" not in info:
            return {}
        section = info["mseg"]
        # OpenVINO 2026 gives the section as a dict of OVAny values; .astype(dict) reads it where it is one OVAny.
        section = section.astype(dict) if hasattr(section, "astype") else section
        return {key: value.astype(str) if hasattr(value, "astype") else str(value) for key, value in section.items()}
    onnx = require("onnx", "reading an ONNX file")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: tuple[int, int] | None = None,
    low_res: bool = False,
    metadata: Mapping[str, str] | None = None,
    output_taxonomy: str | Taxonomy | None = None,
) -> Path:
    """Write the eval-mode ``model``'s forward pass to ``path`` (``.onnx``, one file, fp32), atomically.

    ``input_size`` (H, W) fixes the image size (some runtimes are faster with it); without it batch, height and
    width are dynamic. ``low_res``: output the logits before the final resize (see :func:`model_metadata`); only
    for models whose forward takes ``resize`` (ours). ``metadata`` defaults to :func:`model_metadata` (without a
    preset). ``output_taxonomy``: bake its linear map in (:func:`projection_for`); the output is then ``probs``.
    """
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    if low_res and not takes_resize(model):
        raise InputError(f"a low-resolution export needs a forward that takes resize= (got {type(model).__name__})")
    path = Path(path)
    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    height, width = input_size or (128, 160)  # a sample size that specialises nothing (not 1, not square)
    sample = torch.zeros(2 if input_size is None else 1, 3, height, width, device=device)
    dynamic = None
    if input_size is None:
        any_size = torch.export.Dim.DYNAMIC
        dynamic = ({0: any_size, 2: any_size, 3: any_size},)
    taxonomy, projection = projection_for(model, output_taxonomy) if output_taxonomy is not None else (None, None)
    if metadata is None:
        metadata = model_metadata(model, low_res=low_res, input_size=input_size, output_taxonomy=taxonomy)
    values = dict(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mseg-export-") as tmp:
        staged = Path(tmp) / "model.onnx"
        with torch.inference_mode(False), torch.no_grad(), _quiet():
            program = torch.onnx.export(
                _Forward(model, low_res, None if projection is None else projection.to(device)).eval(),
                (sample,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME if projection is None else PROBS_NAME],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        proto = program.model_proto
        _name_dims(proto)
        _set_metadata(proto, values)
        import onnx

        onnx.save_model(proto, str(staged))
        os.replace(staged, path)
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines, warnings and log records are for its developers, not our users."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _name_dims(proto: Any) -> None:
    """Call the dynamic input dimensions N, H and W (the exporter's names are s77, s53, ...), in every shape of the
    graph, so that the output reads (N, K, H, W) too (or ``(((H - 1)//4)) + 1`` for a low-resolution one)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {dims[i].dim_param: name for i, name in ((0, "N"), (2, "H"), (3, "W")) if dims[i].dim_param}
    if not names:
        return
    symbol = re.compile(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b")
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    values += [value for function in proto.functions for value in getattr(function, "value_info", ())]
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol.sub(lambda match: names[match.group(1)], dim.dim_param)


def tensor_shapes(path: str | os.PathLike) -> dict[str, list[int | str]]:
    """The input's and the output's shape in an exported ``.onnx`` or ``.xml`` file, by name: sizes, and for a
    dynamic dimension its name (ONNX: ``N``, ``H``, ``W`` and expressions of them; OpenVINO: ``?``)."""
    path = Path(path)
    if path.suffix == ".xml":
        ov = require("openvino", "reading an OpenVINO file")
        model = ov.Core().read_model(str(path))
        return {
            port.get_any_name(): [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
            for port in (*model.inputs, *model.outputs)
        }
    onnx = require("onnx", "reading an ONNX file")
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in (*graph.input, *graph.output)
    }


def _set_metadata(proto: Any, values: Mapping[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, str(value)


def quantize_onnx(
    source: str | os.PathLike,
    path: str | os.PathLike,
    windows: Iterable[np.ndarray],
    *,
    keep_float: Iterable[str] | None = None,
) -> Path:
    """Write an int8 version of the fp32 ONNX file ``source`` to ``path``, atomically.

    ``windows``: calibration inputs, float32 (1, 3, h, w) normalised images as the network sees them (the
    activation ranges are their min/max). ``keep_float``: names of nodes left in float; default the first and the
    last convolution, and a baked output taxonomy's softmax.
    """
    onnx = require("onnx", "int8 quantization")
    quantization = require("onnxruntime.quantization", "int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, path = Path(source), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = read_metadata(source)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mseg-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if keep_float is None:
            convs = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
            keep_float = [convs[0], convs[-1]] if convs else []
            nodes = onnx.load(str(prepared)).graph.node
            keep_float += [node.name for node in nodes if node.op_type in ("Softmax", "Einsum")]
        staged = Path(tmp) / "int8.onnx"
        quantization.quantize_static(
            str(prepared),
            str(staged),
            _Windows(windows),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_exclude=list(keep_float),
        )
        proto = onnx.load(str(staged))
        _set_metadata(proto, {**values, "precision": "int8"})
        onnx.save_model(proto, str(staged))
        os.replace(staged, path)
    return path


class _Windows:
    """ONNX Runtime's calibration reader over our windows (it calls ``get_next`` until None)."""

    def __init__(self, windows: Iterable[np.ndarray]) -> None:
        self._windows = iter(windows)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        window = next(self._windows, None)
        if window is None:
            if self.count == 0:
                raise InputError("int8 calibration needs at least one image; none was given")
            return None
        self.count += 1
        return {INPUT_NAME: np.ascontiguousarray(window, dtype=np.float32)}


def onnx_to_openvino(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Convert an ONNX file (fp32 or QDQ int8) to OpenVINO IR: ``path`` (``.xml``) and its ``.bin``, with the
    metadata in ``rt_info`` section ``mseg``. Weights are kept as they are (no fp16 compression)."""
    ov = require("openvino", "OpenVINO export")
    path = Path(path)
    if path.suffix != ".xml":
        raise InputError(f"an OpenVINO model is written as NAME.xml (with NAME.bin beside it); got {path}")
    values = read_metadata(source)
    model = ov.convert_model(str(source))
    for key, value in values.items():
        model.set_rt_info(value, ["mseg", key])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mseg-export-") as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
    return path


def output_files(
    path: str | os.PathLike, format: str | None = None, *, overwrite: bool = False
) -> tuple[str, list[Path]]:
    """The format of an export to ``path`` (``format``, else told by the suffix: ``.onnx``, ``.xml``) and the files
    it writes (OpenVINO: ``NAME.xml`` and ``NAME.bin``). A file that exists already is an error unless
    ``overwrite``. Cheap: call it before loading a model."""
    path = Path(path)
    if format is None:
        format = next((name for name, suffix in FORMATS.items() if path.suffix.lower() == suffix), None)
        if format is None:
            raise InputError(
                f"cannot tell the format from {path.name!r}: name the file NAME.onnx (ONNX) or NAME.xml (OpenVINO), "
                "or pass --format onnx|openvino"
            )
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}")
    if format == "openvino" and path.suffix != ".xml":
        raise InputError(f"an OpenVINO model is written as NAME.xml (with NAME.bin beside it); got {path}")
    if format == "onnx" and path.suffix.lower() == ".xml":
        raise InputError(f"{path} is an OpenVINO file name; an ONNX model is written as NAME.onnx")
    files = [path, path.with_suffix(".bin")] if format == "openvino" else [path]
    for file in files:
        if file.is_dir():
            raise InputError(f"{file} is a folder; give the name of the file to write")
        if file.exists() and not overwrite:
            raise InputError(f"{file} already exists; pass --overwrite to replace it")
    return format, files


def require_for(format: str, precision: str) -> None:
    """Check that the packages an export to ``format`` in ``precision`` needs are installed (before a model loads)."""
    if precision not in FILE_PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(FILE_PRECISIONS)}; got {precision!r}")
    modules = ["onnx", "onnxscript"]
    modules += ["onnxruntime"] if precision == "int8" else []  # int8 calibration runs the network in ONNX Runtime
    modules += ["openvino"] if format == "openvino" else []
    for module in modules:
        require(module, f"exporting to {format} in {precision}")
