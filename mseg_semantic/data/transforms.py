"""The original MSeg training augmentation, in its order, with an explicit random generator, and optional extras.

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

Options beyond the original, all off by default, when some of them are on:

- after step 1, on the frame as uint8 RGB, in the order a scene reaches a file: ``haze`` (fog), ``hood`` (a dark
  car hood across the bottom, its labels set to 255), ``color`` (gains, brightness, contrast, saturation, hue,
  gamma), ``grayscale_prob``, ``jpeg`` (re-compression); the operations are those of
  :mod:`mseg_semantic.data.degradations`;
- after step 3, ``perspective``: a random perspective warp (mean / 255 where the frame runs out);
- in step 4, ``blur_kernel``: the blur's kernel size drawn from a range of odd sizes instead of 5.

Only the hood touches labels. Every random draw comes from the ``numpy.random.Generator`` passed in: the sampler
derives one per drawn crop from the run seed and the crop's position in the data stream, so a crop's augmentation
does not depend on the worker that makes it, on the number of workers or processes, or on where a resumed run
restarted. The options draw from child generators spawned from it (``rng.spawn``, one per option), which leaves
the parent's stream as it was: turning an option on or off changes nothing else, the original steps' draws
included, and with every option off the output is the original's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from mseg_semantic.configs import check
from mseg_semantic.data import degradations
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


def random_blur_kernel(rng: np.random.Generator, sizes: tuple[int, int]) -> int:
    """An odd kernel size drawn uniformly from the odd sizes in ``sizes`` = [min, max] (both odd)."""
    return sizes[0] + 2 * int(rng.integers(0, (sizes[1] - sizes[0]) // 2 + 1))


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


# ---------------------------------------------------------------------------------------------- optional extras
# Each is a section of the training config's ``transform`` (``transform.haze.prob``); the defaults are off. The
# checks raise ConfigError naming the key inside the section; the config reader prefixes ``transform.<section>``.
def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * rng.random())


def _check_prob(value: float, key: str = "prob") -> None:
    check(0.0 <= value <= 1.0, key, f"must lie in [0, 1], got {value}")


def _check_range(bounds: Sequence[float], key: str, low: float, high: float | None = None, *, open_low=False) -> None:
    """``bounds`` is ``[min, max]`` with ``low <= min <= max <= high`` (``low < min`` with ``open_low``)."""
    values = list(bounds)
    above = values[0] > low if open_low else values[0] >= low
    within = above and values[0] <= values[1] and (high is None or values[1] <= high)
    limits = f"{'(' if open_low else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
    check(within, key, f"must be [min, max] with min <= max, both in {limits}, got {values}")


@dataclass(frozen=True)
class ColorJitter:
    """With probability ``prob``, colour and exposure drawn uniformly from each range, applied by
    :func:`~mseg_semantic.data.degradations.adjust_color` (a value of 1, or 0 for ``hue``, changes nothing)."""

    prob: float = 0.0
    brightness: tuple[float, float] = (1.0, 1.0)  # factor on every channel
    contrast: tuple[float, float] = (1.0, 1.0)  # factor on the distance from the mean luma
    saturation: tuple[float, float] = (1.0, 1.0)  # factor on the distance from the pixel's luma (0: gray)
    hue: tuple[float, float] = (0.0, 0.0)  # degrees of rotation about the gray axis
    gains: tuple[float, float] = (1.0, 1.0)  # per-channel factor, drawn for R, G and B apart: a colour cast
    gamma: tuple[float, float] = (1.0, 1.0)  # exponent of the tone curve (> 1 darkens the mid-tones)

    def __post_init__(self) -> None:
        _check_prob(self.prob)
        for key in ("brightness", "gains", "gamma"):
            _check_range(getattr(self, key), key, 0.0, open_low=True)
        for key in ("contrast", "saturation"):
            _check_range(getattr(self, key), key, 0.0)
        _check_range(self.hue, "hue", -180.0, 180.0)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return image
        return degradations.adjust_color(
            image,
            brightness=_uniform(rng, self.brightness),
            contrast=_uniform(rng, self.contrast),
            saturation=_uniform(rng, self.saturation),
            hue=_uniform(rng, self.hue),
            gains=[_uniform(rng, self.gains) for _ in range(3)],
            gamma=_uniform(rng, self.gamma),
        )


@dataclass(frozen=True)
class Haze:
    """With probability ``prob``, fog: a blend toward a light gray
    (:func:`~mseg_semantic.data.degradations.add_haze`) of weight ``U(strength)`` and gray level ``U(airlight)``."""

    prob: float = 0.0
    strength: tuple[float, float] = (0.1, 0.5)  # 0: clear, 1: nothing but fog
    airlight: tuple[float, float] = (190.0, 240.0)  # gray level of the fog, 0..255

    def __post_init__(self) -> None:
        _check_prob(self.prob)
        _check_range(self.strength, "strength", 0.0, 1.0)
        _check_range(self.airlight, "airlight", 0.0, 255.0)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return image
        return degradations.add_haze(image, _uniform(rng, self.strength), _uniform(rng, self.airlight))


@dataclass(frozen=True)
class JpegArtefacts:
    """With probability ``prob``, a JPEG round trip at a quality drawn uniformly from the integers in ``quality``
    (:func:`~mseg_semantic.data.degradations.jpeg_compress`)."""

    prob: float = 0.0
    quality: tuple[int, int] = (20, 80)  # 1..100

    def __post_init__(self) -> None:
        _check_prob(self.prob)
        _check_range(self.quality, "quality", 1, 100)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return image
        return degradations.jpeg_compress(image, int(rng.integers(self.quality[0], self.quality[1] + 1)))


@dataclass(frozen=True)
class HoodOcclusion:
    """With probability ``prob``, a car's hood across the bottom of the frame, as a dashcam sees it
    (:func:`~mseg_semantic.data.degradations.occlude_hood`): a band ``U(height)`` of the frame height tall in the
    middle, its top edge dropping by ``U(bend)`` of the height towards the sides (0: straight), of the dark gray
    ``U(shade)``. Its label pixels become the ignore label: the hood is no class, so the loss leaves it out."""

    prob: float = 0.0
    height: tuple[float, float] = (0.0, 0.2)  # fraction of the frame height, in the middle column
    bend: tuple[float, float] = (0.0, 0.1)  # fraction of the frame height the edge drops at the borders
    shade: tuple[float, float] = (0.0, 60.0)  # gray level, 0..255

    def __post_init__(self) -> None:
        _check_prob(self.prob)
        _check_range(self.height, "height", 0.0, 0.9)
        _check_range(self.bend, "bend", 0.0, 1.0)
        _check_range(self.shade, "shade", 0.0, 255.0)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator, ignore_label: int = IGNORE_LABEL
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() >= self.prob:
            return image, label
        fraction, bend, shade = (_uniform(rng, r) for r in (self.height, self.bend, self.shade))
        occluded, occluded_label = degradations.occlude_hood(image, label, fraction, bend, shade, ignore_label)
        assert occluded_label is not None
        return occluded, occluded_label


@dataclass(frozen=True)
class Perspective:
    """With probability ``prob``, a perspective warp moving each frame corner by up to ``distortion`` of the width
    and height (independently in x and y): other camera heights and pitches than the training camera's."""

    prob: float = 0.0
    distortion: float = 0.1  # largest corner shift, fraction of the side

    def __post_init__(self) -> None:
        _check_prob(self.prob)
        check(0.0 <= self.distortion < 0.5, "distortion", f"must lie in [0, 0.5), got {self.distortion}")

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator, ignore_label: int = IGNORE_LABEL
    ) -> tuple[np.ndarray, np.ndarray]:
        """The warped image and label, same size; what comes from outside the frame is the mean pixel and
        ``ignore_label``, as for a rotation."""
        if rng.random() >= self.prob:
            return image, label
        h, w = label.shape
        corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
        shift = rng.uniform(-self.distortion, self.distortion, (4, 2)) * (w - 1, h - 1)
        matrix = cv2.getPerspectiveTransform(corners, (corners + shift).astype(np.float32))
        image = cv2.warpPerspective(
            image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=MEAN_RGB
        )
        label = cv2.warpPerspective(
            label, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=ignore_label
        )
        return image, label


