"""Result pictures drawn with OpenCV (no plotting library needed): per-class IoU bars and a confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (40, 40, 40)


def _text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, color=_INK) -> None:
    cv2.putText(canvas, text, (x, y), _FONT, scale, color, 1, cv2.LINE_AA)


def per_class_iou_chart(names: Sequence[str], iou_percent: Sequence[float | None], title: str) -> np.ndarray:
    """Horizontal bars, one row per class (None = class never occurs, drawn as 'n/a'). RGB uint8."""
    row, label_w, bar_w = 18, max(120, 8 * max((len(n) for n in names), default=10)), 500
    h, w = 50 + row * len(names) + 20, label_w + bar_w + 80
    canvas = np.full((h, w, 3), 255, np.uint8)
    _text(canvas, title, 10, 25, 0.55)
    for i, (name, value) in enumerate(zip(names, iou_percent, strict=True)):
        y = 50 + i * row
        _text(canvas, name, 10, y + 13)
        x0 = label_w
        cv2.rectangle(canvas, (x0, y + 3), (x0 + bar_w, y + row - 3), (235, 235, 235), -1)
        if value is None:
            _text(canvas, "n/a", x0 + 5, y + 13, color=(150, 150, 150))
            continue
        cv2.rectangle(canvas, (x0, y + 3), (x0 + int(bar_w * value / 100), y + row - 3), (66, 133, 244), -1)
        _text(canvas, f"{value:.1f}", x0 + bar_w + 8, y + 13)
    return canvas


def confusion_matrix_image(matrix: np.ndarray, names: Sequence[str], title: str) -> np.ndarray:
    """Row-normalised confusion matrix (rows = ground truth) as a heat map with class names. RGB uint8."""
    k = len(names)
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)
    cell = int(np.clip(1000 // max(k, 1), 6, 40))
    scale = min(0.45, cell / 24)
    label = 10 + max((cv2.getTextSize(n, _FONT, scale, 1)[0][0] for n in names), default=40)
    size = k * cell
    legend = "rows: ground truth, columns: prediction, row-normalised (%)"
    width = max(label + size + 20, 20 + cv2.getTextSize(title, _FONT, 0.5, 1)[0][0])
    canvas = np.full((label + size + 70, width, 3), 255, np.uint8)
    _text(canvas, title, 10, 22, 0.5)
    _text(canvas, legend, 10, 44, 0.4)
    heat = (255 * (1 - norm)).astype(np.uint8)  # white = 0, dark blue = 1
    block = np.stack([heat, heat, np.full_like(heat, 255)], axis=-1)
    block = np.repeat(np.repeat(block, cell, axis=0), cell, axis=1)
    top = 60 + label
    canvas[top : top + size, label : label + size] = block
    for i, name in enumerate(names):
        _text(canvas, name, 5, top + i * cell + int(cell * 0.7), scale)
    # Column names: draw horizontally on a strip, then rotate it to read bottom-up.
    strip = np.full((cell * k, label, 3), 255, np.uint8)
    for j, name in enumerate(names):
        _text(strip, name, 5, j * cell + int(cell * 0.7), scale)
    canvas[60 : 60 + label, label : label + size] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if cell >= 22:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    color = (255, 255, 255) if norm[i, j] > 0.5 else _INK
                    _text(canvas, f"{100 * norm[i, j]:.0f}", label + j * cell + 3, top + i * cell + int(cell * 0.65),
                          0.32, color)  # fmt: skip
    return canvas
