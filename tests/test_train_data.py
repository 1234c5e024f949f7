"""Training data: the original augmentation, label mapping after the crop, balanced multi-dataset batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from mseg_semantic.data import BalancedBatchSampler, LabelMapper, TrainTransform, read_list
from mseg_semantic.data.dataset import read_sample
from mseg_semantic.data.transforms import random_rotate
from mseg_semantic.normalization import MEAN_RGB
from mseg_semantic.resizing import resize_short_side
from mseg_semantic.taxonomy import TaxonomyConverter, class_names


@pytest.fixture(scope="module")
def camvid_sample(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    root = shared / "data" / "camvid11"
    return read_sample(read_list(root / "train.txt", root)[0], "camvid-11")


def test_train_transform_shapes_padding_and_determinism(camvid_sample):
    image, label = camvid_sample
    transform = TrainTransform(short_size=180, crop=(200, 300))
    x, y = transform(image, label, np.random.default_rng(7))
    assert x.shape == (3, 200, 300) and x.dtype == torch.float32
    assert y.shape == (200, 300) and y.dtype == torch.int64
    x2, y2 = transform(image, label, np.random.default_rng(7))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = transform(image, label, np.random.default_rng(8))
    assert not torch.equal(x, x3)
    # Scaled to half size (90x120) the image is smaller than the crop: mean padding (0 after
    # normalisation) and ignore labels around it.
    small = TrainTransform(short_size=180, crop=(101, 131), scale=(0.5, 0.5), rotate_prob=0, blur_prob=0, flip_prob=0)
    x, y = small(image, label, np.random.default_rng(0))
    frame = torch.ones_like(y, dtype=torch.bool)
    frame[5:-6, 5:-6] = False  # 90x120 centred in 101x131: 5 rows/columns before, 6 after
    assert torch.all(y[frame] == 255) and torch.all(x[:, frame].abs() < 1e-5)
    assert (y[~frame] < 11).float().mean() > 0.9


def test_resize_short_side_truncates_like_the_original():
    image = np.zeros((5, 7, 3), np.float32)
    assert resize_short_side(image, 8, truncate=True).shape == (8, 11, 3)  # 7 * 8 / 5 = 11.2
    assert resize_short_side(image.transpose(1, 0, 2), 8, truncate=True).shape == (11, 8, 3)
    wide = np.zeros((5, 8, 3), np.float32)  # 8 * 8 / 5 = 12.8
    assert resize_short_side(wide, 8, truncate=True).shape == (8, 12, 3)
    assert resize_short_side(wide, 8).shape == (8, 13, 3)  # the test-time rule rounds
    label = np.arange(35, dtype=np.uint8).reshape(5, 7)
    resized, resized_label = resize_short_side(image, 10, label, truncate=True)
    assert resized.shape == (10, 14, 3) and resized_label.shape == (10, 14)
    assert set(np.unique(resized_label)) <= set(range(35))  # nearest neighbour: no new label values


def test_rotation_pads_with_mean_and_ignore():
    image = np.full((40, 60, 3), 10, np.float32)
    label = np.zeros((40, 60), np.uint8)
    rng = np.random.default_rng(0)
    rotated, rotated_label = random_rotate(image, label, rng, (10.0, 10.0), prob=1.0)
    assert rotated_label[0, 0] == 255 and rotated_label[20, 30] == 0
    assert np.allclose(rotated[0, 0], MEAN_RGB, atol=1e-3)


def test_labels_are_mapped_after_the_crop():
    label = torch.tensor([[0, 1, 13], [255, 10, 18]])
    expected = TaxonomyConverter().to_universal(label.numpy(), "cityscapes-19")
    assert torch.equal(LabelMapper("cityscapes-19", "universal")(label), torch.from_numpy(expected).long())
    assert torch.equal(LabelMapper("camvid-11", None)(label), label)


def test_every_step_draws_equally_from_each_dataset():
    sizes = [5, 2]
    single = BalancedBatchSampler(sizes, 4, end_step=10, seed=3)
    for step in range(10):
        assert Counter(k.dataset for k in single.batch(step)) == {0: 2, 1: 2}
    # Each pass over a dataset is a permutation: the small one cycles, every image once per pass.
    stream = [single.key(1, p).index for p in range(6)]
    assert sorted(stream[:2]) == sorted(stream[2:4]) == [0, 1]
    assert sorted(single.key(0, p).index for p in range(5)) == list(range(5))
    # The global batch of a step is the same for any number of processes; only its split differs.
    for layout, expected in (("per_rank", [{0: 2}, {1: 2}]), ("mixed", [{0: 1, 1: 1}, {0: 1, 1: 1}])):
        ranks = [
            BalancedBatchSampler(sizes, 4, rank=r, world_size=2, layout=layout, seed=3, end_step=10) for r in (0, 1)
        ]
        for step in range(10):
            assert [Counter(k.dataset for k in r.batch(step)) for r in ranks] == expected
            assert sorted(ranks[0].batch(step) + ranks[1].batch(step)) == sorted(single.batch(step))
    # A resumed sampler continues the same stream.
    resumed = BalancedBatchSampler(sizes, 4, seed=3, start_step=6, end_step=10)
    assert list(resumed) == [single.batch(s) for s in range(6, 10)]
    with pytest.raises(ValueError, match="not a multiple of the 2 datasets"):
        BalancedBatchSampler(sizes, 3, end_step=1)


class _ConstantLogits(torch.nn.Module):
    """Logits that pick one class everywhere, whatever the image."""

    def __init__(self, num_classes: int, winner: int) -> None:
        super().__init__()
        self.logits = torch.zeros(1, num_classes, 1, 1)
        self.logits[0, winner] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, *x.shape[2:])


def test_naive_validation_leaves_out_what_evaluation_leaves_out(tmp_path):
    """Periodic validation and ``mseg eval`` score a naive model over the same classes, ids above 255 included.

    Mapillary's "Curb" is naive class 260: a model that predicts it on an all-curb image has IoU 1 there, and the
    mean runs over the naive classes Mapillary labels can produce, as in evaluation.
    """
    from mseg_semantic.data import ListEntry
    from mseg_semantic.evaluation import ConfusionMatrix, plan_evaluation
    from mseg_semantic.fileio import write_label
    from mseg_semantic.training import load_train_config
    from mseg_semantic.training.data import PreparedDataset
    from mseg_semantic.training.validation import validate

    dataset = "mapillary-public65"
    curb = class_names(dataset).index("Curb")
    naive_curb = int(TaxonomyConverter().lookup_table(dataset, "naive")[curb])
    assert naive_curb > 255
    image, label = tmp_path / "street.png", tmp_path / "street_label.png"
    cv2.imwrite(str(image), np.full((8, 12, 3), 90, np.uint8))
    write_label(label, np.full((8, 12), curb, np.uint8))
    _, config = load_train_config("1080_release/mseg-naive-baseline", [f"datasets=[{dataset}]", "val.short_size=8"])
    assert (config.taxonomy, config.num_classes) == ("naive", 316)
    entry = ListEntry(image, label, "val.txt:1")
    prepared = PreparedDataset(config.datasets[0], tmp_path, [entry], [entry])
    ctx = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"), distributed=False)

    got = validate(_ConstantLogits(316, naive_curb), config, [prepared], ctx)

    plan = plan_evaluation(dataset, "naive")
    expected = ConfusionMatrix(316)
    expected.update(np.full((8, 12), naive_curb), np.full((8, 12), naive_curb))
    assert got[dataset] == pytest.approx(expected.metrics(excluded=plan.excluded).mean_iou)
    assert got[dataset] == pytest.approx(1 / (316 - len(plan.excluded)))
