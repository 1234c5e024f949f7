"""Residual blocks and the dilated "deep stem" ResNet that PSPNet is built on.

HRNet reuses the same two blocks (its stage-1 ``layer1`` and every branch are stacks of them), so the blocks
live here once. Attribute names (``conv1``/``bn1``/.../``downsample.0``) are the ones stored in the original
checkpoints; renaming any of them breaks loading.

The ResNet is the semseg/MSeg variant: a stem of three 3x3 convolutions (3->64->64->128) instead of one 7x7,
and ``layer3``/``layer4`` dilated (2 and 4) instead of strided, so the features keep 1/8 of the input size.
"""

from __future__ import annotations

from torch import Tensor, nn

#: Bottleneck blocks per stage for the depths the original PSPNet accepts.
RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

#: The ImageNet deep-stem ResNet files (semseg's ``resnet{50,101,152}_v2.pth``) name the stem modules as
#: attributes of the ResNet; PSPNet packs them into ``layer0`` (index = position in the Sequential).
IMAGENET_STEM_TO_LAYER0: dict[str, str] = {
    "conv1": "layer0.0",
    "bn1": "layer0.1",
    "conv2": "layer0.3",
    "bn2": "layer0.4",
    "conv3": "layer0.6",
    "bn3": "layer0.7",
}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 convolution whose padding keeps the size (up to the stride)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (expansion 1)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride and dilation), 1x1 expand by 4, residual connection."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    planes: int,
    num_blocks: int,
    stride: int = 1,
    dilation: int = 1,
    bn_momentum: float = 0.1,
) -> nn.Sequential:
    """``num_blocks`` blocks; the first gets a 1x1 conv + BN shortcut when the shape changes."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        )
    blocks = [block(in_channels, planes, stride, dilation, downsample, bn_momentum)]
    blocks += [block(out_channels, planes, 1, dilation, None, bn_momentum) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def deep_stem() -> nn.Sequential:
    """The semseg stem, to 1/4 of the input size with 128 channels.

    Indices matter: checkpoints store ``layer0.{0,1,3,4,6,7}``; the ReLUs and the max-pool hold no weights.
    """
    return nn.Sequential(
        conv3x3(3, 64, stride=2),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        conv3x3(64, 64),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        conv3x3(64, 128),
        nn.BatchNorm2d(128),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def dilated_resnet_layers(depth: int) -> list[nn.Sequential]:
    """``layer0`` .. ``layer4`` of the output-stride-8 ResNet (channels 128, 256, 512, 1024, 2048).

    Building ``layer3``/``layer4`` with stride 1 and dilation 2/4 gives the same modules the original gets by
    editing a strided ResNet after construction (every ``conv2`` dilated, every shortcut stride 1).
    """
    blocks = RESNET_DEPTHS[depth]
    layers = [deep_stem()]
    in_channels = 128
    for planes, num_blocks, stride, dilation in zip(
        (64, 128, 256, 512), blocks, (1, 2, 1, 1), (1, 1, 2, 4), strict=True
    ):
        layers.append(make_layer(Bottleneck, in_channels, planes, num_blocks, stride, dilation))
        in_channels = planes * Bottleneck.expansion
    for module in (m for layer in layers for m in layer.modules()):
        if isinstance(module, nn.Conv2d):
            # The ResNet's own init (the PSPNet heads keep PyTorch's default).
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return layers


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` names of every BatchNorm2d registered right after a Conv2d, in module order.

    In the models of this package (these blocks and stems, HRNet's and PSPNet's own layers) every BatchNorm2d is
    registered right after the Conv2d whose output it normalises, and nothing else reads that output: such a BN
    folds into its convolution for inference. A model whose forward wires its modules otherwise must not use this.
    """
    pairs = []
    previous: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and previous is not None and isinstance(previous[1], nn.Conv2d):
            pairs.append((previous[0], name))
        previous = (name, module)
    return pairs


def imagenet_resnet_key(file_key: str) -> str:
    """Where an entry of an ImageNet deep-stem ResNet file goes in a PSPNet (``conv1.weight`` -> ``layer0.0.weight``).

    Keys without a place (``fc.*``) come back unchanged and are then skipped by the loader.
    """
    module, _, rest = file_key.partition(".")
    return f"{IMAGENET_STEM_TO_LAYER0[module]}.{rest}" if module in IMAGENET_STEM_TO_LAYER0 else file_key
