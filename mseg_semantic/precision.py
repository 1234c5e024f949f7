"""Precision and backend names: the arithmetic a network runs in and what runs it, for training and inference alike.

One vocabulary per concept, defined here once, below everything that uses it (configs, the command line's
choices, the runtimes, export): :data:`Precision` and :data:`Backend` are ``Literal`` types and
:data:`BACKEND_PRECISIONS` is the table of which backend runs which precision; every other tuple of names is
derived from them, and :data:`AUTO` is the one word for "let the device decide".

``fp32`` is float32 throughout (the original numerics); ``bf16`` and ``fp16`` compute in that dtype where
``torch.autocast`` does (inference may run a BatchNorm-folded bf16 copy of the network instead, see
:mod:`mseg_semantic.inference.network`); ``int8`` runs on the ONNX Runtime and OpenVINO backends after calibration
(:mod:`mseg_semantic.inference.runtimes`). Inference also accepts ``auto`` for either: the fastest the device
computes natively (:func:`mseg_semantic.inference.runtimes.resolve_backend`). Torch is imported only when a
function here needs it, so config readers can use the names without it.
"""

from __future__ import annotations

import functools
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, get_args

from mseg_semantic.errors import InputError

if TYPE_CHECKING:
    import torch

#: The arithmetic of a network.
Precision = Literal["fp32", "bf16", "fp16", "int8"]
#: What runs the network: PyTorch, or a deployment runtime on a file the model is exported to.
Backend = Literal["torch", "onnxruntime", "openvino"]
#: The setting that leaves the precision or the backend to the device and the installation (inference only).
AUTO: Final = "auto"

PRECISIONS: tuple[Precision, ...] = get_args(Precision)
BACKENDS: tuple[Backend, ...] = get_args(Backend)
#: The precisions each backend runs.
BACKEND_PRECISIONS: dict[Backend, tuple[Precision, ...]] = {
    "torch": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
#: Training's precisions and those of a PyTorch run (autocast or a folded copy).
TORCH_PRECISIONS: tuple[Precision, ...] = BACKEND_PRECISIONS["torch"]
#: The precisions of an exported file: an ONNX file (OpenVINO converts it as it is) holds what ONNX Runtime runs.
FILE_PRECISIONS: tuple[Precision, ...] = BACKEND_PRECISIONS["onnxruntime"]
#: Inference's choices of precision and of backend (the command line's ``--precision``, ``--backend``).
INFERENCE_PRECISIONS: tuple[str, ...] = (*PRECISIONS, AUTO)
INFERENCE_BACKENDS: tuple[str, ...] = (*BACKENDS, AUTO)

# The torch dtype of each precision's low-precision arithmetic (by name: torch is imported lazily).
_DTYPE_NAMES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def low_precision_dtype(precision: str) -> torch.dtype | None:
    """``torch.bfloat16`` for ``bf16``, ``torch.float16`` for ``fp16``, None for ``fp32``."""
    if precision not in _DTYPE_NAMES:
        raise InputError(f"precision must be one of {', '.join(TORCH_PRECISIONS)}; got {precision!r}")
    name = _DTYPE_NAMES[precision]
    if name is None:
        return None
    import torch

    return getattr(torch, name)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """``torch.autocast`` on ``device``'s type for bf16/fp16, a context that does nothing for fp32."""
    dtype = low_precision_dtype(precision)
    if dtype is None:
        return nullcontext()
    import torch

    return torch.autocast(device.type, dtype=dtype)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
