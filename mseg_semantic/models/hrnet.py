"""HRNetV2 for semantic segmentation, as in MSeg's ``seg_hrnet.py``.

Every released MSeg model is this network with the W48 stage configuration (:data:`HRNET_W48`). The module
tree reproduces the original attribute names, so ``state_dict()`` keys equal the checkpoint keys without the
``module.`` prefix, and the forward pass reproduces the original numerics: BatchNorm eps 1e-5 / momentum 0.01,
bilinear resizes to exact sizes with ``align_corners=False`` in the fuse layers and before the head, and
``align_corners=True`` for the final resize to the input size.

Differences from the original that do not change any output it can produce:

- plain :class:`torch.nn.BatchNorm2d` (the original hard-codes SyncBatchNorm; in eval mode on one device they
  compute the same thing). Distributed training converts with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
- any input size is accepted (the original asserts ``(H - 1) % 8 == 0``); the output always has the input's size.
- no loss inside the model: ``model(x)`` returns logits (N, K, H, W) in train and eval mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mseg_semantic.configs import check, check_choice, read_config, read_yaml
from mseg_semantic.errors import InputError
from mseg_semantic.models.resnet import BasicBlock, Bottleneck, conv_bn_pairs, make_layer

#: The original code's BatchNorm momentum for every HRNet BN (PyTorch convention).
BN_MOMENTUM = 0.01
#: The stem is fixed in the original code, not configured.
STEM_CHANNELS = 64

_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


@dataclass(frozen=True)
class HRNetStageConfig:
    """One stage of the original YAML (``STAGE1`` .. ``STAGE4``); field names are the YAML keys lower-cased."""

    num_modules: int
    num_branches: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]
    fuse_method: str = "SUM"

    def __post_init__(self) -> None:
        for name in ("block", "fuse_method"):  # the original layout's values are matched case-insensitively
            object.__setattr__(self, name, str(getattr(self, name)).upper())
        check_choice(self.block, sorted(_BLOCKS), "BLOCK")
        fuse = self.fuse_method
        check(fuse == "SUM", "FUSE_METHOD", f"must be SUM (the only one the original has), got {fuse!r}")
        check(
            len(self.num_blocks) == len(self.num_channels) == self.num_branches,
            "NUM_BRANCHES",
            f"is {self.num_branches} but NUM_BLOCKS is {list(self.num_blocks)} and NUM_CHANNELS "
            f"{list(self.num_channels)}: all three must agree",
        )
        for name in ("num_modules", "num_branches", "num_blocks", "num_channels"):
            values = getattr(self, name)
            values = values if isinstance(values, tuple) else (values,)  # one number or one per branch
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
            check(ok, name.upper(), f"must be positive integers, got {getattr(self, name)!r}")

    @property
    def out_channels(self) -> list[int]:
        """Channels of each branch after the stage (block width times the block's expansion)."""
        return [c * _BLOCKS[self.block].expansion for c in self.num_channels]


@dataclass(frozen=True)
class HRNetConfig:
    """The architecture config of the original ``seg_hrnet.yaml`` (``HRNetArchConfig``)."""

    stage1: HRNetStageConfig
    stage2: HRNetStageConfig
    stage3: HRNetStageConfig
    stage4: HRNetStageConfig
    final_conv_kernel: int = 1

    def __post_init__(self) -> None:
        # The head concatenates exactly four branches, and stage n adds branch n (as in the original).
        for number, stage in enumerate(self.stages, start=1):
            branches = stage.num_branches
            check(branches == number, f"STAGE{number}.NUM_BRANCHES", f"must be {number}, got {branches}")
        check_choice(self.final_conv_kernel, (1, 3), "FINAL_CONV_KERNEL")

    @property
    def stages(self) -> tuple[HRNetStageConfig, ...]:
        return (self.stage1, self.stage2, self.stage3, self.stage4)

    def to_dict(self) -> dict[str, Any]:
        """The original YAML layout (upper-case keys, lists), without hydra's ``_target_`` keys."""
        out: dict[str, Any] = {"FINAL_CONV_KERNEL": self.final_conv_kernel}
        for number, stage in enumerate(self.stages, start=1):
            out[f"STAGE{number}"] = {
                f.name.upper(): list(v) if isinstance(v := getattr(stage, f.name), tuple) else v for f in fields(stage)
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "HRNet config") -> HRNetConfig:
        """Read the original layout; the ``HRNetArchConfig`` wrapper and ``_target_`` keys are optional.

        Keys are matched case-insensitively; a problem raises :class:`~mseg_semantic.configs.ConfigError`.
        """
        if isinstance(data, Mapping) and [str(k).upper() for k in data if k != "_target_"] == ["HRNETARCHCONFIG"]:
            data = next(v for k, v in data.items() if k != "_target_")
        return read_config(cls, data, source=source, spelling=str.upper, ignore=("_target_",))


def load_hrnet_config(config: HRNetConfig | Mapping[str, Any] | str | os.PathLike[str]) -> HRNetConfig:
    """An :class:`HRNetConfig` from itself, a dict, or the path of a YAML file in the original layout."""
    if isinstance(config, HRNetConfig):
        return config
    if isinstance(config, Mapping):
        return HRNetConfig.from_dict(config)
    return HRNetConfig.from_dict(read_yaml(config) or {}, source=str(config))


def _stage(widths: tuple[int, ...], blocks: int, modules: int, block: str = "BASIC") -> HRNetStageConfig:
    return HRNetStageConfig(modules, len(widths), block, (blocks,) * len(widths), widths)


#: HRNetV2-W48, the configuration of every released MSeg model.
HRNET_W48 = HRNetConfig(
    stage1=_stage((64,), 4, 1, "BOTTLENECK"),
    stage2=_stage((48, 96), 4, 1),
    stage3=_stage((48, 96, 192), 4, 4),
    stage4=_stage((48, 96, 192, 384), 4, 3),
)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU): the unit of the transition and fuse layers (keys ``.0`` and ``.1``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches, then every output branch sums all input branches resampled to its resolution."""

    def __init__(self, stage: HRNetStageConfig) -> None:
        super().__init__()
        block = _BLOCKS[stage.block]
        # Inputs already have the stage's widths (the transition layers see to that), so no branch downsamples.
        channels = stage.out_channels
        self.branches = nn.ModuleList(
            make_layer(block, channels[b], stage.num_channels[b], stage.num_blocks[b], bn_momentum=BN_MOMENTUM)
            for b in range(stage.num_branches)
        )
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse_path(channels, source, target) for source in range(len(channels)))
            for target in range(len(channels))
        )
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _fuse_path(channels: list[int], source: int, target: int) -> nn.Module | None:
        if source == target:
            return None  # identity; keeps its index so the keys of the others stay put
        if source > target:
            # Lower resolution: 1x1 conv to the target width here, bilinear resize in forward().
            return _conv_bn(channels[source], channels[target], 1, 1, relu=False)
        # Higher resolution: one stride-2 3x3 conv per halving; only the last changes width, and has no ReLU.
        steps = target - source
        return nn.Sequential(
            *(
                _conv_bn(
                    channels[source], channels[target] if k == steps - 1 else channels[source], 3, 2, k < steps - 1
                )
                for k in range(steps)
            )
        )

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        x = [branch(xi) for branch, xi in zip(self.branches, x, strict=True)]
        out = []
        for target, paths in enumerate(self.fuse_layers):
            size = x[target].shape[-2:]
            total = None
            for source, path in enumerate(paths):
                if path is None:
                    y = x[source]
                elif source > target:
                    y = F.interpolate(path(x[source]), size=size, mode="bilinear", align_corners=False)
                else:
                    y = path(x[source])
                total = y if total is None else total + y
            out.append(self.relu(total))
        return out


def _transition(previous: list[int], current: list[int]) -> nn.ModuleList:
    """Adapt the branches of one stage to the next and add the new lowest-resolution branch.

    Existing branches get a 3x3 conv only when their width changes (else ``None``); a new branch comes from the
    last existing one through stride-2 3x3 convs.
    """
    layers: list[nn.Module | None] = []
    for i, width in enumerate(current):
        if i < len(previous):
            layers.append(_conv_bn(previous[i], width, 3, 1, relu=True) if previous[i] != width else None)
        else:
            steps = i + 1 - len(previous)
            layers.append(
                nn.Sequential(
                    *(
                        _conv_bn(previous[-1], width if k == steps - 1 else previous[-1], 3, 2, relu=True)
                        for k in range(steps)
                    )
                )
            )
    return nn.ModuleList(layers)


class HRNet(nn.Module):
    """HRNetV2 segmentation network: logits (N, K, H, W) at the input size, in train and eval mode."""

    def __init__(self, config: HRNetConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise InputError(f"num_classes must be at least 1, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        #: The registry name that rebuilds this model (stored by save_checkpoint).
        self.arch = "hrnet_w48" if config == HRNET_W48 else "hrnet"

        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(STEM_CHANNELS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

        s1 = config.stage1
        self.layer1 = make_layer(
            _BLOCKS[s1.block], STEM_CHANNELS, s1.num_channels[0], s1.num_blocks[0], bn_momentum=BN_MOMENTUM
        )
        channels = s1.out_channels
        # Attribute names transition1..3 / stage2..4 are the checkpoint's.
        for number, stage in enumerate(config.stages[1:], start=2):
            setattr(self, f"transition{number - 1}", _transition(channels, stage.out_channels))
            setattr(
                self, f"stage{number}", nn.Sequential(*(HighResolutionModule(stage) for _ in range(stage.num_modules)))
            )
            channels = stage.out_channels

        width = sum(channels)
        kernel = config.final_conv_kernel
        self.last_layer = nn.Sequential(
            nn.Conv2d(width, width, 1),
            nn.BatchNorm2d(width, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, kernel, padding=kernel // 2),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # The original init: conv weights N(0, 0.001), biases and BN at PyTorch's defaults.
                nn.init.normal_(module.weight, std=0.001)

    def forward(self, x: Tensor, resize: bool = True) -> Tensor:
        """``x``: normalised RGB (N, 3, H, W) float; returns logits (N, num_classes, H, W), no softmax.

        ``resize=False`` returns the logits before the final resize, at a quarter of the input size
        (``ceil(H / 4)`` x ``ceil(W / 4)``): ``forward(x)`` is them resized to (H, W), bilinear with
        ``align_corners=True``. Inference uses them to upsample only the pixels it keeps.
        """
        height, width = x.shape[-2:]
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        branches = [self.layer1(x)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            # A new branch grows from the last (lowest-resolution) existing one.
            branches = [
                branches[i] if layer is None else layer(branches[min(i, len(branches) - 1)])
                for i, layer in enumerate(transition)
            ]
            branches = stage(branches)
        size = branches[0].shape[-2:]
        features = [branches[0]] + [
            F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in branches[1:]
        ]
        logits = self.last_layer(torch.cat(features, dim=1))
        if not resize:
            return logits
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Each BatchNorm2d with the Conv2d whose output only it reads (names), for folding in inference copies."""
        return conv_bn_pairs(self)

    def backbone_key(self, file_key: str) -> str:
        """Where an entry of the HRNet authors' ImageNet file goes: the names are already ours."""
        return file_key
