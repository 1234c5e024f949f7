"""What cameras and weather do to a street photo, as deterministic functions of an RGB uint8 image.

The training augmentation (:class:`~mseg_semantic.data.TrainTransform`) draws their parameters at random; the
robustness benchmark (``benchmarks/robustness.py``) applies them at fixed severities. Both call these functions, so
"fog" or "JPEG" means the same operation in training and in the benchmark.

Every function takes an (H, W, 3) uint8 RGB array and returns a new one (the input is left alone); the work is done
by OpenCV and NumPy on whole arrays (a 480x360 image takes about a millisecond per operation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

#: Rec. 601 luma weights of R, G and B (those of OpenCV's RGB -> gray).
LUMA = np.array([0.299, 0.587, 0.114])


def _affine(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray | float = 0.0) -> np.ndarray:
    """``matrix @ rgb + offset`` at every pixel, rounded and clipped to uint8 (one OpenCV pass)."""
    full = np.empty((3, 4), np.float32)
    full[:, :3] = matrix
    full[:, 3] = offset
    return cv2.transform(image, full)


def _hue_rotation(degrees: float) -> np.ndarray:
    """The 3x3 rotation of RGB space by ``degrees`` about the gray axis (grays stay gray; hues turn)."""
    theta = math.radians(degrees)
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return math.cos(theta) * np.eye(3) + math.sin(theta) * cross + (1 - math.cos(theta)) * np.outer(k, k)


def adjust_color(
    image: np.ndarray,
    *,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.0,
    gains: Sequence[float] = (1.0, 1.0, 1.0),
    gamma: float = 1.0,
) -> np.ndarray:
    """A camera's colour and exposure: one affine map of RGB (rounded and clipped once), then a gamma curve.

    In this order: ``gains`` (per-channel R, G, B factors: a white-balance error or colour cast), ``brightness``
    (a factor on every channel), ``contrast`` (the distance from the image's mean luma scaled by it),
    ``saturation`` (the distance from each pixel's luma scaled by it; 0 is gray), ``hue`` (a rotation by that many
    degrees about the gray axis), then ``gamma``: ``255 * (x / 255) ** gamma`` (above 1 darkens the mid-tones,
    as an under-exposed frame). All neutral: an unchanged copy.
    """
    out = image
    if (brightness, contrast, saturation, hue, tuple(gains)) != (1.0, 1.0, 1.0, 0.0, (1.0, 1.0, 1.0)):
        matrix = brightness * np.diag(np.asarray(gains, np.float64))
        mean_luma = float(LUMA @ matrix @ np.asarray(cv2.mean(image)[:3]))  # the mean after gains and brightness
        saturate = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), LUMA)
        matrix = _hue_rotation(hue) @ saturate @ (contrast * matrix)
        # Contrast pulls towards the mean gray, which saturation and the hue rotation leave as it is.
        out = _affine(image, matrix, (1 - contrast) * mean_luma)
    if gamma != 1.0:
        table = np.clip(np.rint(255 * (np.arange(256) / 255) ** gamma), 0, 255).astype(np.uint8)
        out = cv2.LUT(out, table)
    return out.copy() if out is image else out


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """The luma in all three channels (a monochrome camera, or a frame that lost its colour)."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def add_haze(image: np.ndarray, strength: float, airlight: float = 220.0) -> np.ndarray:
    """Fog or haze: ``(1 - strength) * image + strength * airlight``, a blend toward a light gray.

    The atmospheric scattering model ``I = J t + A (1 - t)`` with one transmission ``t = 1 - strength`` for the
    whole frame (no depth map): 0 is clear air, 1 a wall of gray ``airlight`` (0..255).
    """
    return _affine(image, (1 - strength) * np.eye(3), strength * airlight)


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """The image after a JPEG round trip at ``quality`` (1..100; low values give 8x8 blocks and colour bleeding)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # JPEG's chroma is computed from BGR in OpenCV
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding of a {image.shape} image failed")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: independent Gaussian noise of standard deviation ``sigma`` (in 0..255 units) on every value."""
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def motion_blur(image: np.ndarray, length: int, angle: float = 0.0) -> np.ndarray:
    """Camera shake: the average along a line of ``length`` pixels at ``angle`` degrees (0 is horizontal)."""
    if length <= 1:
        return image.copy()
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    centre = ((length - 1) / 2, (length - 1) / 2)
    kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D(centre, angle, 1.0), (length, length))
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def hood_mask(height: int, width: int, fraction: float, bend: float = 0.0) -> np.ndarray:
    """(height, width) bool: the part of a dashcam frame a car's hood covers.

    A band at the bottom whose top edge lies ``fraction`` of the frame height above the bottom in the middle column
    and drops by ``bend`` (a fraction of the height) towards the left and right borders along a parabola (0: a
    straight edge).
    """
    x = (np.arange(width) + 0.5) * (2.0 / width) - 1.0  # pixel centres, -1 (left border) .. 1 (right border)
    top = height * (1.0 - fraction + bend * x**2)  # the band's top edge, per column
    return (np.arange(height) + 0.5)[:, None] >= top[None, :]


def occlude_hood(
    image: np.ndarray,
    label: np.ndarray | None,
    fraction: float,
    bend: float = 0.0,
    shade: float = 30.0,
    ignore_label: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The frame with a dark hood at the bottom (:func:`hood_mask`; gray level ``shade``), its labels ignored there.

    The hood is no class of any taxonomy, so its pixels become ``ignore_label``: the loss neither rewards nor
    punishes what the model says there, it only learns to label the rest of the frame with the bottom covered.
    """
    mask = hood_mask(image.shape[0], image.shape[1], fraction, bend)
    image = image.copy()
    image[mask] = round(shade)
    if label is not None:
        label = label.copy()
        label[mask] = ignore_label
    return image, label
