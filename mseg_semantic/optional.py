"""The optional dependencies: ONNX export, the runtime backends and the web service, checked in one place.

``pip install mseg-semantic`` brings PyTorch only; ONNX export and ONNX Runtime come with the ``onnx`` extra,
OpenVINO with ``openvino``, and ``mseg serve``'s FastAPI and uvicorn with ``serve``. Whatever needs one of them
(:mod:`mseg_semantic.export`, the backends of :mod:`mseg_semantic.inference.runtimes`, ``mseg serve``) asks
:func:`require`, so a missing package is always the same
:class:`~mseg_semantic.errors.InputError` naming the extra that installs it, and :func:`installed` answers without
importing anything.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from mseg_semantic.errors import InputError

#: Which extra installs a missing module (by its top-level package).
EXTRAS: dict[str, str] = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino",
                          "fastapi": "serve", "uvicorn": "serve", "python_multipart": "serve",
                          "fastapi_offline": "serve"}


def installed(module: str) -> bool:
    """Is the module importable (without importing it)?"""
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise an :class:`InputError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise InputError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not installed ({error}); "
            f'install it with: pip install "mseg-semantic[{extra}]" (in a checkout: pip install -e ".[{extra}]")'
        ) from None
