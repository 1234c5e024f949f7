"""Class-balanced cross-entropy (``loss.class_weighting: enet``): the weights, the counts they come from, the loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_run import CITYSCAPES, remapped_dataset, tiny_config

from mseg_semantic.configs import ConfigError
from mseg_semantic.data import LabelMapper
from mseg_semantic.fileio import read_label
from mseg_semantic.training import config_from_dict, load_train_config
from mseg_semantic.training.class_weights import ENET_C, enet_weights, label_counts
from mseg_semantic.training.data import prepare_datasets
from mseg_semantic.training.objectives import CrossEntropy


@pytest.fixture(scope="module")
def camvid(camvid11):
    return camvid11


def test_enet_weights_follow_the_formula_and_average_one_per_pixel():
    counts = np.array([600, 300, 90, 10, 0])
    weights = enet_weights(counts)
    share = counts / counts.sum()
    raw = 1 / np.log(ENET_C + share)
    assert weights == pytest.approx(raw / (share * raw).sum(), rel=1e-12)
    assert (share * weights).sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(weights) > 0)  # rarer, heavier; an absent class gets the largest weight
    assert weights[-1] == pytest.approx(weights[0] * math.log(ENET_C + 0.6) / math.log(ENET_C), rel=1e-12)
    with pytest.raises(ValueError, match="no"):
        enet_weights(np.zeros(3))


def test_counts_are_the_mapped_labels_of_every_training_file(camvid, tmp_path):
    """Counted in the model's taxonomy (cityscapes-19 labels mapped to the universal one), void not counted."""
    train = remapped_dataset(camvid, tmp_path, "cityscapes-19", CITYSCAPES, 3)
    config = tiny_config(camvid, train, taxonomy="universal", max_iters=1)
    config["datasets"] = [{"name": "cityscapes-19", "root": "/", "train_list": str(train)}]
    datasets = prepare_datasets(config_from_dict(config))
    mapper = LabelMapper("cityscapes-19", "universal")
    expected = np.zeros(194, dtype=np.int64)
    for entry in datasets[0].train:
        label = mapper(torch.from_numpy(read_label(entry.label).astype(np.int64))).numpy()
        expected += np.bincount(label[label != 255], minlength=194)
    assert (expected > 0).sum() >= 5
    assert label_counts(datasets, "universal", 194).tolist() == expected.tolist()
    # A process's share: every world_size-th file (summed over processes by all_reduce_sum under torchrun).
    parts = [label_counts(datasets, "universal", 194, rank=r, world_size=2) for r in (0, 1)]
    assert (parts[0] + parts[1]).tolist() == expected.tolist() and parts[1].sum() > 0


def test_weighted_loss_scales_each_pixel_by_its_class_weight():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, 0] = 255
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    weighted = CrossEntropy(aux_weight=0.4, class_weights=weights)((logits, aux), labels)
    plain = CrossEntropy(aux_weight=0.4)((logits, aux), labels)
    valid = weighted.counted
    scale = torch.where(valid, weights[labels.clamp(max=3)], torch.zeros(()))
    assert torch.allclose(weighted.pixel, plain.pixel * scale)
    assert weighted.loss == pytest.approx(float((plain.pixel * scale).sum() / valid.sum()), rel=1e-6)
    aux_pixel = F.cross_entropy(aux, labels, ignore_index=255, reduction="none") * scale
    assert weighted.total == pytest.approx(float(weighted.loss + 0.4 * aux_pixel.sum() / valid.sum()), rel=1e-6)
    # Unweighted: the original's losses (aux as a plain mean), untouched by the option.
    assert plain.total == pytest.approx(float(plain.loss + 0.4 * F.cross_entropy(aux, labels, ignore_index=255)))


def test_the_option_is_off_by_default_and_checked():
    _, config = load_train_config("camvid11")
    assert config.loss.class_weighting == "none"
    with pytest.raises(ConfigError, match=r"class_weighting.*one of none, enet"):
        load_train_config("camvid11", ["loss.class_weighting=median"])
