"""Colour maps and overlays with class names written on the regions they name.

A class name goes at the point of its region farthest from the region's border (the maximum of the distance
transform), which lies inside the region even when the region is not convex. Regions smaller than a fraction
of the image get no name; names are placed biggest region first and skipped when they would cover a name
already drawn. Text size follows the image size so names stay legible from 360p to 4K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from mseg_semantic.visualize.palette import palette


def colorize(labels: np.ndarray, num_classes: int, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(H, W) label ids -> (H, W, 3) RGB uint8 with the fixed palette of a ``num_classes`` taxonomy (or the
    taxonomy's own ``colors``, one per class)."""
    colors = palette(num_classes, colors)
    if labels.size and int(labels.max()) >= len(colors):
        raise ValueError(f"label value {int(labels.max())} exceeds the palette of {num_classes} classes")
    return colors[labels]


@dataclass(frozen=True)
class LabelPoint:
    class_id: int
    x: int
    y: int
    area: int


def label_points(labels: np.ndarray, min_area: int, ignore: int = 255) -> list[LabelPoint]:
    """One point per connected region of at least ``min_area`` pixels, biggest regions first."""
    points = []
    for cls in np.unique(labels):
        if cls == ignore and labels.dtype == np.uint8:
            continue
        mask = (labels == cls).astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        big = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= min_area]
        if not big:
            continue
        # Zero-padding the mask makes the image border count as a region border.
        dist = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
        for k in big:
            x0, y0, w, h = (int(v) for v in stats[k, :4])
            window = np.where(components[y0 : y0 + h, x0 : x0 + w] == k, dist[y0 : y0 + h, x0 : x0 + w], -1)
            dy, dx = np.unravel_index(int(window.argmax()), window.shape)
            points.append(LabelPoint(int(cls), x0 + int(dx), y0 + int(dy), int(stats[k, cv2.CC_STAT_AREA])))
    points.sort(key=lambda p: -p.area)
    return points


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    alpha: float = 0.5,
    min_area_fraction: float = 0.002,
    max_names: int = 60,
    draw_names: bool = True,
    colors: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Blend the colour map into an RGB image and write each sizeable region's class name on it.

    ``image`` (H, W, 3) RGB uint8 and ``labels`` (H, W) must have the same size; ``colors``: the taxonomy's own
    colours, one per class (default: the fixed palette). Returns RGB uint8.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    color = colorize(labels, len(class_names), colors)
    out = cv2.addWeighted(image, 1.0 - alpha, color, alpha, 0.0)
    if not draw_names:
        return out
    h, w = labels.shape
    scale = float(np.clip(np.sqrt(h * w) / 1100.0, 0.4, 4.0))
    thickness = max(1, round(scale * 1.6))
    min_area = max(64, int(min_area_fraction * h * w))
    placed: list[tuple[int, int, int, int]] = []
    for point in label_points(labels, min_area)[: max_names * 3]:
        if len(placed) >= max_names:
            break
        if point.class_id >= len(class_names):
            continue
        text = class_names[point.class_id]
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        pad = max(2, thickness * 2)
        bw, bh = tw + 2 * pad, th + base + 2 * pad
        x0 = int(np.clip(point.x - bw // 2, 0, max(0, w - bw)))
        y0 = int(np.clip(point.y - bh // 2, 0, max(0, h - bh)))
        box = (x0, y0, x0 + bw, y0 + bh)
        if any(_overlap(box, other) for other in placed):
            continue
        placed.append(box)
        region = out[box[1] : box[3], box[0] : box[2]]
        region[...] = (region * 0.3).astype(np.uint8)  # dark box behind the text, 70% opaque
        cv2.putText(out, text, (x0 + pad, y0 + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)  # fmt: skip
    return out


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
