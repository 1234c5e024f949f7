"""Turning what a user hands us (a path, an array, a PIL image) into an RGB uint8 array, with clear errors."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mseg_semantic.errors import InputError
from mseg_semantic.fileio import read_image


def as_rgb_array(image: Any) -> np.ndarray:
    """Accept a path, an (H, W[, 3|4]) uint8 array in RGB order, or a PIL image; return (H, W, 3) RGB uint8."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):  # PIL image
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected an image path, a numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image array must be uint8 RGB with values 0..255, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"image array must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image array is empty: shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])
