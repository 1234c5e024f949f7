"""PSPNet (pyramid pooling over a dilated deep-stem ResNet), as in MSeg's ``pspnet.py`` (from hszhao/semseg).

No released MSeg checkpoint uses it, but the original training code does; the module tree reproduces the
original names (``layer0``..``layer4``, ``ppm.features.{i}``, ``cls``, ``aux``) so its checkpoints load.

Train mode returns ``(logits, aux_logits)`` (the aux head reads ``layer3``; the training loop weights its loss,
0.4 in the release configs); eval mode returns ``logits`` only and does not run the aux head. Both are
(N, K, h, w) with h = int((H - 1) / 8 * zoom_factor + 1), which is H for the default zoom factor 8.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mseg_semantic.configs import check, check_choice, read_config, to_plain
from mseg_semantic.errors import InputError
from mseg_semantic.models.resnet import (
    RESNET_DEPTHS,
    conv_bn_pairs,
    dilated_resnet_layers,
    imagenet_resnet_key,
)

#: Channels of ``layer4`` (Bottleneck ResNets only, which is why the original rejects ResNet-18/34).
FEATURE_CHANNELS = 2048
#: Channels of ``layer3``, the aux head's input.
AUX_CHANNELS = 1024


@dataclass(frozen=True)
class PSPNetConfig:
    """The PSPNet constructor options of the original that change the network."""

    layers: int = 50
    bins: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    zoom_factor: int = 8

    def __post_init__(self) -> None:
        check_choice(self.layers, sorted(RESNET_DEPTHS), "layers")
        check(
            bool(self.bins) and FEATURE_CHANNELS % len(self.bins) == 0,
            "bins",
            f"must be 1 to {FEATURE_CHANNELS} bins, as many as divide {FEATURE_CHANNELS}, got {list(self.bins)}",
        )
        check(self.zoom_factor in (1, 2, 4, 8), "zoom_factor", f"must be 1, 2, 4 or 8, got {self.zoom_factor}")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "PSPNet config") -> PSPNetConfig:
        """Missing keys take the defaults; a problem raises :class:`~mseg_semantic.configs.ConfigError`."""
        return read_config(cls, data, source=source)


class PyramidPooling(nn.Module):
    """Average-pool to b x b for every bin b, reduce channels, resize back, concatenate with the input."""

    def __init__(self, in_channels: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduced, 1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(f(x), size=size, mode="bilinear", align_corners=True) for f in self.features]
        return torch.cat([x, *pooled], dim=1)


def _head(in_channels: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv + BN + ReLU + dropout + 1x1 classifier (keys ``.0``, ``.1``, ``.4``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(hidden, num_classes, 1),
    )


class PSPNet(nn.Module):
    """PSPNet with a dilated deep-stem ResNet-50/101/152, PPM, main head ``cls`` and aux head ``aux``."""

    def __init__(self, config: PSPNetConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise InputError(f"PSPNet needs num_classes of at least 2 (as the original), got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        #: The registry name that rebuilds this model (stored by save_checkpoint).
        self.arch = f"pspnet{config.layers}"
        self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = dilated_resnet_layers(config.layers)
        self.ppm = PyramidPooling(FEATURE_CHANNELS, config.bins)
        self.cls = _head(2 * FEATURE_CHANNELS, 512, num_classes, config.dropout)
        # The original creates `aux` under `if self.training:` in __init__, which always holds, so checkpoints
        # always carry aux.* keys.
        self.aux = _head(AUX_CHANNELS, 256, num_classes, config.dropout)

    def _resize(self, logits: Tensor, height: int, width: int) -> Tensor:
        if self.config.zoom_factor == 1:
            return logits
        # The original's output size formula; for zoom_factor 8 it gives back the input size.
        size = (int((height - 1) / 8 * self.config.zoom_factor + 1), int((width - 1) / 8 * self.config.zoom_factor + 1))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    def forward(self, x: Tensor, resize: bool = True) -> Tensor | tuple[Tensor, Tensor]:
        """``x``: normalised RGB (N, 3, H, W); eval: logits; train: ``(logits, aux_logits)``.

        ``resize=False`` returns the logits before the final resize, at an eighth of the input size
        (``ceil(H / 8)`` x ``ceil(W / 8)``). With the default zoom factor 8, ``forward(x)`` is them resized to
        (H, W), bilinear with ``align_corners=True``.
        """
        height, width = x.shape[-2:]
        x = self.layer2(self.layer1(self.layer0(x)))
        mid = self.layer3(x)
        logits = self.cls(self.ppm(self.layer4(mid)))
        if resize:
            logits = self._resize(logits, height, width)
        if not self.training:
            return logits
        aux = self.aux(mid)
        return logits, self._resize(aux, height, width) if resize else aux

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Each BatchNorm2d with the Conv2d whose output only it reads (names), for folding in inference copies."""
        return conv_bn_pairs(self)

    def backbone_key(self, file_key: str) -> str:
        """Where an entry of a deep-stem ImageNet ResNet file goes (the stem is packed into ``layer0``)."""
        return imagenet_resnet_key(file_key)
