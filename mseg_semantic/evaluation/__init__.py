"""Evaluation: the original metrics, the four scoring regimes, the evaluation runner and result tables."""

from mseg_semantic.evaluation.metrics import ConfusionMatrix, SegmentationMetrics, intersection_and_union
from mseg_semantic.evaluation.plan import EvaluationPlan, plan_evaluation, plan_file_evaluation
from mseg_semantic.evaluation.runner import EvaluationResult, evaluate

__all__ = [
    "ConfusionMatrix",
    "EvaluationPlan",
    "EvaluationResult",
    "SegmentationMetrics",
    "evaluate",
    "intersection_and_union",
    "plan_evaluation",
    "plan_file_evaluation",
]
