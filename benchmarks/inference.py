"""Speed, peak memory and pixel agreement of the inference paths, backends and precisions (run by hand, not in CI).

For HRNet-W48 (194 classes) on the 990x500 demo photo and a 1920x1080 frame, presets 360_ss / 360_ms / 1080_ss,
three tables (``--tables``):

- ``paths``: per path, seconds per image (median of ``--repeats`` after ``--warmup``), what ran the network
  (backend and precision, ``auto`` resolved), the one-time compilation of paths that compile on their first call
  (``torch.compile``; OpenVINO, per window shape), the peak resident memory of a fresh process running one
  prediction (weights included), the share of pixels whose label equals the faithful fp32 label map, the network's
  multiply-accumulates and the floor: those MACs divided by this machine's measured matrix-multiply rate in the
  path's precision (how fast the path could be if the network ran at matmul speed and everything else were free),
  and how far above it the path is. With ``--original PRESET=SECONDS`` (the original code's time, measured
  separately) a column "x of original" gives that time over the path's.
- ``windows``: one HRNet-W48 forward pass on one window (713x713 and 361x713, cut from the photo), per backend and
  precision: milliseconds, the floor, and the argmax agreement of the same backend and precision with PyTorch's fp32
  on the windows of real images run through the trained bundled model (camvid11-compact at its own 360x480 window).
  Each network is what ``Segmenter(...).network`` builds for those settings (the same export, BatchNorm folding and
  int8 calibration, cached in ``~/.cache/mseg/backends/``).
- ``settings``: each speed-up, backend and precision alone, then ``fast=True``: agreement of the trained bundled
  model with its faithful labels on 17 real images (360_ss and 360_ms), W48 agreement and time on the photo.

The floors use the machine's matrix-multiply rate in each precision, measured at start-up as the fastest of real
dense GEMMs through PyTorch (``torch.mm``; int8 ``torch._int_mm``), OpenVINO and ONNX Runtime (fp32 MatMul, bf16
with OpenVINO, int8 MatMulInteger and OpenVINO's int8 FullyConnected): one library's GEMM is not the machine's
(see :func:`machine_rates`); the header gives each candidate's rate and which one the floor uses.

    # the README tables (every path, both images, all three presets, windows, settings: 1.5 hours on the quiet VM)
    python benchmarks/inference.py --reference --warmup 1 --repeats 2 --paths faithful fast fastest torch-bf16 \\
        compile-fp32 compile-bf16 ort-fp32 ort-int8 ov-fp32 ov-bf16 ov-int8 --original 360_ss=10.2 360_ms=89
    python benchmarks/inference.py --presets 360_ss --images ../shared/data/demo/bike_horses.jpg \\
        --paths faithful fast ov-bf16 ort-int8 --original 360_ss=10.2
    python benchmarks/inference.py --tables windows --windows 713x713
    python benchmarks/inference.py --model mseg-3m.pth      # a real checkpoint: agreement then means something

Paths: ``faithful`` (the default Segmenter), ``fast`` (``fast=True``: on a CPU the backend and precision ``auto``
resolves to, OpenVINO bf16 when installed), ``fastest`` (``fast=True`` with minimal padding, whole-image windows and
no flip: below 99% agreement), ``reference`` (``mseg_semantic.inference.reference``: the original algorithm written
out literally, one forward per crop and per flip, full-resolution float64 accumulation; for the faithful
speed-up), and ``fast=True`` with the network on one backend in one precision: ``torch-bf16``, ``compile-fp32``,
``compile-bf16`` (``torch.compile``), ``ort-fp32``, ``ort-int8`` (ONNX Runtime), ``ov-fp32``, ``ov-bf16``,
``ov-int8`` (OpenVINO). int8 is calibrated on the package's bundled examples (never on the images measured). A
path the device or the installation cannot run (a runtime backend with ``--device cuda``, a runtime that is not
installed) is left out with a note on stderr.

The model: without ``--model``, a stand-in whose predictions are not degenerate. Weights made by the project's
``make_weights.py`` alone give 1-2 classes per image with saturated probabilities (its random BN statistics do not
normalise anything), so the stand-in re-estimates the BN statistics on 11 CamVid *train* images and fits the final
1x1 classifier as a linear probe on 25 CamVid train images (about 2 minutes; cached in ``--cache``). It predicts
structured CamVid-like classes with top-1 probabilities around 0.5, but its backbone is still random, and random
convolutional networks are far more sensitive to geometry (padding, a one-pixel shift) than trained ones: its
agreement figures for the geometric speed-ups are a pessimistic bound for a trained model.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from machine import cpu_description  # benchmarks/machine.py, beside this script
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mseg_semantic.errors import InputError
from mseg_semantic.export import OPSET
from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.inference import Segmenter
from mseg_semantic.inference.reference import reference_predict
from mseg_semantic.models import build_model
from mseg_semantic.normalization import normalize
from mseg_semantic.resizing import resize_short_side
from mseg_semantic.taxonomy import class_names, get_taxonomy
from mseg_semantic.zoo import load_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_IMAGES = [
    SHARED / "data" / "demo" / "bike_horses.jpg",
    SHARED / "data" / "demo" / "PrivateLakefrontResidenceWoodstockGA_0000893.jpg",
]
#: The paths of the main table (``reference`` is the straightforward implementation below); after the first three,
#: ``fast=True`` with the network on one backend in one precision.
PATH_SETTINGS: dict[str, dict] = {
    "faithful": {},
    "fast": {"fast": True},
    "fastest": {"fast": True, "pad": "minimal", "max_window": 2049, "flip": False},
    "torch-bf16": {"fast": True, "backend": "torch", "precision": "bf16"},
    "compile-fp32": {"fast": True, "backend": "torch", "precision": "fp32", "compile": True},
    "compile-bf16": {"fast": True, "backend": "torch", "precision": "bf16", "compile": True},
    "ort-fp32": {"fast": True, "backend": "onnxruntime", "precision": "fp32"},
    "ort-int8": {"fast": True, "backend": "onnxruntime", "precision": "int8"},
    "ov-fp32": {"fast": True, "backend": "openvino", "precision": "fp32"},
    "ov-bf16": {"fast": True, "backend": "openvino", "precision": "bf16"},
    "ov-int8": {"fast": True, "backend": "openvino", "precision": "int8"},
}
PATHS = ("reference", *PATH_SETTINGS)
#: Without ``--paths`` (the backend paths are asked for by name: the README's command line lists them).
DEFAULT_PATHS = ("faithful", "fast", "fastest")
#: Each speed-up alone, each backend and precision alone, then the fast switch (with PyTorch's network, then as
#: ``auto`` resolves it, then in int8), then the fast switch without flip averaging, then the geometric cuts too.
SETTINGS: dict[str, dict] = {
    "precision=bf16": {"precision": "bf16"},
    "channels_last=True": {"channels_last": True},
    "head=low_res": {"head": "low_res"},
    "pad=minimal": {"pad": "minimal"},
    "pad=minimal, max_window=2049": {"pad": "minimal", "max_window": 2049},
    "flip=False": {"flip": False},
    "backend=onnxruntime, precision=fp32": {"backend": "onnxruntime", "precision": "fp32"},
    "backend=openvino, precision=fp32": {"backend": "openvino", "precision": "fp32"},
    "backend=openvino, precision=bf16": {"backend": "openvino", "precision": "bf16"},
    "backend=onnxruntime, precision=int8": {"backend": "onnxruntime", "precision": "int8"},
    "backend=openvino, precision=int8": {"backend": "openvino", "precision": "int8"},
    "fast=True, backend=torch": {"fast": True, "backend": "torch"},
    "fast=True": {"fast": True},
    "fast=True, precision=int8": {"fast": True, "precision": "int8"},
    "fast=True, flip=False": {"fast": True, "flip": False},
    "fast=True, pad=minimal, max_window=2049, flip=False": PATH_SETTINGS["fastest"],
}
#: The windows table (``--networks``): what runs one window, as the Segmenter settings whose ``network`` is timed.
WINDOW_NETWORKS: dict[str, tuple[str, dict]] = {
    "eager-fp32": ("torch eager fp32", {"backend": "torch", "precision": "fp32"}),
    "torch-bf16": (
        "torch folded bf16, channels_last",
        {"backend": "torch", "precision": "bf16", "channels_last": True},
    ),
    "compile-bf16": (
        "torch.compile of the folded bf16, channels_last",
        {"backend": "torch", "precision": "bf16", "channels_last": True, "compile": True},
    ),
    "ort-fp32": ("onnxruntime fp32", {"backend": "onnxruntime", "precision": "fp32"}),
    "ov-fp32": ("openvino fp32", {"backend": "openvino", "precision": "fp32"}),
    "ov-bf16": ("openvino bf16", {"backend": "openvino", "precision": "bf16"}),
    "ort-int8": ("onnxruntime int8", {"backend": "onnxruntime", "precision": "int8"}),
    "ov-int8": ("openvino int8", {"backend": "openvino", "precision": "int8"}),
}
DEFAULT_WINDOWS = ("713x713", "361x713")
#: The preset whose Segmenter builds the W48 networks of the windows table (its crop: where int8 is calibrated).
WINDOWS_PRESET = "360_ss"
#: The bundled model's own preset (window 360x480): the windows table's agreement.
COMPACT_PRESET = "compact_360_ss"


def log(message: str) -> None:
    """The package's one-time notices (exporting a network, calibrating int8): on stderr, as they happen."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the stand-in model
