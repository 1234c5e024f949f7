"""A fixed, distinct colour per class id.

Colours come from a deterministic walk around the hue circle by the golden angle with three alternating
lightness/saturation levels, so neighbouring ids (often related classes) get clearly different colours and the
same id has the same colour in every run and on every machine. Id 255 (unlabeled) is black.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Sequence

import numpy as np

_GOLDEN = 0.6180339887498949
_LEVELS = ((0.95, 0.85), (0.65, 0.95), (0.85, 0.6))  # (saturation, value)


@functools.cache
def _palette(size: int) -> np.ndarray:
    colors = np.zeros((max(size, 256), 3), dtype=np.uint8)
    for i in range(size):
        s, v = _LEVELS[i % len(_LEVELS)]
        r, g, b = colorsys.hsv_to_rgb((0.07 + i * _GOLDEN) % 1.0, s, v)
        colors[i] = (round(r * 255), round(g * 255), round(b * 255))
    if size <= 255:
        colors[255] = (0, 0, 0)
    colors.setflags(write=False)
    return colors


def palette(num_classes: int, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(max(num_classes, 256), 3) uint8 RGB colours; row k is the colour of class k, row 255 black.

    ``colors``: a taxonomy's own colours (a taxonomy file's ``# palette:``), one per class, used instead."""
    if colors is None:
        return _palette(num_classes)
    table = _palette(num_classes).copy()
    table[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    return table
