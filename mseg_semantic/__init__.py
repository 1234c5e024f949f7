"""mseg-semantic: MSeg multi-domain semantic segmentation in plain PyTorch.

Sub-packages, in the order data flows through them:

- :mod:`mseg_semantic.taxonomy`: the 194-class universal taxonomy, every dataset taxonomy and the maps between them.
- :mod:`mseg_semantic.models`: HRNet and PSPNet, state_dict-compatible with the original checkpoints.
"""

from mseg_semantic.errors import CheckpointError, InputError, MsegError, TaxonomyError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "InputError", "MsegError", "TaxonomyError", "__version__"]
