"""HRNet and PSPNet, state_dict-compatible with the original MSeg checkpoints, and checkpoint I/O.

Two lines to a model::

    model = build_model("hrnet_w48", num_classes=194)     # fresh, train mode
    metadata = load_checkpoint(model, "model.safetensors")  # its weights from a checkpoint file, strictly

Modules, bottom-up: ``resnet`` (residual blocks, dilated deep-stem ResNet), ``hrnet``, ``pspnet``, ``weights``
(safe reading/writing of weight files, strict loading with explanations), ``registry`` (names -> builders),
``checkpoint`` (our safetensors format, building a model from a file, ``convert_checkpoint``).

``load_model`` (zoo names, checkpoint paths, the bundled default) is not here: it is
:func:`mseg_semantic.zoo.load_model` (also ``mseg_semantic.load_model``). The zoo sits above this package (it
builds, checks and converts models with it), so this package does not refer to it.
"""

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
    "read_metadata",
    "save_checkpoint",
]
