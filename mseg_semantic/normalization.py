"""Image normalisation: ImageNet mean and std in the 0..255 RGB space, as every MSeg model expects.

The original code normalises RGB float images in [0, 255] with mean 255*(0.485, 0.456, 0.406) and std
255*(0.229, 0.224, 0.225), and pads images with the mean pixel (which becomes 0 after normalisation).
:func:`normalize` is that step for every path (inference, training, validation, benchmarks).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MEAN_RGB: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB values in 0..255 -> float32 ``(x - MEAN_RGB) / STD_RGB``, on the image's device.

    ``image`` is converted to float32 first (uint8 is fine). The result is a new tensor; the mean pixel becomes 0.
    """
    mean, std = _mean_std(image.device)
    return (image.float() - mean) / std


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: creating them on a GPU at every call would wait for the GPU each time. Made as
    # ordinary tensors even when the first call comes under inference_mode, so that later autograd may use them.
    import torch

    with torch.inference_mode(False):
        mean = torch.tensor(MEAN_RGB, dtype=torch.float32, device=device).view(3, 1, 1)
        std = torch.tensor(STD_RGB, dtype=torch.float32, device=device).view(3, 1, 1)
    return mean, std