def _normalised(image: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))


def build_stand_in(shared: Path, seed: int = 0) -> nn.Module:
    """HRNet-W48 from ``make_weights.py``, BN statistics re-estimated and the classifier fitted on CamVid train."""
    sys.path.insert(0, str(shared / "reference" / "tools"))
    from make_weights import make_state_dict

    model = build_model("hrnet_w48", 194)
    model.load_state_dict(make_state_dict(str(shared / "reference" / "models" / "hrnet_w48_keys.json"), seed))
    camvid = shared / "data" / "camvid11"
    train = [line.split()[0] for line in (camvid / "train.txt").read_text().split("\n") if line.strip()]

    # BN statistics of real images (cumulative average over 11 images and their flips).
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for name in train[::33]:
            x = _normalised(resize_short_side(read_image(camvid / name).astype(np.float32), 256))
            model(torch.stack([x, x.flip(-1)]))
    model.eval()

    # A linear probe: the last 1x1 convolution fitted to CamVid labels (each class -> its first universal class).
    universal = class_names("universal")
    to_universal = np.full(256, 255, np.int64)
    for index, targets in enumerate(get_taxonomy("camvid-11").universal):
        to_universal[index] = universal.index(targets[0])
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    captured: dict[str, torch.Tensor] = {}
    hook = model.last_layer[2].register_forward_hook(lambda m, i, o: captured.__setitem__("x", o))
    rng = np.random.default_rng(seed)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name in train[::15]:
            model(_normalised(read_image(camvid / name).astype(np.float32))[None])
            feats = captured["x"][0].float()
            label = read_label(camvid / name.replace("images/", "labels/"))
            label = to_universal[cv2.resize(label, feats.shape[:0:-1], interpolation=cv2.INTER_NEAREST)].ravel()
            keep = rng.choice(np.flatnonzero(label != 255), 3000, replace=False)
            features.append(feats.reshape(feats.shape[0], -1)[:, keep].T.clone())
            labels.append(torch.from_numpy(label[keep]))
    hook.remove()
    x, y = torch.cat(features), torch.cat(labels)
    classifier = model.last_layer[3]
    weight = torch.zeros(classifier.weight.shape[:2], requires_grad=True)
    bias = torch.zeros(classifier.bias.shape, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.01)
    for _ in range(300):
        loss = nn.functional.cross_entropy(x @ weight.T + bias, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        classifier.weight.copy_(weight[:, :, None, None])
        classifier.bias.copy_(bias)
    return model


def get_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    if args.model:
        return load_model(args.model, arch=args.arch), f"{args.model}"
    cache = Path(args.cache)
    model = build_model("hrnet_w48", 194)
    if cache.exists():  # mmap: no second copy of the weights in memory while loading
        model.load_state_dict(torch.load(cache, weights_only=True, mmap=True))
    else:
        print(f"building the stand-in model (cached in {cache}) ...", file=sys.stderr, flush=True)
        model = build_stand_in(Path(args.shared))
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model.eval(), "HRNet-W48 stand-in (make_weights.py seed 0, BN re-estimated, linear probe on CamVid train)"


def get_agreement_model() -> nn.Module:
    """The trained model that ships with the package (compact HRNet, CamVid-11, trained with ``mseg train``).

    Agreement depends on the model: a random network is chaotic (a bf16 rounding or a one-pixel shift changes much
    of its output) while a trained one is smooth. This is the best-trained network available offline; only a real
    W48 checkpoint (``--model``) gives the W48 figure.
    """
    from mseg_semantic import zoo

    return zoo.load_model("camvid11-compact")


# ---------------------------------------------------------------------------------------------------- measurements
def predictor(
    model: nn.Module, preset: str, path: str, device: str
) -> tuple[Callable[[np.ndarray], np.ndarray], Segmenter]:
    """The path's prediction function and the Segmenter behind it (for the reference: the faithful one, whose
    settings it runs)."""
    if path == "reference":
        seg = Segmenter(model, config=preset, device=device)  # for its settings only
        cfg = seg.config
        return functools.partial(reference_predict, model, base_size=cfg.base_size, scales=cfg.scales,
                                 crop_size=(cfg.crop_h, cfg.crop_w)), seg  # fmt: skip
    seg = Segmenter(model, config=preset, device=device, log=log, **PATH_SETTINGS[path])
    return seg.predict, seg


def runs_on(seg: Segmenter) -> str:
    """What runs the Segmenter's network: the backend and precision as resolved (``auto`` included)."""
    return f"{seg.backend} {seg.precision}{' compiled' if seg.config.compile else ''}"


def compiles_on_first_call(seg: Segmenter) -> bool:
    """``torch.compile`` compiles on the first call of each window shape, OpenVINO compiles its model per shape."""
    return seg.config.compile or seg.backend == "openvino"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(call: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = call()
    sync(device)
    return time.perf_counter() - start, result


@dataclass
class Timing:
    """Median seconds of the timed calls, the first call's when it was timed on its own, the last call's result."""

    seconds: float
    first: float | None
    result: Any

    @property
    def compile_seconds(self) -> float | None:
        """What the first call cost beyond a steady-state one (its compilation); None when not timed alone."""
        return None if self.first is None else max(0.0, self.first - self.seconds)


def time_calls(
    calls: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: str, first_alone: Iterable[str] = ()
) -> dict[str, Timing]:
    """Median seconds and last result of each call. Runs are interleaved (one of each per round), so a change in the
    machine's load during the measurement slows every call alike instead of one of them. The calls named in
    ``first_alone`` compile on their first call: it is made before the rounds and timed on its own, so the rounds
    (even without warm-up) time the steady state."""
    first: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name in first_alone:
        first[name], results[name] = _timed(calls[name], device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            seconds, results[name] = _timed(call, device)
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: Timing(statistics.median(times[name]), first.get(name), results[name]) for name in calls}


def peak_memory_mb(args: argparse.Namespace, image: Path, preset: str, path: str) -> float | None:
    """Peak RSS of a fresh process predicting one image (after the model is loaded: weights included)."""
    cmd = [sys.executable, __file__, "--measure-memory", str(image), preset, path, "--cache", args.cache,
           "--device", args.device, "--threads", str(args.threads)]  # fmt: skip
    if args.keep_model:
        cmd.append("--keep-model")
    if args.model:
        cmd += ["--model", args.model] + (["--arch", args.arch] if args.arch else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def _reset_peak_rss() -> bool:
    """Linux: forget the peak so far (writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(args: argparse.Namespace) -> None:
    """Peak RSS as ``mseg demo`` has it: the model is loaded, handed to the Segmenter and not kept otherwise (so
    with a low-precision copy or a runtime backend its fp32 weights are freed; ``--keep-model`` holds them, as a
    caller's own module)."""
    image_path, preset, path = args.measure_memory
    model, _ = get_model(args)
    predict, _ = predictor(model, preset, path, args.device)
    if not args.keep_model:
        del model
    image = read_image(image_path)
    reset = _reset_peak_rss()
    predict(image)
    print(json.dumps({"peak_mb": _peak_rss_mb(reset)}))


@functools.cache
def window_macs(height: int, width: int) -> int:
    """Multiply-accumulates of one HRNet-W48 forward at height x width (counted on the meta device)."""
    with torch.device("meta"):
        model = build_model("hrnet_w48", 194).eval()
        x = torch.empty(1, 3, height, width)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def path_macs(model: nn.Module, preset: str, path: str, h: int, w: int, device: str = "cpu") -> tuple[int, int]:
    """(forward passes, MACs) of one prediction; the reference runs the faithful windows one pass at a time.

    ``device``: the model's (a Segmenter moves the module it is given to its device). The windows depend on the
    path's geometry only, so the Segmenter that counts them runs PyTorch's fp32 network (nothing exported)."""
    settings = {**PATH_SETTINGS[path], "backend": "torch", "precision": "fp32", "compile": False}
    seg = Segmenter(model, config=preset, device=device, **settings)
    passes = 2 if seg.config.flip else 1
    forwards = macs = 0
    for grid in seg.window_grids(h, w):
        n = len(grid.ys) * len(grid.xs) * passes
        forwards += n
        macs += n * window_macs(grid.win_h, grid.win_w)
    return forwards, macs


# --------------------------------------------------------------------------------------------- the machine's floors
def _best_seconds(call: Callable[[], Any], device: str, repeats: int) -> float:
    """The fastest of ``repeats`` calls after one untimed call (kernel selection, JIT code, packed weights)."""
    call()
    return min(_timed(call, device)[0] for _ in range(repeats))


def matmul_macs_per_second(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 5) -> float:
    """Best of ``repeats`` square matrix products: PyTorch's dense multiply-accumulate rate in ``dtype``
    (``torch.mm``; for int8 ``torch._int_mm``: int8 x int8 with int32 accumulation)."""
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (size, size), device=device, dtype=dtype)
        b = torch.randint(-128, 128, (size, size), device=device, dtype=dtype)
        multiply = torch._int_mm
    else:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        multiply = torch.mm
    return size**3 / _best_seconds(lambda: multiply(a, b), device, repeats)


def onnxruntime_matmul(precision: str, threads: int, size: int = 2048) -> Callable[[], Any] | None:
    """One ONNX Runtime product of a (size, size) input by constant weights, as a call; None without onnxruntime.

    fp32: MatMul (MLAS's sgemm); int8: MatMulInteger of uint8 activations by int8 weights with int32 accumulation
    (MLAS's u8 x s8 kernel, the one its int8 convolutions run on)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    if precision == "int8":
        op, input_type, output_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        weights = rng.integers(-128, 128, (size, size), dtype=np.int8)
        x = rng.integers(0, 256, (size, size), dtype=np.uint8)
    else:
        op, input_type, output_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        weights = rng.standard_normal((size, size), dtype=np.float32)
        x = rng.standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        "gemm",
        [helper.make_tensor_value_info("A", input_type, [size, size])],
        [helper.make_tensor_value_info("Y", output_type, [size, size])],
        [numpy_helper.from_array(weights, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": x})


def openvino_matmul(precision: str, threads: int, size: int = 2048) -> Callable[[], Any] | None:
    """One OpenVINO product of a (size, size) input by constant weights on the CPU, as a call; None without openvino.

    fp32 and bf16: MatMul with that inference precision (oneDNN's brgemm; bf16 falls back to fp32 on a CPU without
    it, as the bf16 networks do). int8: the pattern OpenVINO runs as int8, activations through a FakeQuantize to
    uint8 and int8 weights times a scale; it runs as a u8 x i8 FullyConnected (oneDNN's ``brgemm_avx512_I8`` on
    AVX512-VNNI), the FakeQuantize's pass over the input counted against it."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (size, size)).astype(np.float32)
    data = ops.parameter([size, size], np.float32)
    if precision == "int8":
        quantized = ops.fake_quantize(data, np.float32(0), np.float32(255), np.float32(0), np.float32(255), 256)
        integers = ops.constant(rng.integers(-127, 128, (size, size), dtype=np.int8))
        weights = ops.multiply(ops.convert(integers, np.float32), ops.constant(np.float32(0.01)))
        product = ops.matmul(quantized, weights, False, False)
    else:
        product = ops.matmul(data, ops.constant(rng.standard_normal((size, size), dtype=np.float32)), False, False)
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision != "int8":
        config["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bf16" else "f32"
    request = ov.Core().compile_model(ov.Model([product], [data]), "CPU", config).create_infer_request()
    return lambda: request.infer({0: x})


def machine_rates(device: str, threads: int, size: int = 2048, repeats: int = 12) -> tuple[dict[str, float], str]:
    """The multiply-accumulate rate of each precision, for the floors, and a line saying what measured them.

    A floor must be the machine's, not one library's, so each precision's rate is the fastest of several real GEMMs
    (dense, every product computed, int8 with int32 accumulation; the best of ``repeats`` products of 2048x2048
    matrices: larger ones were no faster, more repeats find the machine's quiet moments): PyTorch's
    (``torch.mm``: MKL's sgemm for fp32, oneDNN for bf16; ``torch._int_mm``: oneDNN's s8 x s8 GEMM, VNNI code on
    AVX512-VNNI CPUs) and, on a CPU, OpenVINO's and ONNX Runtime's (:func:`openvino_matmul`,
    :func:`onnxruntime_matmul`), the libraries the backends run. On the 2-core AMD VM (Zen 5, AVX512 with VNNI and
    BF16) MKL's fp32 sgemm reaches about half of what oneDNN (OpenVINO) and MLAS (ONNX Runtime) do (about 95 against
    200 GMAC/s), so torch.mm alone gave an fp32 "floor" that OpenVINO's network beat; the fastest bf16 and int8
    GEMMs were PyTorch's or OpenVINO's depending on the run (oneDNN under both).
    """
    candidates: dict[str, dict[str, Callable[[], float | None]]] = {
        "fp32": {"torch.mm": lambda: matmul_macs_per_second(torch.float32, device, size, repeats)},
        "bf16": {"torch.mm": lambda: matmul_macs_per_second(torch.bfloat16, device, size, repeats)},
        "int8": {"torch._int_mm": lambda: matmul_macs_per_second(torch.int8, device, size, repeats)},
    }
    if device.startswith("cuda"):
        candidates["fp16"] = {"torch.mm": lambda: matmul_macs_per_second(torch.float16, device, size, repeats)}
    if device == "cpu":

        def runtime_rate(make: Callable[..., Callable[[], Any] | None], precision: str) -> float | None:
            call = make(precision, threads, size)
            return None if call is None else size**3 / _best_seconds(call, "cpu", repeats)

        for precision in ("fp32", "bf16", "int8"):
            candidates[precision]["openvino"] = functools.partial(runtime_rate, openvino_matmul, precision)
        for precision in ("fp32", "int8"):
            candidates[precision]["onnxruntime"] = functools.partial(runtime_rate, onnxruntime_matmul, precision)
    rates: dict[str, float] = {}
    described = []
    for precision, sources in candidates.items():
        measured: dict[str, float] = {}
        for source, measure in sources.items():
            try:
                rate = measure()
            except RuntimeError as error:  # e.g. a device without an int8 GEMM in PyTorch
                log(f"{precision} matmul with {source} on {device}: {error}")
                continue
            if rate is not None:
                measured[source] = rate
        if not measured:
            continue
        best = max(measured, key=lambda name: measured[name])
        rates[precision] = measured[best]
        others = "".join(f", {name} {rate / 1e9:.0f}" for name, rate in measured.items() if name != best)
        described.append(f"{precision} {rates[precision] / 1e9:.0f} ({best}{others})")
    return rates, f"matmul GMAC/s {'; '.join(described)}"


def floor_seconds(macs: int, precision: str, rates: dict[str, float]) -> float:
    """The network's time at the machine's matmul rate in ``precision`` (fp32's for a precision not measured)."""
    return macs / rates.get(precision, rates["fp32"])


# ------------------------------------------------------------------------------------------------------ the tables
def agreement_images(shared: Path) -> list[Path]:
    """The demo photos and every 10th CamVid val image."""
    demo = sorted(p for p in (shared / "data" / "demo").iterdir() if p.suffix in (".jpg", ".png"))
    camvid = shared / "data" / "camvid11"
    val = [line.split()[0] for line in (camvid / "val.txt").read_text().splitlines() if line.strip()]
    return demo + [camvid / name for name in val[::10]]


def _percent(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return 100.0 * float((a == b).float().mean() if isinstance(a, torch.Tensor) else (a == b).mean())


def settings_table(args: argparse.Namespace, model: nn.Module) -> None:
    """Per setting: agreement of the bundled trained model on real images, W48 agreement and time on one photo."""
    compact = get_agreement_model()
    paths = agreement_images(Path(args.shared))
    images = [read_image(p) for p in paths]
    photo = read_image(args.images[0])
    print()
    print(f"Each setting against the faithful path; compact: the bundled camvid11-compact on {len(images)} real images "
          f"(mean and worst image); W48: the stand-in on {Path(args.images[0]).name}, 360_ss. 'network': what runs "
          "it on this CPU (backend and precision as resolved).")  # fmt: skip
    print()
    print("| setting | network | compact 360_ss % | compact 360_ms % | W48 360_ss % | W48 360_ss s/img | speed-up |")
    print("|---|---|---|---|---|---|---|")
    faithful_compact = {
        preset: [Segmenter(compact, config=preset, model_taxonomy="camvid-11").predict(image) for image in images]
        for preset in ("360_ss", "360_ms")
    }
    w48 = {"faithful": Segmenter(model, config="360_ss", device=args.device)}
    for name, settings in SETTINGS.items():
        try:
            w48[name] = Segmenter(model, config="360_ss", device=args.device, log=log, **settings)
        except InputError as error:
            log(f"setting {name!r}: W48 not run on {args.device} ({error})")
    timed = time_calls(
        {name: functools.partial(seg.predict, photo) for name, seg in w48.items()},
        args.warmup,
        args.repeats,
        args.device,
        [name for name, seg in w48.items() if compiles_on_first_call(seg)],
    )
    base = timed["faithful"]
    print(f"| faithful | {runs_on(w48['faithful'])} | 100 | 100 | 100 | {base.seconds:.2f} | 1.00x |", flush=True)
    for name, settings in SETTINGS.items():
        cells = []
        network = "-"
        for preset in ("360_ss", "360_ms"):
            try:
                seg = Segmenter(compact, config=preset, model_taxonomy="camvid-11", log=log, **settings)
            except InputError as error:
                log(f"setting {name!r}: the compact model not run ({error})")
                cells.append("-")
                continue
            network = runs_on(seg)
            scores = [
                _percent(seg.predict(image), ref) for image, ref in zip(images, faithful_compact[preset], strict=True)
            ]
            cells.append(f"{statistics.mean(scores):.2f} ({min(scores):.2f})")
        if name in w48 and runs_on(w48[name]) != network:
            network += f" (W48 on {args.device}: {runs_on(w48[name])})"
        w48_cells = "| - | - | - |"
        if name in timed:
            run = timed[name]
            w48_cells = (f"| {_percent(run.result, base.result):.2f} | {run.seconds:.2f} | "
                         f"{base.seconds / run.seconds:.2f}x |")  # fmt: skip
        print(f"| {name} | {network} | {cells[0]} | {cells[1]} {w48_cells}", flush=True)


def parse_window(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` -> (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a window is HEIGHTxWIDTH, e.g. 713x713; got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"a window of at least 32x32 pixels; got {text!r}")
    return height, width


def photo_window(photo: np.ndarray, height: int, width: int) -> torch.Tensor:
    """A normalised (1, 3, height, width) window of the photo: resized to cover the window, its top-left corner."""
    h, w = photo.shape[:2]
    factor = max(height / h, width / w)
    size = (max(width, math.ceil(w * factor)), max(height, math.ceil(h * factor)))
    resized = cv2.resize(photo.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    return _normalised(resized[:height, :width])[None]


def windows_table(args: argparse.Namespace, model: nn.Module, rates: dict[str, float]) -> None:
    """One W48 forward pass per backend and precision and window size; agreement on the bundled model's windows."""
    compact = get_agreement_model()
    images = [read_image(p) for p in agreement_images(Path(args.shared))]
    # The bundled model's network inputs for those images under its own preset (every window and its flip), cut by
    # its faithful Segmenter, whose network is PyTorch's eager fp32: the reference labels.
    cutter = Segmenter(compact, config=COMPACT_PRESET, model_taxonomy="camvid-11")
    compact_windows = [torch.from_numpy(w) for w in cutter.calibration_windows(images, limit=1_000_000)]
    reference = [cutter.network(w).argmax(1) for w in compact_windows]
    shapes = sorted({tuple(w.shape[-2:]) for w in compact_windows})
    networks: dict[str, Segmenter] = {}
    agreement: dict[str, str] = {}
    for name in args.networks:
        settings = WINDOW_NETWORKS[name][1]
        try:
            networks[name] = Segmenter(model, config=WINDOWS_PRESET, device=args.device, log=log, **settings)
            small = Segmenter(compact, config=COMPACT_PRESET, model_taxonomy="camvid-11", log=log, **settings)
        except InputError as error:
            networks.pop(name, None)
            log(f"window network {name!r} left out ({error})")
            continue
        scores = [_percent(small.network(w).argmax(1), ref) for w, ref in zip(compact_windows, reference, strict=True)]
        agreement[name] = f"{statistics.mean(scores):.2f} ({min(scores):.2f})"
    print()
    print(f"One HRNet-W48 forward pass (batch 1, window h x w cut from {Path(args.images[0]).name}), as "
          f"Segmenter(model, config={WINDOWS_PRESET!r}, ...).network runs it (int8: calibrated on the bundled "
          f"examples' {WINDOWS_PRESET} windows); median ms of {args.repeats} after {args.warmup} warm-up; floor: the "
          "window's MACs at the machine's matmul rate in that precision; compile s: the first call's extra time. "
          f"Agreement: argmax of the same backend and precision against eager fp32 on the {len(compact_windows)} "
          f"windows ({', '.join(f'{h}x{w}' for h, w in shapes)}, flips included) of {len(images)} real images (demo "
          "photos, CamVid val) run through the trained camvid11-compact: mean and worst window.")  # fmt: skip
    print()
    columns = ["window", "network", "precision", "ms", "speed-up", "GMACs", "floor ms", "x of floor", "compile s",
               "compact agreement %"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    photo = read_image(args.images[0])
    for height, width in args.windows:
        window = photo_window(photo, height, width).to(args.device)
        timed = time_calls(
            {name: functools.partial(seg.network, window) for name, seg in networks.items()},
            args.warmup,
            args.repeats,
            args.device,
            [name for name, seg in networks.items() if compiles_on_first_call(seg)],
        )
        macs = window_macs(height, width)
        eager = timed.get("eager-fp32")
        for name, seg in networks.items():
            run = timed[name]
            floor = floor_seconds(macs, seg.precision, rates)
            speed_up = "-" if eager is None else f"{eager.seconds / run.seconds:.2f}x"
            compile_s = "-" if run.compile_seconds is None else f"{run.compile_seconds:.1f}"
            cells = [f"{height}x{width}", WINDOW_NETWORKS[name][0], seg.precision, f"{run.seconds * 1e3:.0f}", speed_up,
                     f"{macs / 1e9:.0f}", f"{floor * 1e3:.0f}", f"{run.seconds / floor:.2f}x", compile_s,
                     agreement[name]]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)


def parse_originals(values: list[str], images: list[str], presets: list[str]) -> dict[tuple[str, str], float]:
    """``[IMAGE:]PRESET=SECONDS`` -> {(image file name, preset): seconds}; without IMAGE, the first of ``images``.
    Raises ValueError for a malformed value or an image or preset that the run does not measure."""
    names = [Path(p).name for p in images]
    originals: dict[tuple[str, str], float] = {}
    for value in values:
        key, _, seconds = value.partition("=")
        image, _, preset = key.rpartition(":")
        try:
            originals[(image or names[0], preset)] = float(seconds)
        except ValueError:
            raise ValueError(f"--original takes [IMAGE:]PRESET=SECONDS, e.g. 360_ss=10.2; got {value!r}") from None
        if image and image not in names:
            raise ValueError(f"--original {value}: {image} is not one of --images ({', '.join(names)})")
        if preset not in presets:
            raise ValueError(f"--original {value}: {preset} is not one of --presets ({', '.join(presets)})")
    return originals


def paths_table(
    args: argparse.Namespace, model: nn.Module, rates: dict[str, float], originals: dict[tuple[str, str], float]
) -> None:
    columns = ["image", "preset", "path", "network", "s/img", "speed-up", *(["x of original"] if originals else []),
               "compile s", "peak MB", "agreement %", "forwards", "GMACs", "floor s", "x of floor"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    paths = list(dict.fromkeys(["faithful", *(["reference"] if args.reference else []), *args.paths]))
    for image_path in args.images:
        image = read_image(image_path)
        h, w = image.shape[:2]
        name = Path(image_path).name
        for preset in args.presets:
            # The straightforward path's full-resolution float64 buffers would need several GB on large images.
            active = [p for p in paths if p != "reference" or (h * w < 1e6 and preset.startswith("360"))]
            built: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Segmenter]] = {}
            for path in active:
                try:
                    built[path] = predictor(model, preset, path, args.device)
                except InputError as error:
                    log(f"path {path} left out ({error})")
            results = time_calls(
                {path: functools.partial(predict, image) for path, (predict, _) in built.items()},
                args.warmup,
                args.repeats,
                args.device,
                [path for path, (_, seg) in built.items() if path != "reference" and compiles_on_first_call(seg)],
            )
            faithful = results["faithful"]
            for path, (_, seg) in built.items():
                run = results[path]
                memory = None if args.no_memory else peak_memory_mb(args, Path(image_path), preset, path)
                forwards, macs = path_macs(model, preset, "faithful" if path == "reference" else path, h, w,
                                           args.device)  # fmt: skip
                floor = floor_seconds(macs, seg.precision, rates)
                original = originals.get((name, preset))
                cells = [
                    f"{name[:24]} {w}x{h}",
                    preset,
                    path,
                    "torch fp32" if path == "reference" else runs_on(seg),
                    f"{run.seconds:.2f}",
                    f"{faithful.seconds / run.seconds:.2f}x",
                    *([("-" if original is None else f"{original / run.seconds:.2f}x")] if originals else []),
                    "-" if run.compile_seconds is None else f"{run.compile_seconds:.1f}",
                    "-" if memory is None else f"{memory:.0f}",
                    f"{_percent(run.result, faithful.result):.2f}",
                    str(forwards),
                    f"{macs / 1e9:.0f}",
                    f"{floor:.2f}",
                    f"{run.seconds / floor:.2f}x",
                ]
                print("| " + " | ".join(cells) + " |", flush=True)


TABLES = ("paths", "windows", "settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a checkpoint (default: the stand-in described above)")
    parser.add_argument("--arch", help="architecture of an original .pth checkpoint (hrnet_w48)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "mseg_semantic" / "bench_w48_stand_in.pth"))
    parser.add_argument("--shared", default=str(SHARED), help="the shared/ folder (make_weights.py, CamVid)")
    parser.add_argument("--images", nargs="+", default=[str(p) for p in DEFAULT_IMAGES])
    parser.add_argument("--presets", nargs="+", default=["360_ss", "360_ms", "1080_ss"])
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), choices=PATHS,
                        help=f"paths of the paths table (default: {' '.join(DEFAULT_PATHS)})")  # fmt: skip
    parser.add_argument("--reference", action="store_true", help="add the straightforward path (990x500, 360_*)")
    parser.add_argument("--original", nargs="+", default=[], metavar="[IMAGE:]PRESET=SECONDS",
                        help="the original code's seconds per image (measured separately) for a preset, on IMAGE (a "
                             "file name of --images; default the first): adds the column 'x of original'")  # fmt: skip
    parser.add_argument("--windows", nargs="+", type=parse_window, default=[parse_window(w) for w in DEFAULT_WINDOWS],
                        metavar="HxW", help="window sizes of the windows table (height x width)")  # fmt: skip
    parser.add_argument("--networks", nargs="+", default=list(WINDOW_NETWORKS), choices=WINDOW_NETWORKS,
                        help="networks of the windows table (default: all; speed-up: over eager-fp32)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument(
        "--keep-model",
        action="store_true",
        help="memory: keep the fp32 model referenced, as a caller holding its own module does",
    )
    parser.add_argument("--measure-memory", nargs=3, metavar=("IMAGE", "PRESET", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        measure_memory(args)
        return
    try:
        originals = parse_originals(args.original, args.images, args.presets)
    except ValueError as error:
        parser.error(str(error))

    model, description = get_model(args)
    model = model.to(args.device)
    load_before = os.getloadavg()
    rates, rates_line = machine_rates(args.device, args.threads)
    print(f"model: {description}")
    print(f"machine: {cpu_description()}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}, "
          f"device {args.device}; {rates_line}")  # fmt: skip
    print(f"runtimes: {runtime_versions()}")
    print(f"load average before: {load_before[0]:.2f}; median of {args.repeats} after {args.warmup} warm-up")
    if originals:
        given = ", ".join(f"{preset} {seconds:g} s on {image}" for (image, preset), seconds in originals.items())
        print(f"x of original: the original code's seconds per image ({given}) over the path's")
    print()
    if "paths" in args.tables:
        paths_table(args, model, rates, originals)
    if "windows" in args.tables:
        windows_table(args, model, rates)
    if "settings" in args.tables:
        settings_table(args, model)
    print()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def runtime_versions() -> str:
    """The installed versions of the runtime backends (without importing them)."""
    from importlib import metadata

    versions = []
    for package in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    return ", ".join(versions)


if __name__ == "__main__":
    main()
