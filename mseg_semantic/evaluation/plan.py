"""Which taxonomy an evaluation is scored in, and how ground truth gets there (the original's four regimes).

| model taxonomy | dataset            | scored in            | ground truth            | excluded from the mean       |
|----------------|--------------------|----------------------|-------------------------|------------------------------|
| universal      | test dataset       | the test taxonomy    | as is                   | nothing (zero-shot)          |
| universal      | training dataset   | universal            | mapped to universal ids | universal classes it lacks   |
| the dataset's  | that dataset       | its own taxonomy     | as is                   | nothing (oracle)             |
| naive          | test dataset       | the test taxonomy    | as is                   | nothing (naive merge)        |
| naive          | unrelabeled train  | naive                | mapped to naive ids     | naive classes it lacks       |
| its SOURCE     | a taxonomy file    | the file's taxonomy  | as is                   | nothing (own taxonomy)       |

The last row is a taxonomy of the user's own (:mod:`mseg_semantic.taxonomy.files`): ground truth drawn in its
classes, predictions summed onto it from the model's probabilities like a test taxonomy's.

Relabeled evaluation (optional, universal models on an unrelabeled training dataset): the original compares
models trained on MSeg's relabeled data with baselines on the *unrelabeled* ground truth, using the relabeled
ground truth of the same images to decide each relabeled pixel: a prediction equal to the relabeled class counts
as correct (it becomes the unrelabeled class), any other prediction there counts as wrong (it becomes 255, a miss
that is no class's false positive); pixels the relabeling marked unlabeled are ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mseg_semantic.errors import TaxonomyError
from mseg_semantic.taxonomy import Taxonomy, get_taxonomy, taxonomy_names, unproducible_classes
from mseg_semantic.taxonomy.files import source_mismatch
from mseg_semantic.taxonomy.tables import IGNORE_LABEL, NAIVE, UNIVERSAL


@dataclass(frozen=True)
class EvaluationPlan:
    dataset: str  # the taxonomy of the ground-truth label files
    model_taxonomy: str
    eval_taxonomy: str  # the taxonomy predictions are made and scored in
    regime: str  # zero-shot | oracle | naive | universal-on-training
    excluded: tuple[int, ...]  # class ids of eval_taxonomy left out of the means
    relabeled: str | None = None  # relabeled taxonomy whose ground truth decides relabeled pixels
    file_taxonomy: Taxonomy | None = None  # the taxonomy file's, when dataset and eval_taxonomy are its name

    @property
    def eval_classes(self) -> tuple[str, ...]:
        """The class names of the evaluation taxonomy, in label order."""
        return self.file_taxonomy.classes if self.file_taxonomy else get_taxonomy(self.eval_taxonomy).classes

    @property
    def label_taxonomy(self) -> str | Taxonomy:
        """The taxonomy the ground-truth label values are checked against."""
        return self.file_taxonomy or self.dataset

    @property
    def maps_labels(self) -> bool:
        return self.eval_taxonomy != self.dataset


def plan_evaluation(dataset: str, model_taxonomy: str, relabeled: bool = False) -> EvaluationPlan:
    """The regime for a model of ``model_taxonomy`` scored on labels of ``dataset``; raises when none applies."""
    data, model = get_taxonomy(dataset), get_taxonomy(model_taxonomy)
    if relabeled:
        partner = f"{data.name}-relabeled"
        if model.name != UNIVERSAL or data.kind != "train" or partner not in taxonomy_names():
            raise TaxonomyError(
                f"relabeled evaluation needs a universal model and an unrelabeled training dataset with a relabeled "
                f"version (e.g. ade20k-150, cityscapes-19); got a {model.name!r} model on {data.name!r}"
            )
        plain = plan_evaluation(dataset, model_taxonomy)
        return dataclasses.replace(plain, regime="universal-on-training-relabeled", relabeled=partner)
    if model.name == data.name:
        return EvaluationPlan(data.name, model.name, data.name, "oracle", ())
    if model.kind in (UNIVERSAL, NAIVE) and data.kind == "test":  # a master table's taxonomy is universal too
        regime = "zero-shot" if model.kind == UNIVERSAL else "naive"
        return EvaluationPlan(data.name, model.name, data.name, regime, ())
    if model.kind in (UNIVERSAL, NAIVE) and data.kind in ("train", "raw"):
        try:
            excluded = unproducible_classes(data.name, model.name)
        except TaxonomyError:
            excluded = None  # no label map to the model's taxonomy (a raw taxonomy without one)
        if excluded is not None:
            return EvaluationPlan(data.name, model.name, model.name, f"{model.kind}-on-training", excluded)
    raise TaxonomyError(
        f"cannot score a {model.name!r} model on {data.name!r} labels: a universal or naive model is scored on test "
        f"datasets (zero-shot) or on training datasets (in its own taxonomy); an oracle model only on its own dataset"
    )


def plan_file_evaluation(taxonomy: Taxonomy, model_taxonomy: str) -> EvaluationPlan:
    """The plan for ground truth in the classes of a taxonomy file, scored in them; the model must predict the
    file's SOURCE (whose probabilities the file sums)."""
    if taxonomy.source != model_taxonomy:
        raise source_mismatch(taxonomy, model_taxonomy, "the model predicts")
    return EvaluationPlan(taxonomy.name, model_taxonomy, taxonomy.name, "own-taxonomy", (), file_taxonomy=taxonomy)


def apply_relabeled_rules(pred: np.ndarray, gt: np.ndarray, gt_relabeled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The original's relabeled-evaluation rules on universal-id maps; returns the new (prediction, ground truth)."""
    changed = gt_relabeled != gt
    correct = pred == gt_relabeled
    pred = pred.copy()
    pred[changed & correct] = gt[changed & correct]
    pred[changed & ~correct] = IGNORE_LABEL
    gt = gt.copy()
    gt[gt_relabeled == IGNORE_LABEL] = IGNORE_LABEL
    return pred, gt
