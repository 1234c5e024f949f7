"""The original MSeg test-time algorithm, as one object that the demo and the evaluation both call.

Per scale: resize the short side to ``round(scale * base_size)``, pad with the mean pixel to the crop size,
slide ``crop`` windows with stride ``ceil(2/3 crop)``; each window runs with its horizontal flip, logits are
resized to the window (bilinear, align_corners=True) when the model returns another size, turned into
probabilities (softmax, then the linear map onto a test taxonomy when asked), and flip-averaged;
overlapping windows are averaged, the padding cut off. Per-scale maps are resized back to the image
(bilinear, half-pixel centres as OpenCV) and averaged over scales; the label map is their argmax.

Memory stays bounded: per-scale maps are kept at their own resolution and combined into the output in bands
of rows, so no full-resolution (C, H, W) buffer exists unless :meth:`Segmenter.predict_proba` asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.inference.config import InferenceConfig, load_config
from mseg_semantic.inference.geometry import (
    max_base_size,
    pad_to_crop,
    resize_rows,
    resize_short_side,
    truncated_short_side_size,
    window_starts,
)
from mseg_semantic.inference.images import as_rgb_array
from mseg_semantic.normalization import MEAN_RGB, STD_RGB
from mseg_semantic.taxonomy import TaxonomyConverter, get_taxonomy
from mseg_semantic.taxonomy.tables import NAIVE, UNIVERSAL

_BAND_BYTES = 64 * 2**20  # size of one band of output rows while combining scales


class Segmenter:
    """Predict semantic label maps (and probabilities) for RGB images with the original MSeg algorithm.

    Args:
        model: a segmentation ``nn.Module`` returning logits (N, K, h, w), or a checkpoint path / model name
            (loaded with :func:`mseg_semantic.models.load_model`).
        config: a preset name (``360_ss``, ``360_ms``, ``720_ss``, ``720_ms``, ``1080_ss``, ``1080_ms``,
            ``batched_480``, ``batched_720``, ``batched_1080``), a YAML path, or an :class:`InferenceConfig`.
        model_taxonomy: the taxonomy of the model's K outputs: ``universal`` (194), ``naive`` (316) or a dataset
            taxonomy (oracle models).
        output_taxonomy: the taxonomy of the results; default: the model's. A universal or naive model can
            output any test taxonomy (probabilities are summed onto it before averaging).
        device: where the model runs (``"cpu"``, ``"cuda"``, ...).
        **overrides: any :class:`InferenceConfig` value (``base_size``, ``scales``, ``crop_size``, ``flip``, ...).
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        config: str | os.PathLike | InferenceConfig = "360_ms",
        model_taxonomy: str = UNIVERSAL,
        output_taxonomy: str | None = None,
        device: str | torch.device = "cpu",
        **overrides: Any,
    ) -> None:
        self.config = load_config(config, **overrides)
        self.device = torch.device(device)
        if not isinstance(model, nn.Module):
            from mseg_semantic.models import load_model

            model = load_model(model, device=self.device)
        self.model = model.to(self.device).eval()
        self.model_taxonomy = get_taxonomy(model_taxonomy).name
        self.output_taxonomy = get_taxonomy(output_taxonomy or model_taxonomy).name
        self.num_model_classes = get_taxonomy(self.model_taxonomy).num_classes
        declared = getattr(self.model, "num_classes", None)
        if isinstance(declared, int) and declared != self.num_model_classes:
            raise TaxonomyError(
                f"the model has {declared} output classes but taxonomy {self.model_taxonomy!r} has "
                f"{self.num_model_classes}; pass the model's taxonomy (e.g. --model-taxonomy)"
            )
        self._projection: torch.Tensor | None = None
        if self.output_taxonomy != self.model_taxonomy:
            if self.model_taxonomy not in (UNIVERSAL, NAIVE):
                raise TaxonomyError(
                    f"a {self.model_taxonomy!r} model can only output its own taxonomy; universal and naive models "
                    f"can output a test taxonomy"
                )
            matrix = TaxonomyConverter().universal_to_test_matrix(self.output_taxonomy, source=self.model_taxonomy)
            self._projection = torch.from_numpy(matrix).to(self.device)
        self.class_names: list[str] = list(get_taxonomy(self.output_taxonomy).classes)
        self._mean = torch.tensor(MEAN_RGB, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(STD_RGB, dtype=torch.float32, device=self.device).view(3, 1, 1)

    @property
    def num_classes(self) -> int:
        """Number of classes of the output taxonomy (channels of :meth:`predict_proba`)."""
        return len(self.class_names)

    @property
    def label_dtype(self) -> type:
        return np.uint8 if self.num_classes <= 256 else np.uint16

    # ------------------------------------------------------------------ public API
    def predict(self, image: Any) -> np.ndarray:
        """(H, W) label map at the input resolution, uint8 (uint16 for taxonomies with more than 256 classes)."""
        rgb = as_rgb_array(image)
        maps = self._scale_maps(rgb)
        h, w = rgb.shape[:2]
        labels = np.empty((h, w), dtype=self.label_dtype)

        def sink(r0: int, r1: int, band: torch.Tensor) -> None:
            labels[r0:r1] = band.argmax(dim=0).to(torch.int32).cpu().numpy()

        self._combine(maps, h, w, sink)
        return labels

    def predict_proba(self, image: Any) -> np.ndarray:
        """(C, H, W) float32 class probabilities at the input resolution (the label map is their argmax)."""
        rgb = as_rgb_array(image)
        maps = self._scale_maps(rgb)
        h, w = rgb.shape[:2]
        probs = np.empty((self.num_classes, h, w), dtype=np.float32)

        def sink(r0: int, r1: int, band: torch.Tensor) -> None:
            probs[:, r0:r1] = band.cpu().numpy()

        self._combine(maps, h, w, sink)
        return probs

    __call__ = predict

    # ------------------------------------------------------------------ the algorithm
    @torch.inference_mode()
    def _scale_maps(self, rgb: np.ndarray) -> list[torch.Tensor]:
        """Per-scale probability maps (C, h_s, w_s), each the size of the image resized for that scale."""
        image = rgb.astype(np.float32)
        cfg = self.config
        if cfg.batched:
            return [self._batched_map(image)]
        maps = []
        for scale in cfg.scales:
            resized = resize_short_side(image, round(scale * cfg.base_size))
            maps.append(self._sliding_window_map(resized))
        return maps

    def _sliding_window_map(self, image: np.ndarray) -> torch.Tensor:
        cfg = self.config
        h, w = image.shape[:2]
        padded, top, left = pad_to_crop(image, cfg.crop_h, cfg.crop_w)
        new_h, new_w = padded.shape[:2]
        acc = torch.zeros((self.num_classes, new_h, new_w), dtype=torch.float32, device=self.device)
        count = torch.zeros((new_h, new_w), dtype=torch.float32, device=self.device)
        for y in window_starts(new_h, cfg.crop_h):
            for x in window_starts(new_w, cfg.crop_w):
                crop = padded[y : y + cfg.crop_h, x : x + cfg.crop_w]
                acc[:, y : y + cfg.crop_h, x : x + cfg.crop_w] += self._window_probs(crop)
                count[y : y + cfg.crop_h, x : x + cfg.crop_w] += 1
        acc /= count
        return acc[:, top : top + h, left : left + w]

    def _window_probs(self, crop: np.ndarray) -> torch.Tensor:
        """Probabilities (C, h, w) of one window, averaged with its flipped copy when ``flip`` is on."""
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).to(self.device)
        x = (x - self._mean) / self._std
        batch = torch.stack([x, x.flip(2)]) if self.config.flip else x[None]
        probs = self._probs(batch, crop.shape[:2])
        if self.config.flip:
            return (probs[0] + probs[1].flip(2)) / 2
        return probs[0]

    def _probs(self, batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Model logits -> probabilities in the output taxonomy, at ``size``."""
        logits = self.model(batch)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.shape[1] != self.num_model_classes:
            raise TaxonomyError(
                f"the model outputs {logits.shape[1]} classes but taxonomy {self.model_taxonomy!r} has "
                f"{self.num_model_classes}"
            )
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        probs = logits.float().softmax(dim=1)
        if self._projection is not None:
            probs = torch.einsum("tc,nchw->nthw", self._projection, probs)
        return probs

    def _batched_map(self, image: np.ndarray) -> torch.Tensor:
        """The original batched variant: the whole image in one padded crop, one forward with its flip."""
        import cv2

        cfg = self.config
        h, w = image.shape[:2]
        base = max_base_size(h, w, min(cfg.crop_h, cfg.crop_w))
        if base < 1:
            raise InputError(f"image of size {w}x{h} is too elongated for a {cfg.crop_w}x{cfg.crop_h} crop")
        new_h, new_w = truncated_short_side_size(h, w, base)
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        padded, top, left = pad_to_crop(resized, cfg.crop_h, cfg.crop_w)
        probs = self._window_probs(padded)[:, top : top + new_h, left : left + new_w]
        # The original resizes the batched result with align_corners=True; return it at the native size.
        return F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=True)[0]

    @torch.inference_mode()
    def _combine(
        self, maps: list[torch.Tensor], h: int, w: int, sink: Callable[[int, int, torch.Tensor], None]
    ) -> None:
        """Mean over scales of the maps resized to (h, w), handed to ``sink`` one band of rows at a time."""
        rows = max(1, _BAND_BYTES // (4 * self.num_classes * w * 2))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            acc = None
            for m in maps:
                band = m[:, r0:r1] if m.shape[-2:] == (h, w) else resize_rows(m, h, w, r0, r1)
                acc = band.clone() if acc is None else acc.add_(band)
            assert acc is not None
            acc /= len(maps)
            sink(r0, r1, acc)
