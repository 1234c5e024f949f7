"""Which taxonomy an evaluation is scored in, and how ground truth gets there (the original's four regimes).

| model taxonomy | dataset            | scored in            | ground truth            | excluded from the mean       |
|----------------|--------------------|----------------------|-------------------------|------------------------------|
| universal      | test dataset       | the test taxonomy    | as is                   | nothing (zero-shot)          |
| universal      | training dataset   | universal            | mapped to universal ids | universal classes it lacks   |
| the dataset's  | that dataset       | its own taxonomy     | as is                   | nothing (oracle)             |
| naive          | test dataset       | the test taxonomy    | as is                   | nothing (naive merge)        |
| naive          | unrelabeled train  | naive                | mapped to naive ids     | naive classes it lacks       |
"""

from __future__ import annotations

from dataclasses import dataclass

from mseg_semantic.errors import TaxonomyError
from mseg_semantic.taxonomy import TaxonomyConverter, get_taxonomy
from mseg_semantic.taxonomy.tables import IGNORE_LABEL, NAIVE, UNIVERSAL


@dataclass(frozen=True)
class EvaluationPlan:
    dataset: str  # the taxonomy of the ground-truth label files
    model_taxonomy: str
    eval_taxonomy: str  # the taxonomy predictions are made and scored in
    regime: str  # zero-shot | oracle | naive | universal-on-training
    excluded: tuple[int, ...]  # class ids of eval_taxonomy left out of the means

    @property
    def maps_labels(self) -> bool:
        return self.eval_taxonomy != self.dataset


def plan_evaluation(dataset: str, model_taxonomy: str) -> EvaluationPlan:
    """The regime for a model of ``model_taxonomy`` scored on labels of ``dataset``; raises when none applies."""
    data, model = get_taxonomy(dataset), get_taxonomy(model_taxonomy)
    converter = TaxonomyConverter()
    if model.name == data.name:
        return EvaluationPlan(data.name, model.name, data.name, "oracle", ())
    if model.name in (UNIVERSAL, NAIVE) and data.kind == "test":
        regime = "zero-shot" if model.name == UNIVERSAL else "naive"
        return EvaluationPlan(data.name, model.name, data.name, regime, ())
    if model.name in (UNIVERSAL, NAIVE) and data.kind in ("train", "raw"):
        try:
            table = converter.lookup_table(data.name, model.name)
        except TaxonomyError:
            table = None
        if table is not None:
            reachable = {int(v) for v in table if 0 <= v != IGNORE_LABEL}
            excluded = tuple(i for i in range(model.num_classes) if i not in reachable)
            return EvaluationPlan(data.name, model.name, model.name, f"{model.name}-on-training", excluded)
    raise TaxonomyError(
        f"cannot score a {model.name!r} model on {data.name!r} labels: a universal or naive model is scored on test "
        f"datasets (zero-shot) or on training datasets (in its own taxonomy); an oracle model only on its own dataset"
    )
