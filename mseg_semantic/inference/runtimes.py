"""The network's forward pass on a deployment runtime: ONNX Runtime or OpenVINO, fp32, bf16 or int8.

:class:`~mseg_semantic.Segmenter` runs the algorithm (resizing, windows, flips, averaging) and hands each batch of
windows to a network: :class:`~mseg_semantic.inference.network.Network` for PyTorch, :class:`RuntimeNetwork` here
for the runtimes users pick for fast CPU inference. Both return the logits before the model's final resize, so the
rest of the algorithm is the same code whatever runs the network.

A runtime needs the model as a file (:mod:`mseg_semantic.export`, a leaf below this module). It is made once and
cached in ``cache_dir()/backends/<weights digest>/`` (:func:`mseg_semantic.downloads.cache_dir`: ``$MSEG_HOME``,
default ``~/.cache/mseg``): the fp32 ONNX file for any
window size, and per (crop size, calibration images) the int8 file, whose calibration is the slow part (about a
minute for HRNet-W48). The digest is of the weights themselves, so a changed checkpoint never reuses a stale file.

Which backend and precision (measured on the 2-core development VM, an AMD EPYC with AVX512-BF16 and VNNI, no AMX,
HRNet-W48; see the README's Fast inference): OpenVINO bf16 is the fastest path that keeps >= 99% of the labels of the
trained bundled model, so ``backend="auto"`` (what ``fast=True`` asks for) takes OpenVINO on a CPU when it is
installed, else PyTorch (bf16) where the CPU computes bf16 natively, else ONNX Runtime when installed (fp32 is
faster there than PyTorch's). int8 is faster still but changes more labels; it is only used when asked for.
The names of backends and precisions, and which backend runs which, are :mod:`mseg_semantic.precision`'s.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mseg_semantic.downloads import cache_dir
from mseg_semantic.errors import InputError
from mseg_semantic.export import export_onnx, model_metadata, quantize_onnx
from mseg_semantic.inference.config import load_config
from mseg_semantic.inference.network import cpu_has_native_bf16, resolve_precision, takes_resize
from mseg_semantic.optional import installed, require
from mseg_semantic.precision import AUTO, BACKEND_PRECISIONS, BACKENDS, INFERENCE_BACKENDS
from mseg_semantic.presets import preset_for

#: The Python module behind each runtime backend.
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def available(backend: str) -> bool:
    """Is the backend's runtime installed (without importing it)?"""
    module = _MODULES.get(backend)
    return module is None or installed(module)


def resolve_backend(
    backend: str, precision: str, device: torch.device, model: nn.Module | None = None
) -> tuple[str, str]:
    """``backend`` and ``precision`` with ``auto`` resolved for ``device``; an unsupported combination is an error.

    ``auto`` backend: PyTorch on GPUs and for modules other than ours (``model`` without a ``resize`` option); on a
    CPU OpenVINO when installed, else PyTorch when the CPU computes bf16 natively, else ONNX Runtime when installed,
    else PyTorch. ``auto`` precision: PyTorch's choice
    (:func:`~mseg_semantic.inference.network.resolve_precision`), bf16 for OpenVINO on a CPU with native bf16 else
    fp32, fp32 for ONNX Runtime. int8 is never chosen automatically (it changes more labels, see the README).
    """
    if backend == AUTO:
        if device.type != "cpu" or (model is not None and not takes_resize(model)):
            backend = "torch"
        elif available("openvino"):
            backend = "openvino"
        elif cpu_has_native_bf16() or not available("onnxruntime"):
            backend = "torch"
        else:
            backend = "onnxruntime"
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(INFERENCE_BACKENDS)}; got {backend!r}")
    if backend == "torch":
        if precision == "int8":
            raise InputError("precision int8 needs backend onnxruntime or openvino (PyTorch runs fp32, bf16, fp16)")
        return backend, resolve_precision(precision, device)
    if device.type != "cpu":
        raise InputError(f"backend {backend!r} runs on the CPU here; use --device cpu, or backend torch on {device}")
    if precision == AUTO:
        precision = "bf16" if backend == "openvino" and cpu_has_native_bf16() else "fp32"
    if precision not in BACKEND_PRECISIONS[backend]:
        raise InputError(
            f"backend {backend!r} runs precision {' or '.join(BACKEND_PRECISIONS[backend])}, not {precision!r}"
        )
    require(_MODULES[backend], f"backend {backend!r}")
    return backend, precision


def weights_digest(model: nn.Module) -> str:
    """A short hex digest of the model's class, parameter and buffer names, shapes, dtypes and values."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def backend_cache(model: nn.Module) -> Path:
    """The folder of the model's runtime files: ``cache_dir()/backends/<weights digest>``."""
    return cache_dir() / "backends" / weights_digest(model)


