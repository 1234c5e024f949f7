"""Class-balanced cross-entropy (``loss.class_weighting``): rare classes weigh more, for the small ones of a
small dataset (CamVid's pole, sign and bicyclist are a few percent of its pixels or less).

``enet`` is ENet's weighting (Paszke et al. 2016): ``w_c = 1 / ln(1.02 + p_c)``, with ``p_c`` class c's share of the
labelled pixels of the training split(s), in the taxonomy the model learns. We scale the weights so that a pixel
weighs 1 on average (``sum_c p_c w_c = 1``), so the loss keeps the scale of the unweighted one and the recipe's
learning rate still fits; a weight then ranges from about 0.3 (a class of a third of the pixels) to about 7 (a
class that is nearly absent). Off (``none``) by default: the original trained without weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mseg_semantic.data import LabelMapper
from mseg_semantic.distributed import all_reduce_sum
from mseg_semantic.fileio import read_label
from mseg_semantic.taxonomy import IGNORE_LABEL
from mseg_semantic.training.data import PreparedDataset

#: ENet's constant: bounds a weight by 1 / ln(1.02), about 50, before our scaling.
ENET_C = 1.02


def enet_weights(counts: np.ndarray) -> np.ndarray:
    """ENet weights of classes with these pixel counts, scaled to a mean of 1 per labelled pixel (float64)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("class weights need labelled pixels; the training labels hold none")
    share = counts / counts.sum()
    weights = 1.0 / np.log(ENET_C + share)
    return weights / float((share * weights).sum())


def label_counts(
    datasets: Sequence[PreparedDataset], target: str | None, num_classes: int, *, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Pixels of each class over every training label map, mapped to ``target`` (None: as is); 255 not counted.

    Under torchrun each process reads every ``world_size``-th file and the counts are summed over processes. The
    values are checked when the training reads the same files (values beyond ``num_classes`` are not counted here).
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    files = [(d, entry) for d in datasets for entry in d.train]
    mappers = {id(d): LabelMapper(d.config.name, target) for d in datasets}
    for dataset, entry in files[rank::world_size]:
        if entry.label is None:
            continue  # the loader names the entry when it reads it
        label = read_label(entry.label).astype(np.int64)
        mapped = mappers[id(dataset)](torch.from_numpy(label)).numpy()
        counts += np.bincount(mapped[mapped != IGNORE_LABEL].ravel(), minlength=num_classes)[:num_classes]
    return all_reduce_sum(counts)
