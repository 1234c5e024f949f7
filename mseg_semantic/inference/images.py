"""Turning what a user hands us (a path, an array, a PIL image) into an RGB uint8 array, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mseg_semantic.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) RGB uint8 (grey and palette images are expanded, alpha dropped)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise InputError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{path}: not a readable image (corrupt, truncated, or not an image format)")
    return np.ascontiguousarray(image[:, :, ::-1])


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
