"""Building the MSeg composite dataset (``mseg data``): download, prepare, relabel and verify the 13 datasets.

The original does this with shell recipes and scripts of ``mseg-api``; here each step is one function (and one
command), exact to the original's pixels, resumable, and safe: outputs are written atomically and a failure stops
the run with the file and reason named.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "prepare": "mseg_semantic.dataprep.run",
    "relabel": "mseg_semantic.dataprep.run",
    "verify": "mseg_semantic.dataprep.verification",
    "status": "mseg_semantic.dataprep.verification",
    "download_dataset": "mseg_semantic.dataprep.download",
    "DATASETS": "mseg_semantic.dataprep.datasets",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # loaded on first use, so importing one step does not import the others
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mseg_semantic.dataprep' has no attribute {name!r}")
