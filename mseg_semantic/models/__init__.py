"""HRNet and PSPNet, state_dict-compatible with the original MSeg checkpoints, and checkpoint I/O.

Two lines to a model::

    model = build_model("hrnet_w48", num_classes=194)     # fresh, train mode
    model = load_model("mseg-3m.pth", arch="hrnet_w48")    # original checkpoint, eval mode

Modules, bottom-up: ``resnet`` (residual blocks, dilated deep-stem ResNet), ``hrnet``, ``pspnet``, ``weights``
(safe reading/writing of weight files, strict loading with explanations), ``registry`` (names -> builders),
``checkpoint`` (our safetensors format, building a model from a file, ``convert_checkpoint``).

``load_model`` (zoo names, checkpoint paths, the bundled default) is :func:`mseg_semantic.zoo.load_model`, the same
function as ``mseg_semantic.load_model``; it is looked up on first use, so importing this package does not import
the zoo (which itself uses this package to check and convert downloads).
"""

from typing import Any

from mseg_semantic.models.checkpoint import (
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mseg_semantic.models.hrnet import HRNET_W48, HRNet, HRNetConfig, HRNetStageConfig, load_hrnet_config
from mseg_semantic.models.pspnet import PSPNet, PSPNetConfig
from mseg_semantic.models.registry import build_model, list_models
from mseg_semantic.models.weights import BackboneReport, load_backbone_weights, read_metadata

__all__ = [
    "HRNET_W48",
    "BackboneReport",
    "HRNet",
    "HRNetConfig",
    "HRNetStageConfig",
    "PSPNet",
    "PSPNetConfig",
    "build_model",
    "convert_checkpoint",
    "list_models",
    "load_backbone_weights",
    "load_checkpoint",
    "load_hrnet_config",
    "load_model",
    "read_metadata",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from mseg_semantic.zoo import load_model

        return load_model
    raise AttributeError(f"module 'mseg_semantic.models' has no attribute {name!r}")
