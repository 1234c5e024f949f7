"""mseg-semantic: MSeg multi-domain semantic segmentation in plain PyTorch.

Sub-packages, in the order data flows through them:

- :mod:`mseg_semantic.taxonomy`: the 194-class universal taxonomy, every dataset taxonomy and the maps between them.
- :mod:`mseg_semantic.models`: HRNet and PSPNet, state_dict-compatible with the original checkpoints.
- :mod:`mseg_semantic.inference`: the original single/multi-scale test-time algorithm and the demo.
- :mod:`mseg_semantic.visualize`: colour maps and overlays with class names.
- :mod:`mseg_semantic.zoo`: the released models by name, and ``load_model`` (zoo names, checkpoint paths, the
  bundled default model).

The most used names are importable from here (``mseg_semantic.load_model``, ``mseg_semantic.Segmenter``);
they are loaded on first use so that ``import mseg_semantic`` (and ``mseg taxonomy``) stays fast. Two lines from an
image to labels::

    from mseg_semantic import Segmenter
    labels = Segmenter().predict("street.jpg")   # the bundled CamVid-11 model; Segmenter("mseg-3m") for MSeg
"""

from __future__ import annotations

import importlib
from typing import Any

from mseg_semantic.errors import CheckpointError, DownloadError, InputError, MsegError, TaxonomyError

__version__ = "0.1.0"

_LAZY = {
    "build_model": "mseg_semantic.models",
    "list_models": "mseg_semantic.models",
    "load_model": "mseg_semantic.zoo",
    "Segmenter": "mseg_semantic.inference",
    "TaxonomyConverter": "mseg_semantic.taxonomy",
    "class_names": "mseg_semantic.taxonomy",
    "taxonomy_names": "mseg_semantic.taxonomy",
}

__all__ = ["CheckpointError", "DownloadError", "InputError", "MsegError", "TaxonomyError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mseg_semantic' has no attribute {name!r}")
