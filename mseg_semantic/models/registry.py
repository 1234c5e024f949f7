"""The model names :func:`build_model` knows: one table from name to a plain builder function.

A builder takes ``num_classes`` and the arch's own keyword options and returns a plain ``nn.Module`` that has
``arch``, ``config`` (a dataclass with ``to_dict()``) and ``num_classes``; :func:`save_checkpoint
<mseg_semantic.models.save_checkpoint>` stores those three so the file alone can rebuild the model. Their
``forward`` takes ``resize`` (``resize=False``: the logits before the final upsample), which :func:`takes_resize`
tells apart from a module of the caller's, for inference and export alike.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from mseg_semantic.errors import InputError
from mseg_semantic.models.hrnet import HRNET_W48, HRNet, HRNetConfig, load_hrnet_config
from mseg_semantic.models.pspnet import PSPNet, PSPNetConfig
from mseg_semantic.models.weights import load_backbone_weights


def hrnet(num_classes: int, *, config: HRNetConfig | Mapping[str, Any] | str | os.PathLike[str]) -> HRNet:
    """HRNetV2 of any width: ``config`` is an :class:`HRNetConfig`, a dict or a YAML path in the original layout."""
    return HRNet(load_hrnet_config(config), num_classes)


def hrnet_w48(num_classes: int, *, config: HRNetConfig | Mapping[str, Any] | None = None) -> HRNet:
    """HRNetV2-W48, the network of every released MSeg model (``config`` is accepted only if it is W48's)."""
    if config is not None and load_hrnet_config(config) != HRNET_W48:
        raise InputError(
            "arch 'hrnet_w48' has a fixed stage configuration; use arch 'hrnet' with config=... for another"
        )
    return HRNet(HRNET_W48, num_classes)


def _pspnet_builder(layers: int) -> Callable[..., PSPNet]:
    def build(num_classes: int, *, config: PSPNetConfig | Mapping[str, Any] | None = None, **options: Any) -> PSPNet:
        # `options` are PSPNetConfig fields (bins, dropout, zoom_factor); unknown ones are rejected by from_dict.
        base = config.to_dict() if isinstance(config, PSPNetConfig) else dict(config or {})
        resolved = PSPNetConfig.from_dict({"layers": layers, **base, **options})
        if resolved.layers != layers:
            raise InputError(
                f"arch 'pspnet{layers}' cannot have layers={resolved.layers}; use arch 'pspnet{resolved.layers}'"
            )
        return PSPNet(resolved, num_classes)

    build.__name__ = f"pspnet{layers}"
    build.__doc__ = f"PSPNet on a dilated deep-stem ResNet-{layers}; options: bins, dropout, zoom_factor (or config=)."
    return build


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "hrnet": hrnet,
    "hrnet_w48": hrnet_w48,
    "pspnet50": _pspnet_builder(50),
    "pspnet101": _pspnet_builder(101),
    "pspnet152": _pspnet_builder(152),
}


def list_models(pattern: str | None = None) -> list[str]:
    """The arch names :func:`build_model` accepts, sorted; ``pattern`` is a shell glob such as ``"pspnet*"``."""
    return sorted(name for name in _BUILDERS if pattern is None or fnmatch.fnmatchcase(name, pattern))


def build_model(
    arch: str,
    num_classes: int,
    *,
    backbone_weights: str | os.PathLike[str] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a freshly initialised model, in train mode, on the current default device.

    ``arch``: one of :func:`list_models`. ``options``: the arch's keyword options (``config=`` for ``"hrnet"``;
    ``bins``/``dropout``/``zoom_factor`` for PSPNets). ``backbone_weights``: an ImageNet classification file in
    its authors' layout (HRNet's ``hrnetv2_w48_imagenet_pretrained.pth``, semseg's ``resnet50_v2.pth``) to
    initialise the backbone from; what was loaded and skipped is logged (see :func:`load_backbone_weights`).
    """
    builder = _BUILDERS.get(arch)
    if builder is None:
        close = difflib.get_close_matches(str(arch), _BUILDERS, n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown model arch {arch!r}{suggestion}; known: {', '.join(list_models())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise InputError(f"num_classes must be an integer, got {num_classes!r}")
    try:
        inspect.signature(builder).bind(num_classes, **options)
    except TypeError as exc:
        raise InputError(f"arch {arch!r}: {exc}; its signature is {arch}{inspect.signature(builder)}") from exc
    model = builder(num_classes, **options)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    return model


def takes_resize(model: nn.Module) -> bool:
    """Does the model's forward take ``resize`` (our HRNet and PSPNet: ``resize=False`` skips the final resize)?"""
    try:
        return "resize" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature
        return False
