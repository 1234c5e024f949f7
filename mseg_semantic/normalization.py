"""Image normalisation constants: ImageNet mean and std in the 0..255 RGB space, as every MSeg model expects.

The original code normalises RGB float images in [0, 255] with mean 255*(0.485, 0.456, 0.406) and std
255*(0.229, 0.224, 0.225), and pads images with the mean pixel (which becomes 0 after normalisation).
"""

from __future__ import annotations

MEAN_RGB: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)