def network_file(
    model: nn.Module,
    precision: str,
    *,
    crop: tuple[int, int],
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
    calibration_key: str = "",
    log: Callable[[str], None] | None = None,
) -> Path:
    """The cached ONNX file of the model's low-resolution forward pass in ``precision`` (fp32 or int8), made on
    first use. int8 calibrates on ``calibration()``'s windows; ``calibration_key`` names that set in the cache key,
    as ``crop`` (the window size calibrated at) does."""
    folder = backend_cache(model)
    # Our models export the logits before their final resize; a module of the caller's is exported whole.
    low_res = takes_resize(model)
    fp32 = folder / ("fp32.onnx" if low_res else "fp32-whole.onnx")
    if not fp32.is_file():
        if log:
            log(f"exporting the network to ONNX once (cached in {folder})")
        # The file records the model's own preset, as a file of mseg export does.
        metadata = model_metadata(model, low_res=low_res, preset=load_config(preset_for(model)))
        export_onnx(model, fp32, low_res=low_res, metadata=metadata)
    if precision == "fp32":
        return fp32
    if precision != "int8":
        raise InputError(f"no {precision} ONNX file: the runtimes take fp32 or int8 files")
    key = hashlib.blake2b(f"{crop}|{calibration_key}".encode(), digest_size=6).hexdigest()
    path = folder / f"{fp32.stem.replace('fp32', 'int8')}-{crop[0]}x{crop[1]}-{key}.onnx"
    if not path.is_file():
        if calibration is None:
            raise InputError("int8 needs calibration images")
        if log:
            log(f"calibrating int8 once on {calibration_key or 'the calibration images'} (cached in {folder})")
        quantize_onnx(fp32, path, calibration())
    return path


#: Every how many frames a calibration video gives an image.
_VIDEO_STEP = 8


def calibration_images(source: str | os.PathLike | None = None) -> tuple[Callable[[], Iterator[np.ndarray]], str]:
    """RGB images to calibrate int8 on, as a function that yields them, and a key naming the set for the cache.

    ``source``: a folder of images and videos (searched recursively; every 8th video frame) or one such file;
    None: the examples that ship with the package (the dashcam photo and every 8th frame of the freeway clip).
    """
    from mseg_semantic.examples import example_path
    from mseg_semantic.fileio import is_image_path, is_video_path

    if source is None:
        files = [example_path("dashcam"), example_path("freeway")]
        key = "bundled examples"
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise InputError(f"calibration folder {root} does not exist")
        candidates = sorted(root.rglob("*")) if root.is_dir() else [root]
        files = [p for p in candidates if p.is_file() and (is_image_path(p) or is_video_path(p))]
        if not files:
            raise InputError(f"no images or videos to calibrate on in {root}")
        listing = "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        key = f"{root.resolve()} ({len(files)} files, {hashlib.blake2b(listing.encode(), digest_size=6).hexdigest()})"

    def images() -> Iterator[np.ndarray]:
        import cv2

        from mseg_semantic.fileio import read_image

        for path in files:
            if is_image_path(path):
                yield read_image(path)
                continue
            capture = cv2.VideoCapture(str(path))
            if not capture.isOpened():
                raise InputError(f"cannot read calibration video {path}")
            try:
                index = 0
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    if index % _VIDEO_STEP == 0:
                        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    index += 1
            finally:
                capture.release()

    return images, key


@functools.cache
def openvino_core():
    """The process's one OpenVINO ``Core``, never released: releasing the last Core unloads OpenVINO's CPU plugin,
    and a signal handler it leaves behind then points into unloaded code (a later child process exiting, e.g. after
    PyTorch's DataLoader chained its SIGCHLD handler, crashed the process)."""
    return require("openvino", "backend 'openvino'").Core()


class RuntimeNetwork:
    """A model file run by ONNX Runtime or OpenVINO on windows (N, 3, h, w); returns logits (for our models those
    before the final resize: the caller resizes what it keeps).

    Same interface as :class:`~mseg_semantic.inference.network.Network`: called with a float32 tensor, returns a
    float32 tensor. ``threads``: the runtime's CPU threads (default PyTorch's, which ``--threads`` sets).
    """

    #: No PyTorch module runs (``Segmenter.model`` is None).
    module = None

    def __init__(self, path: str | os.PathLike, backend: str, precision: str, threads: int | None = None) -> None:
        self.path = Path(path)
        self.backend = backend
        self.precision = precision
        threads = threads or torch.get_num_threads()
        if backend == "onnxruntime":
            ort = require("onnxruntime", "backend 'onnxruntime'")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # no warnings about graph optimisations on stderr
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        elif backend == "openvino":
            self._core = openvino_core()
            self._config = {
                "CACHE_DIR": str(self.path.parent / "openvino-cache"),
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": threads,
            }
            self._compiled: dict[tuple[int, ...], object] = {}
        else:
            raise InputError(f"RuntimeNetwork runs onnxruntime or openvino, not {backend!r}")

    def _openvino(self, shape: tuple[int, ...]):
        """The model compiled for one input shape (static shapes run faster than a dynamic model)."""
        compiled = self._compiled.get(shape)
        if compiled is None:
            model = self._core.read_model(str(self.path))
            model.reshape({0: list(shape)})
            compiled = self._compiled[shape] = self._core.compile_model(model, "CPU", self._config)
        return compiled

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        if self.backend == "onnxruntime":
            out = self._session.run(None, {"image": x})[0]
        else:
            out = self._openvino(x.shape)(x)[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def runtime_network(
    model: nn.Module,
    backend: str,
    precision: str,
    *,
    crop: tuple[int, int],
    calibration: Callable[[], Iterable[np.ndarray]] | None = None,
    calibration_key: str = "",
    log: Callable[[str], None] | None = None,
) -> RuntimeNetwork:
    """The model on ``backend`` in ``precision`` (resolved: see :func:`resolve_backend`), its file made or reused."""
    path = network_file(
        model,
        "int8" if precision == "int8" else "fp32",
        crop=crop,
        calibration=calibration,
        calibration_key=calibration_key,
        log=log,
    )
    return RuntimeNetwork(path, backend, precision)


__all__ = [
    "AUTO",
    "BACKENDS",
    "BACKEND_PRECISIONS",
    "RuntimeNetwork",
    "available",
    "backend_cache",
    "calibration_images",
    "network_file",
    "resolve_backend",
    "runtime_network",
    "weights_digest",
]
