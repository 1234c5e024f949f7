"""The original MSeg test-time algorithm written out literally: the reference the faithful path is checked against.

This is the original ``inference_task.py`` (``execute_on_img``, ``scale_process_cuda``, ``net_process``) as
plainly as it can be written, with nothing of :mod:`mseg_semantic.inference` but the two steps the package has one
owner for (:func:`~mseg_semantic.resizing.resize_short_side`, :func:`~mseg_semantic.normalization.normalize`).
Per scale: resize the short side to ``round(scale * base_size)``, pad with the mean pixel (centred, the odd pixel
at the bottom/right) to the crop, slide crops with stride ``ceil(2/3 crop)``, the last one aligned to the far edge.
Each crop runs through the model, then its horizontal flip in a second forward; logits of another size are resized
to the crop (bilinear, ``align_corners=True``), turned into probabilities (softmax, then the linear map onto a test
taxonomy when given) and the flip's flipped back and averaged in. Windows are summed into a full-size float64
accumulator and divided by a count map, the padding is cut off, the map is resized back to the image (OpenCV
``INTER_LINEAR``) and the scales are averaged.

It is not meant to be fast (one forward per crop and per flip, float64 maps of every class at full resolution) and
the package never calls it: the tests check :class:`~mseg_semantic.inference.Segmenter` against it (labels
identical, probabilities within 1e-5) and ``benchmarks/inference.py`` times it as the straightforward path. The
batched variant (one window per image, ``batched_*`` presets) is not covered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mseg_semantic.normalization import MEAN_RGB, normalize
from mseg_semantic.resizing import resize_short_side

STRIDE_RATE = 2 / 3


def reference_predict_proba(
    model: nn.Module,
    image: np.ndarray,
    base_size: int,
    scales: Sequence[float],
    crop_size: int | tuple[int, int],
    projection: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """(C, H, W) float64 probabilities of an (H, W, 3) uint8 RGB image; ``model`` is in eval mode.

    ``crop_size``: ``crop`` or ``(crop_h, crop_w)``. ``projection``: a (C, K) matrix onto a test taxonomy (summing
    the model's K probabilities), or None for the model's own K classes.
    """
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    h, w = image.shape[:2]
    total = None
    for scale in scales:
        resized = resize_short_side(image.astype(np.float32), round(scale * base_size))
        new_h, new_w = resized.shape[:2]
        pad_h, pad_w = max(crop_h - new_h, 0), max(crop_w - new_w, 0)
        top, left = int(pad_h / 2), int(pad_w / 2)
        padded = cv2.copyMakeBorder(resized, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=MEAN_RGB)
        ph, pw = padded.shape[:2]
        stride_h, stride_w = math.ceil(crop_h * STRIDE_RATE), math.ceil(crop_w * STRIDE_RATE)
        acc, count = None, np.zeros((ph, pw), np.float64)
        for gy in range(math.ceil((ph - crop_h) / stride_h) + 1):
            for gx in range(math.ceil((pw - crop_w) / stride_w) + 1):
                y1, x1 = min(gy * stride_h + crop_h, ph), min(gx * stride_w + crop_w, pw)
                y0, x0 = y1 - crop_h, x1 - crop_w
                crop = normalize(torch.from_numpy(np.ascontiguousarray(padded[y0:y1, x0:x1].transpose(2, 0, 1))))
                flipped = _probabilities(model, crop.flip(-1), projection).flip(-1)
                window = ((_probabilities(model, crop, projection) + flipped) / 2).double().cpu().numpy()
                acc = np.zeros((len(window), ph, pw), np.float64) if acc is None else acc
                acc[:, y0:y1, x0:x1] += window
                count[y0:y1, x0:x1] += 1
        assert acc is not None
        per_scale = (acc / count)[:, top : top + new_h, left : left + new_w]
        back = _resize_channels(per_scale, h, w)
        total = back if total is None else total + back
    assert total is not None
    return total / len(scales)


def reference_predict(
    model: nn.Module,
    image: np.ndarray,
    base_size: int,
    scales: Sequence[float],
    crop_size: int | tuple[int, int],
    projection: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """(H, W) label map: the argmax of :func:`reference_predict_proba`, uint8 (uint16 beyond 256 classes)."""
    probs = reference_predict_proba(model, image, base_size, scales, crop_size, projection)
    return probs.argmax(0).astype(np.uint8 if len(probs) <= 256 else np.uint16)


@torch.no_grad()
def _probabilities(model: nn.Module, crop: torch.Tensor, projection: np.ndarray | torch.Tensor | None) -> torch.Tensor:
    """(C, h, w) probabilities of one normalised (3, h, w) crop."""
    weight = next(model.parameters(), None)
    device = torch.device("cpu") if weight is None else weight.device
    logits = model(crop[None].to(device))
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    if logits.shape[-2:] != crop.shape[-2:]:
        logits = F.interpolate(logits, size=crop.shape[-2:], mode="bilinear", align_corners=True)
    probs = logits.softmax(dim=1)[0]
    if projection is not None:
        probs = torch.einsum("tc,chw->thw", torch.as_tensor(projection, dtype=probs.dtype, device=device), probs)
    return probs


def _resize_channels(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV ``INTER_LINEAR`` of (C, h', w') maps to (C, h, w), 4 channels at a time (its exact 1-4 channel path)."""
    out = []
    for c in range(0, len(maps), 4):
        block = np.ascontiguousarray(maps[c : c + 4].transpose(1, 2, 0))
        out.append(cv2.resize(block, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1).transpose(2, 0, 1))
    return np.concatenate(out)