#: The options beyond the original, in the order their child generators are spawned (do not reorder: the order
#: decides which child each option gets, so reordering changes a run's augmentation).
EXTRA_OPTIONS = ("haze", "hood", "color", "grayscale", "jpeg", "perspective", "blur_kernel")


def _chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> contiguous (3, H, W) tensor, for :func:`~mseg_semantic.normalization.normalize`."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """What the training augmentation does, and how often: SPEC 4.6's steps and the options beyond them.

    The one declaration of these settings: a training config's ``transform`` section is read into it
    (``TransformConfig``), and :class:`TrainTransform` is it plus the void label. The defaults are the MSeg release's
    (1080p, 713x713 crops); the options from ``blur_kernel`` on are off, so a config that does not name them
    trains as the original did. The sections (``color``, ``haze``, ...) check their own values.
    """

    short_size: int = 1080
    crop: tuple[int, int] = (713, 713)  # (height, width); one number means a square
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: tuple[float, float] = (-10.0, 10.0)
    rotate_prob: float = 0.5
    blur_prob: float = 0.5
    flip_prob: float = 0.5
    blur_kernel: tuple[int, int] = (5, 5)  # [min, max] odd kernel sizes of the blur (the original: 5)
    color: ColorJitter = field(default_factory=ColorJitter)
    grayscale_prob: float = 0.0
    haze: Haze = field(default_factory=Haze)
    jpeg: JpegArtefacts = field(default_factory=JpegArtefacts)
    hood: HoodOcclusion = field(default_factory=HoodOcclusion)
    perspective: Perspective = field(default_factory=Perspective)

    @property
    def extras_on(self) -> list[str]:
        """The options beyond the original that can change a crop (names of :data:`EXTRA_OPTIONS`)."""
        probs = {
            "haze": self.haze.prob, "hood": self.hood.prob, "color": self.color.prob,
            "grayscale": self.grayscale_prob, "jpeg": self.jpeg.prob, "perspective": self.perspective.prob,
            "blur_kernel": float(self.blur_kernel[0] != self.blur_kernel[1] or self.blur_kernel[0] != 5),
        }  # fmt: skip
        return [name for name in EXTRA_OPTIONS if probs[name] > 0]


@dataclass(frozen=True, kw_only=True)
class TrainTransform(Augmentation):
    """The training augmentation (the steps in this module's docstring); call with ``(image, label, rng)``.

    Built from :class:`Augmentation`'s settings (keywords only), e.g. ``TrainTransform(short_size=360,
    crop=(360, 480))`` or :func:`mseg_semantic.training.data.train_transform` from a config. ``image``: (H, W, 3)
    RGB uint8 or float; ``label``: (H, W) integer label map. Returns a normalised (3, crop_h, crop_w) float32 tensor
    and a (crop_h, crop_w) int64 tensor (labels not yet mapped).
    """

    ignore_label: int = IGNORE_LABEL

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = image.astype(np.float32, copy=False)
        label = _label_for_opencv(label)
        image, label = resize_short_side(image, self.short_size, label, truncate=True)  # the original ResizeShort
        extras = self.extras_on
        # Spawned only when an option is on; spawning leaves rng's own stream, which the original steps draw, as is.
        child = dict(zip(EXTRA_OPTIONS, rng.spawn(len(EXTRA_OPTIONS)), strict=True)) if extras else {}
        if {"haze", "hood", "color", "grayscale", "jpeg"} & set(extras):
            image, label = self._camera(image, label, child)
        image, label = random_scale(image, label, rng, self.scale)
        image, label = random_rotate(image, label, rng, self.rotate, self.rotate_prob, self.ignore_label)
        if "perspective" in extras:
            image, label = self.perspective(image, label, child["perspective"], self.ignore_label)
        kernel = random_blur_kernel(child["blur_kernel"], self.blur_kernel) if "blur_kernel" in extras else 5
        image = random_gaussian_blur(image, rng, self.blur_prob, kernel)
        image, label = random_hflip(image, label, rng, self.flip_prob)
        image, label = random_crop(image, label, rng, self.crop, self.ignore_label)
        return normalize(_chw_tensor(image)), torch.from_numpy(label.astype(np.int64))

    def _camera(
        self, image: np.ndarray, label: np.ndarray, child: dict[str, np.random.Generator]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fog, hood, colour, grayscale and JPEG on the frame as uint8 RGB, in the order a scene reaches a file:
        the fog lies between the camera and the street, not over the hood just in front of it; the camera's colour
        and JPEG apply to the hood as to the rest."""
        frame = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        frame = self.haze(frame, child["haze"])
        frame, label = self.hood(frame, label, child["hood"], self.ignore_label)
        frame = self.color(frame, child["color"])
        if child["grayscale"].random() < self.grayscale_prob:
            frame = degradations.to_grayscale(frame)
        frame = self.jpeg(frame, child["jpeg"])
        return frame.astype(np.float32), label


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
