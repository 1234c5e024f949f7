"""Turning what a user hands us (a path, an array, a PIL image) into an RGB uint8 array, with clear errors."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from mseg_semantic.errors import InputError
from mseg_semantic.fileio import decode_image, read_image


def as_rgb_array(image: Any) -> np.ndarray:
    """Accept a path, an (H, W[, 3|4]) uint8 array in RGB order, or a PIL image; return (H, W, 3) RGB uint8."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):  # PIL image
        image = _from_pil(image)
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


def _from_pil(image: Any) -> np.ndarray:
    """A PIL image as the path reader would give the same file: 16-bit modes (``I;16*``, and ``I``, Pillow's mode for
    some 16-bit PNGs) are scaled to 8 bits by the same decoder, not clipped; 8-bit modes are converted by PIL."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise InputError(f"PIL image of mode {mode} holds values outside 0..65535; convert it to 8-bit RGB first")
        ok, encoded = cv2.imencode(".png", values.astype(np.uint16))
        if not ok:  # pragma: no cover - a uint16 array always encodes
            raise InputError(f"PIL image of mode {mode} could not be converted")
        return decode_image(encoded, f"PIL image of mode {mode}")
    if mode == "F":
        raise InputError("PIL image of mode F (32-bit float) has no standard 8-bit scaling; convert it to 8-bit RGB "
                         "first (a float TIFF given by path is refused the same way)")  # fmt: skip
    return np.asarray(image.convert("RGB"))
