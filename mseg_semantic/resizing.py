"""Short-side resizing: how every path (inference, evaluation, training, validation) scales an image first.

The short side becomes a given length and the aspect ratio is kept; the long side is rounded by one of the
original code's two rules, and the rule matters for identical results:

- the test-time algorithm (single and multi-scale presets) rounds it with Python's ``round`` (ties to even):
  :func:`scaled_short_side_size`;
- ``ResizeShort`` of training and validation, and the batched presets, truncate it with ``int()``:
  :func:`truncated_short_side_size`.

Images are resampled bilinearly (OpenCV ``INTER_LINEAR``), label maps by nearest neighbour.
"""

from __future__ import annotations

import cv2
import numpy as np


def scaled_short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side equal to ``short`` and the aspect ratio kept (Python rounding)."""
    if h > w:
        return round(short / w * h), short
    return short, round(short / h * w)


def truncated_short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(new_h, new_w) of the original ``ResizeShort``: short side = ``short``, long side truncated with int()."""
    if h <= w:
        return short, int(w * short / h)
    return int(h * short / w), short


def resize_short_side(
    image: np.ndarray, short: int, label: np.ndarray | None = None, *, truncate: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Resize an (H, W, C) image so its short side is ``short``, up or down; with ``label``, its label map too.

    The long side is rounded (:func:`scaled_short_side_size`), or truncated with ``truncate=True``
    (:func:`truncated_short_side_size`, the original ``ResizeShort``). Returns the image, or ``(image, label)``
    when a label map is given (nearest neighbour; uint8 or uint16, which OpenCV can resample). An image that
    already has the size is returned as it is, not copied.
    """
    h, w = image.shape[:2]
    new_h, new_w = (truncated_short_side_size if truncate else scaled_short_side_size)(h, w, short)
    if (new_h, new_w) != (h, w):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if label is not None:
            label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    return image if label is None else (image, label)
