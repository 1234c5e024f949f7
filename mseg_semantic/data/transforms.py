"""The original MSeg training augmentation, in its order, with an explicit random generator.

:class:`TrainTransform` applies, to an RGB image and its label map:

1. short side resized to ``short_size`` (other side truncated, as the original ``ResizeShort``);
2. random scale ``s ~ U(scale)`` (same factor for both axes);
3. with probability ``rotate_prob``, rotation by ``U(rotate)`` degrees about the centre, the image padded with the
   mean pixel and the label with 255;
4. with probability ``blur_prob``, a 5x5 Gaussian blur (sigma derived from the kernel size);
5. with probability ``flip_prob``, a horizontal flip;
6. padding to the crop size (centred; mean pixel / 255) and a uniformly random crop;
7. conversion to a normalised CHW float tensor and an int64 label tensor.

Mapping labels to the universal (or naive) taxonomy is :class:`LabelMapper`, applied after the crop as in the
original. Images are processed as float32 in 0..255 like the original (it converts right after reading), labels
with nearest-neighbour sampling so no new label value can appear.

Every random draw comes from the ``numpy.random.Generator`` passed in: the sampler derives one per drawn crop
from the run seed and the crop's position in the data stream, so a crop's augmentation does not depend on the
worker that makes it, on the number of workers or processes, or on where a resumed run restarted.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mseg_semantic.normalization import MEAN_RGB, normalize
from mseg_semantic.resizing import resize_short_side
from mseg_semantic.taxonomy import IGNORE_LABEL, TaxonomyConverter


def _label_for_opencv(label: np.ndarray) -> np.ndarray:
    # OpenCV cannot resample int64; every label value of every taxonomy fits uint16 (uint8 almost always).
    if label.dtype in (np.uint8, np.uint16):
        return label
    return label.astype(np.uint8 if label.size == 0 or label.max() <= 255 else np.uint16)


def random_scale(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]):
    """Scale both axes by one factor drawn uniformly from ``scale`` (OpenCV's rounding of ``fx``/``fy``)."""
    factor = scale[0] + (scale[1] - scale[0]) * rng.random()
    image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    return image, label


def random_rotate(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    angles: tuple[float, float],
    prob: float,
    ignore_label: int = IGNORE_LABEL,
):
    """With probability ``prob``, rotate about the centre by ``U(angles)`` degrees, keeping the size.

    Corners that come from outside the image are the mean pixel (0 after normalisation) and ``ignore_label``.
    """
    if rng.random() >= prob:
        return image, label
    angle = angles[0] + (angles[1] - angles[0]) * rng.random()
    h, w = label.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
    image = cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=MEAN_RGB
    )
    label = cv2.warpAffine(
        label, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=ignore_label
    )
    return image, label


def random_gaussian_blur(image: np.ndarray, rng: np.random.Generator, prob: float, kernel: int = 5) -> np.ndarray:
    """With probability ``prob``, a ``kernel`` x ``kernel`` Gaussian blur with OpenCV's sigma for that size."""
    if rng.random() < prob:
        image = cv2.GaussianBlur(image, (kernel, kernel), 0)
    return image


def random_hflip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, prob: float):
    """With probability ``prob``, mirror image and label left-right."""
    if rng.random() < prob:
        image, label = cv2.flip(image, 1), cv2.flip(label, 1)
    return image, label


def pad_to_size(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int], ignore_label: int = IGNORE_LABEL):
    """Pad to at least ``size`` = (h, w), centred (the odd pixel at the bottom/right), mean pixel / 255."""
    h, w = image.shape[:2]
    pad_h, pad_w = max(size[0] - h, 0), max(size[1] - w, 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    top, left = pad_h // 2, pad_w // 2
    border = (top, pad_h - top, left, pad_w - left)
    image = cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=MEAN_RGB)
    if label is not None:
        label = cv2.copyMakeBorder(label, *border, cv2.BORDER_CONSTANT, value=ignore_label)
    return image, label


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    ignore_label: int = IGNORE_LABEL,
):
    """Pad to ``size`` if smaller, then cut a ``size`` window at a uniformly random integer offset."""
    image, label = pad_to_size(image, label, size, ignore_label)
    h, w = label.shape
    top = int(rng.integers(0, h - size[0] + 1))
    left = int(rng.integers(0, w - size[1] + 1))
    return image[top : top + size[0], left : left + size[1]], label[top : top + size[0], left : left + size[1]]


def _chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> contiguous (3, H, W) tensor, for :func:`~mseg_semantic.normalization.normalize`."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


@dataclass(frozen=True)
class TrainTransform:
    """The original training augmentation (the steps in this module's docstring); call with ``(image, label, rng)``.

    ``image``: (H, W, 3) RGB uint8 or float; ``label``: (H, W) integer label map. Returns a normalised
    (3, crop_h, crop_w) float32 tensor and a (crop_h, crop_w) int64 tensor (labels not yet mapped).
    """

    short_size: int
    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: tuple[float, float] = (-10.0, 10.0)
    rotate_prob: float = 0.5
    blur_prob: float = 0.5
    flip_prob: float = 0.5
    ignore_label: int = IGNORE_LABEL

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.astype(np.float32, copy=False)
        label = _label_for_opencv(label)
        image, label = resize_short_side(image, self.short_size, label, truncate=True)  # the original ResizeShort
        image, label = random_scale(image, label, rng, self.scale)
        image, label = random_rotate(image, label, rng, self.rotate, self.rotate_prob, self.ignore_label)
        image = random_gaussian_blur(image, rng, self.blur_prob)
        image, label = random_hflip(image, label, rng, self.flip_prob)
        image, label = random_crop(image, label, rng, self.crop, self.ignore_label)
        return normalize(_chw_tensor(image)), torch.from_numpy(label.astype(np.int64))


def eval_transform(image: np.ndarray, short_size: int | None) -> torch.Tensor:
    """A whole image for validation: short side resized to ``short_size`` (None: as is), normalised CHW tensor."""
    image = image.astype(np.float32, copy=False)
    if short_size is not None:
        image = resize_short_side(image, short_size, truncate=True)
    return normalize(_chw_tensor(image))


class LabelMapper:
    """Labels of one dataset's taxonomy -> the taxonomy the model is trained in (a lookup table; 255 stays 255).

    ``target`` is ``"universal"``, ``"naive"`` or None (the dataset's own labels, unchanged). Values that are no
    class of the source taxonomy become 255; they cannot occur because :class:`SegmentationDataset` checks every
    label map it reads against its taxonomy.
    """

    def __init__(self, source: str, target: str | None) -> None:
        self.source, self.target = source, target
        if target is None:
            self._table = None
        else:
            table = TaxonomyConverter().lookup_table(source, target)
            self._table = torch.from_numpy(np.where(table < 0, IGNORE_LABEL, table).astype(np.int64))

    def __call__(self, label: torch.Tensor) -> torch.Tensor:
        if self._table is None:
            return label
        if label.numel() and int(label.max()) >= len(self._table):
            raise ValueError(f"label value {int(label.max())} is outside the {self.source} lookup table")
        return self._table[label]
