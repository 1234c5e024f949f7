"""The resize, padding and window arithmetic of the original test-time algorithm (no model involved).

Every rounding rule here matters for identical results: short-side resize uses Python's ``round`` (ties to
even), padding puts the odd pixel at the bottom/right, windows advance by ``ceil(2/3 crop)`` and the last
window is aligned to the far edge.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from mseg_semantic.normalization import MEAN_RGB

STRIDE_RATE = 2 / 3


def scaled_short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side equal to ``short`` and the aspect ratio kept (Python rounding)."""
    if h > w:
        return round(short / w * h), short
    return short, round(short / h * w)


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    """Bilinear resize (OpenCV INTER_LINEAR) of an (H, W, C) image so its short side is ``short``."""
    new_h, new_w = scaled_short_side_size(image.shape[0], image.shape[1], short)
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def truncated_short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(new_h, new_w) of the original ``ResizeShort``: short side = ``short``, long side truncated with int()."""
    if h <= w:
        return short, int(w * short / h)
    return int(h * short / w), short


def max_base_size(h: int, w: int, crop: int) -> int:
    """Largest short side at which an (h, w) image fits one ``crop`` x ``crop`` window (batched presets)."""
    return math.floor(min(h, w) * crop / max(h, w))


def pad_to_crop(
    image: np.ndarray, crop_h: int, crop_w: int, value: tuple[float, ...] = MEAN_RGB
) -> tuple[np.ndarray, int, int]:
    """Pad an (H, W, C) image with ``value`` to at least (crop_h, crop_w), centred; returns (padded, top, left)."""
    h, w = image.shape[:2]
    pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
    top, left = int(pad_h / 2), int(pad_w / 2)
    if pad_h == 0 and pad_w == 0:
        return image, 0, 0
    padded = np.empty((h + pad_h, w + pad_w, image.shape[2]), dtype=image.dtype)
    padded[...] = np.asarray(value, dtype=image.dtype)
    padded[top : top + h, left : left + w] = image
    return padded, top, left


def window_starts(size: int, crop: int) -> list[int]:
    """Start offsets of the sliding windows along one axis of length ``size`` >= ``crop``."""
    stride = math.ceil(crop * STRIDE_RATE)
    count = math.ceil((size - crop) / stride) + 1
    return [min(i * stride + crop, size) - crop for i in range(count)]


def _linear_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and weight of i1 for each output pixel, with half-pixel centres as in OpenCV."""
    scale = in_size / out_size
    pos = (torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale - 0.5
    pos = pos.clamp(min=0)
    i0 = pos.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, (pos - i0).to(torch.float32)


def resize_rows(
    maps: torch.Tensor, out_h: int, out_w: int, row_start: int = 0, row_end: int | None = None
) -> torch.Tensor:
    """Rows ``row_start:row_end`` of the bilinear resize of ``maps`` (C, h, w) to (C, out_h, out_w).

    Same sampling as ``cv2.resize(..., INTER_LINEAR)`` and ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` (half-pixel centres, edge clamping), computed for a band of output rows only so
    that full-resolution multi-channel maps never need to exist at once. Float32 in, float32 out.
    """
    row_end = out_h if row_end is None else row_end
    _, in_h, in_w = maps.shape
    y0, y1, wy = _linear_taps(in_h, out_h, maps.device)
    x0, x1, wx = _linear_taps(in_w, out_w, maps.device)
    y0, y1, wy = y0[row_start:row_end], y1[row_start:row_end], wy[row_start:row_end]
    top, bottom = maps.index_select(1, y0), maps.index_select(1, y1)
    rows = top + (bottom - top) * wy[None, :, None]
    left, right = rows.index_select(2, x0), rows.index_select(2, x1)
    return left + (right - left) * wx[None, None, :]
