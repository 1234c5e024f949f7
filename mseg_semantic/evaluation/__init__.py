"""Evaluation: confusion matrices and the original mIoU conventions."""

from mseg_semantic.evaluation.metrics import ConfusionMatrix, SegmentationMetrics, intersection_and_union

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "intersection_and_union"]
