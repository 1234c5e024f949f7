"""Training data: the original augmentation and the options beyond it, label mapping after the crop, balanced
multi-dataset batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from mseg_semantic.configs import ConfigError
from mseg_semantic.data import BalancedBatchSampler, LabelMapper, TrainTransform, degradations, read_list
from mseg_semantic.data.dataset import read_sample
from mseg_semantic.data.transforms import (
    ColorJitter,
    Haze,
    HoodOcclusion,
    JpegArtefacts,
    Perspective,
    _label_for_opencv,
    random_crop,
    random_gaussian_blur,
    random_hflip,
    random_rotate,
    random_scale,
)
from mseg_semantic.normalization import MEAN_RGB, STD_RGB, normalize
from mseg_semantic.resizing import resize_short_side
from mseg_semantic.taxonomy import TaxonomyConverter, class_names
from mseg_semantic.training import load_train_config
from mseg_semantic.training.data import train_transform


@pytest.fixture(scope="module")
def camvid_sample(camvid11: Path) -> tuple[np.ndarray, np.ndarray]:
    root = camvid11
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


def _original_pipeline(transform: TrainTransform, image, label, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """The original augmentation written out from its steps, as it was before the options beyond it existed."""
    image = image.astype(np.float32)
    image, label = resize_short_side(image, transform.short_size, _label_for_opencv(label), truncate=True)
    image, label = random_scale(image, label, rng, transform.scale)
    image, label = random_rotate(image, label, rng, transform.rotate, transform.rotate_prob)
    image = random_gaussian_blur(image, rng, transform.blur_prob)
    image, label = random_hflip(image, label, rng, transform.flip_prob)
    image, label = random_crop(image, label, rng, transform.crop)
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return normalize(chw), torch.from_numpy(label.astype(np.int64))


def test_options_off_give_the_original_augmentation_bit_for_bit(camvid_sample):
    image, label = camvid_sample
    _, release = load_train_config("480_release/mseg-3m", ["transform.crop=[353, 353]"])
    for transform in (TrainTransform(short_size=360, crop=(360, 480)), train_transform(release)):
        assert transform.extras_on == []
        for seed in range(6):
            x, y = transform(image, label, np.random.default_rng(seed))
            want_x, want_y = _original_pipeline(transform, image, label, np.random.default_rng(seed))
            assert torch.equal(x, want_x) and torch.equal(y, want_y)


#: Every option beyond the original on, each with probability 1 (hood and perspective: see the tests below).
ALL_ON = {
    "blur_kernel": (3, 9),
    "color": ColorJitter(1.0, (0.5, 1.4), (0.6, 1.4), (0.5, 1.5), (-10, 10), (0.85, 1.15), (0.8, 1.6)),
    "grayscale_prob": 0.5,
    "haze": Haze(1.0, (0.1, 0.6)),
    "jpeg": JpegArtefacts(1.0, (15, 75)),
}


@pytest.mark.parametrize(
    "option",
    [
        {"color": ColorJitter(1.0, brightness=(0.5, 0.7))},
        {"color": ColorJitter(1.0, hue=(20, 30), gains=(0.8, 1.2))},
        {"grayscale_prob": 1.0},
        {"haze": Haze(1.0, strength=(0.4, 0.5))},
        {"jpeg": JpegArtefacts(1.0, quality=(5, 10))},
        {"blur_kernel": (9, 11), "blur_prob": 1.0},
        ALL_ON,
    ],
    ids=["brightness", "hue-gains", "grayscale", "haze", "jpeg", "blur_kernel", "all"],
)
def test_photometric_options_change_the_image_and_never_the_labels(camvid_sample, option):
    image, label = camvid_sample
    base = {"short_size": 360, "crop": (360, 480), "blur_prob": option.get("blur_prob", 0.5)}
    original, extended = TrainTransform(**base), TrainTransform(**{**base, **option})
    for seed in range(3):
        x, y = original(image, label, np.random.default_rng(seed))
        x2, y2 = extended(image, label, np.random.default_rng(seed))
        assert torch.equal(y, y2)  # same geometry: the options draw from child generators, labels untouched
        assert (x - x2).abs().mean() > 0.01  # about 0.6 gray levels on average
        again = extended(image, label, np.random.default_rng(seed))
        assert torch.equal(x2, again[0]) and torch.equal(y2, again[1])  # reproducible per seed


def test_grayscale_makes_the_three_channels_equal(camvid_sample):
    image, label = camvid_sample
    flat = {"short_size": 360, "crop": (360, 480), "scale": (1.0, 1.0), "rotate_prob": 0}  # no mean padding
    gray, _ = TrainTransform(**flat, grayscale_prob=1.0)(image, label, np.random.default_rng(0))
    rgb = gray * torch.tensor(STD_RGB).view(3, 1, 1) + torch.tensor(MEAN_RGB).view(3, 1, 1)
    assert (rgb[0] - rgb[1]).abs().max() < 1e-3 and (rgb[1] - rgb[2]).abs().max() < 1e-3


def test_each_option_draws_its_own_numbers(camvid_sample):
    """An option that is on but changes nothing (haze of strength 0) leaves every other draw as it was."""
    image, label = camvid_sample
    base = {"short_size": 360, "crop": (360, 480), **ALL_ON}
    without = TrainTransform(**{**base, "haze": Haze()})
    with_nothing = TrainTransform(**{**base, "haze": Haze(1.0, strength=(0.0, 0.0))})
    for seed in range(3):
        x, y = without(image, label, np.random.default_rng(seed))
        x2, y2 = with_nothing(image, label, np.random.default_rng(seed))
        assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = with_nothing(image, label, np.random.default_rng(99))
    assert not torch.equal(x, x3)


def test_hood_covers_the_bottom_of_the_frame_and_its_labels_become_ignore(camvid_sample):
    image, label = camvid_sample
    hood = HoodOcclusion(1.0, height=(0.2, 0.2), bend=(0.05, 0.05), shade=(10, 10))
    occluded, occluded_label = hood(image, label.astype(np.uint8), np.random.default_rng(0))
    mask = degradations.hood_mask(360, 480, 0.2, 0.05)
    assert mask[-1].all() and not mask[: 360 - 73].any()  # the band: 72 rows in the middle, 54 at the borders
    assert mask[:, 240].sum() == 72 and mask[:, 0].sum() == 54
    assert np.all(occluded[mask] == 10) and np.all(occluded_label[mask] == 255)
    assert np.array_equal(occluded[~mask], image[~mask]) and np.array_equal(occluded_label[~mask], label[~mask])
    # In the whole augmentation (no scaling, rotation or flip, so the crop is the frame): the same band, ignored.
    flat = {"short_size": 360, "crop": (360, 480), "scale": (1.0, 1.0), "rotate_prob": 0, "blur_prob": 0}
    _, y = TrainTransform(**flat, flip_prob=0, hood=hood)(image, label, np.random.default_rng(0))
    assert torch.all(y[torch.from_numpy(mask)] == 255)
    assert torch.equal(y[torch.from_numpy(~mask)], torch.from_numpy(label[~mask]))


def test_perspective_warps_image_and_labels_together(camvid_sample):
    image, label = camvid_sample
    flat = {"short_size": 360, "crop": (360, 480), "scale": (1.0, 1.0), "rotate_prob": 0, "blur_prob": 0}
    x0, y0 = TrainTransform(**flat)(image, label, np.random.default_rng(3))
    x, y = TrainTransform(**flat, perspective=Perspective(1.0, 0.1))(image, label, np.random.default_rng(3))
    assert not torch.equal(y, y0) and set(torch.unique(y).tolist()) <= set(np.unique(label).tolist()) | {255}
    # What came from outside the frame is mean-padded (0 after normalisation) in the image and ignored in the label.
    padded = (x.abs() < 1e-5).all(dim=0)
    assert padded.sum() > 1000 and torch.all(y[padded] == 255) and (y == 255).sum() > (y0 == 255).sum()
    still, _ = TrainTransform(**flat, perspective=Perspective(1.0, 0.0))(image, label, np.random.default_rng(3))
    assert (still - x0).abs().max() < 1e-3  # no distortion: the same frame


def test_degradations_do_what_they_say():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    assert np.array_equal(degradations.adjust_color(image), image)
    half = degradations.adjust_color(image, brightness=0.5)
    assert np.abs(half.astype(int) - np.rint(image * 0.5)).max() <= 1
    flat = degradations.adjust_color(image, contrast=0.0)
    assert np.ptp(flat) == 0  # every pixel the mean gray
    gray = degradations.adjust_color(image, saturation=0.0)
    assert np.abs(gray.astype(int) - degradations.to_grayscale(image)).max() <= 1
    turned = degradations.adjust_color(image, hue=120.0)  # a third of a turn about the gray axis: R->G->B->R
    assert np.abs(turned.astype(int) - image[:, :, [2, 0, 1]]).max() <= 1
    cast = degradations.adjust_color(image, gains=(1.0, 1.0, 0.5))
    assert np.array_equal(cast[..., :2], image[..., :2]) and cast[..., 2].mean() < 0.55 * image[..., 2].mean()
    dark = degradations.adjust_color(image, gamma=2.0)
    assert np.all(dark <= image) and dark.mean() < 0.75 * image.mean()
    fog = degradations.add_haze(image, 0.5, 200.0)
    assert np.abs(fog.astype(float) - (0.5 * image + 100)).max() <= 0.5 + 1e-6
    assert np.all(degradations.add_haze(image, 1.0, 200.0) == 200)
    smooth = cv2.GaussianBlur(image, (0, 0), 6)
    errors = [np.abs(degradations.jpeg_compress(smooth, q).astype(int) - smooth).mean() for q in (5, 30, 95)]
    assert errors[0] > errors[1] > errors[2] > 0
    noisy = degradations.gaussian_noise(smooth, 8.0, np.random.default_rng(1))
    assert 6 < (noisy.astype(float) - smooth).std() < 9
    assert np.array_equal(noisy, degradations.gaussian_noise(smooth, 8.0, np.random.default_rng(1)))
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255
    assert np.ptp(degradations.motion_blur(stripes, 8, 0.0)[:, 8:-8]) < 40  # blurred along x: stripes averaged
    assert np.array_equal(degradations.motion_blur(stripes, 8, 90.0), stripes)  # along y: vertical stripes stay
    for function in (lambda im: degradations.adjust_color(im, brightness=2), lambda im: degradations.add_haze(im, 1)):
        copy = image.copy()
        function(copy)
        assert np.array_equal(copy, image)  # the input is left alone


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Haze(prob=1.5), r"key 'prob': must lie in \[0, 1\], got 1.5"),
        (lambda: ColorJitter(brightness=(1.4, 0.6)), r"key 'brightness': must be \[min, max\] with min <= max"),
        (lambda: ColorJitter(gamma=(0, 1)), r"key 'gamma': .* both in \(0, inf\), got \[0, 1\]"),
        (lambda: JpegArtefacts(quality=(0, 50)), r"key 'quality': .* both in \[1, 100\], got \[0, 50\]"),
        (lambda: HoodOcclusion(height=(0.0, 0.95)), r"key 'height': .* both in \[0, 0.9\]"),
        (lambda: Perspective(distortion=0.5), r"key 'distortion': must lie in \[0, 0.5\), got 0.5"),
    ],
)
def test_options_built_in_python_are_checked_too(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


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
    assert (config.taxonomy.mode, config.num_classes) == ("naive", 316)
    entry = ListEntry(image, label, "val.txt:1")
    prepared = PreparedDataset(config.datasets[0], tmp_path, [entry], [entry])
    ctx = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"), distributed=False)

    got = validate(_ConstantLogits(316, naive_curb), config, [prepared], ctx)

    plan = plan_evaluation(dataset, "naive")
    expected = ConfusionMatrix(316)
    expected.update(np.full((8, 12), naive_curb), np.full((8, 12), naive_curb))
    assert got[dataset] == pytest.approx(expected.metrics(excluded=plan.excluded).mean_iou)
    assert got[dataset] == pytest.approx(1 / (316 - len(plan.excluded)))
