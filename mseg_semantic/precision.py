"""Precision names: the arithmetic a network runs in, for training and inference alike.

``fp32`` is float32 throughout (the original numerics); ``bf16`` and ``fp16`` compute in that dtype where
``torch.autocast`` does (inference may run a BatchNorm-folded bf16 copy of the network instead, see
:mod:`mseg_semantic.inference.network`). Inference also accepts ``auto``: the fastest of them the device
computes natively (:func:`mseg_semantic.inference.network.resolve_precision`), and ``int8`` on the ONNX Runtime and
OpenVINO backends (:mod:`mseg_semantic.inference.runtimes`). Torch is imported only when a
function here needs it, so config readers can use the names without it.
"""

from __future__ import annotations

import functools
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from mseg_semantic.errors import InputError

if TYPE_CHECKING:
    import torch

#: Precisions of training and of a network run.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: Inference's choices: the above, ``int8`` (the ONNX Runtime and OpenVINO backends, after calibration), or ``auto``
#: (resolved per device and backend).
AUTO = "auto"
INFERENCE_PRECISIONS: tuple[str, ...] = (*PRECISIONS, "int8", AUTO)

# The torch dtype of each precision's low-precision arithmetic (by name: torch is imported lazily).
_DTYPE_NAMES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def low_precision_dtype(precision: str) -> torch.dtype | None:
    """``torch.bfloat16`` for ``bf16``, ``torch.float16`` for ``fp16``, None for ``fp32``."""
    if precision not in _DTYPE_NAMES:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
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
