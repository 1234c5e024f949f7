"""Segmentation metrics exactly as the original: intersections and unions summed over a whole split.

A :class:`ConfusionMatrix` (rows = ground truth, columns = prediction) holds everything: per class,
intersection = diagonal, target = row sum, prediction = column sum, union = target + prediction - intersection.
Pixels whose ground truth is 255 are ignored (their prediction too); predictions outside ``0..K-1`` still count
against the ground-truth class (they are in its target and union but are no class's false positive), as in the
original's histogram-based ``intersectionAndUnion``.

mIoU follows the original convention: the mean over all K classes, classes absent from both ground truth and
prediction counting as 0 (``IoU_c = I_c / (U_c + 1e-10)``); with ``excluded`` ids (universal classes a training
dataset cannot produce) the mean is over the other classes. The mean over classes present in the ground truth is
reported as well, labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mseg_semantic.taxonomy import IGNORE_LABEL

_EPS = 1e-10


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix; ``update`` takes numpy arrays or torch tensors."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        # Column K collects predictions outside 0..K-1 (e.g. 255 after the relabeled-evaluation penalty).
        self._counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """(K, K) counts: entry [g, p] = pixels of ground-truth class g predicted as class p."""
        return self._counts[:, : self.num_classes].copy()

    @property
    def outside(self) -> np.ndarray:
        """(K,) pixels of each ground-truth class predicted as no class (e.g. a relabeled-evaluation penalty)."""
        return self._counts[:, self.num_classes].copy()

    def update(self, pred, target) -> None:
        """Add one prediction/ground-truth pair of the same shape (ground truth 255 = ignored)."""
        pred_np = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        target_np = target.cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
        if pred_np.shape != target_np.shape:
            raise ValueError(f"prediction shape {pred_np.shape} differs from ground truth shape {target_np.shape}")
        k = self.num_classes
        t = target_np.reshape(-1).astype(np.int64)
        p = pred_np.reshape(-1).astype(np.int64)
        keep = (t >= 0) & (t < k)  # 255 (and anything else outside the taxonomy) is ignored
        t, p = t[keep], p[keep]
        p = np.where((p >= 0) & (p < k), p, k)
        self._counts += np.bincount(t * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)

    def merge(self, other: ConfusionMatrix) -> None:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        self._counts += other._counts

    def state(self) -> np.ndarray:
        """The raw counts (K, K+1), e.g. to all-reduce across processes."""
        return self._counts

    def load_state(self, counts: np.ndarray) -> None:
        if counts.shape != self._counts.shape:
            raise ValueError(f"expected counts of shape {self._counts.shape}, got {counts.shape}")
        self._counts = counts.astype(np.int64, copy=True)

    def metrics(self, excluded: list[int] | tuple[int, ...] = ()) -> SegmentationMetrics:
        k = self.num_classes
        intersection = np.diag(self._counts[:, :k]).astype(np.float64)
        target = self._counts.sum(axis=1).astype(np.float64)
        predicted = self._counts[:, :k].sum(axis=0).astype(np.float64)
        union = target + predicted - intersection
        iou = intersection / (union + _EPS)
        accuracy = intersection / (target + _EPS)
        keep = np.ones(k, dtype=bool)
        keep[list(excluded)] = False
        present = keep & (target > 0)
        return SegmentationMetrics(
            iou=iou,
            accuracy=accuracy,
            present=target > 0,
            included=keep,
            mean_iou=float(iou[keep].mean()) if keep.any() else 0.0,
            mean_iou_present=float(iou[present].mean()) if present.any() else 0.0,
            mean_accuracy=float(accuracy[keep].mean()) if keep.any() else 0.0,
            pixel_accuracy=float(intersection.sum() / (target.sum() + _EPS)),
        )


@dataclass(frozen=True)
class SegmentationMetrics:
    """Fractions in [0, 1]. ``present``: the class occurs in the ground truth; ``included``: not excluded."""

    iou: np.ndarray
    accuracy: np.ndarray
    present: np.ndarray
    included: np.ndarray
    mean_iou: float
    mean_iou_present: float
    mean_accuracy: float
    pixel_accuracy: float


def intersection_and_union(pred, target, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (intersection, union, target) pixel counts of one pair, the original's per-image quantity."""
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    counts = cm.state()
    intersection = np.diag(counts[:, :num_classes])
    target_area = counts.sum(axis=1)
    union = target_area + counts[:, :num_classes].sum(axis=0) - intersection
    return intersection, union, target_area


__all__ = ["IGNORE_LABEL", "ConfusionMatrix", "SegmentationMetrics", "intersection_and_union"]
