"""The original MSeg test-time algorithm, as one object that the demo and the evaluation both call.

Per scale: resize the short side to ``round(scale * base_size)``, pad with the mean pixel to the crop size,
slide ``crop`` windows with stride ``ceil(2/3 crop)``; each window runs with its horizontal flip, logits are
resized to the window (bilinear, align_corners=True) when the model returns another size, turned into
probabilities (softmax, then the linear map onto a test taxonomy when asked), and flip-averaged;
overlapping windows are averaged, the padding cut off. Per-scale maps are resized back to the image
(bilinear, half-pixel centres as OpenCV) and averaged over scales; the label map is their argmax.

How it is computed (same numbers, less work and memory): windows of all scales (and of several images with
:meth:`Segmenter.predict_batch`) are batched into forward passes; HRNet stops before its final upsample and only
the image part of each window is upsampled (:mod:`.network`); per-scale maps are never stored at full resolution
but evaluated lazily in bands of rows from the windows' outputs (:mod:`.windows`) while the scales are combined.
The speed-ups that do change the numbers (precision, minimal padding, low-resolution head, ...) are settings of
:class:`InferenceConfig`, off by default; ``fast=True`` turns them all on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.inference.config import InferenceConfig, load_config
from mseg_semantic.inference.geometry import max_base_size, resize_rows, source_rows
from mseg_semantic.inference.images import as_rgb_array
from mseg_semantic.inference.network import Network
from mseg_semantic.inference.runtimes import RuntimeNetwork, calibration_images, resolve_backend, runtime_network
from mseg_semantic.inference.windows import ScaleMap, WindowGrid, WindowOutput, window_grid, window_output
from mseg_semantic.normalization import normalize
from mseg_semantic.presets import preset_for
from mseg_semantic.resizing import scaled_short_side_size, truncated_short_side_size
from mseg_semantic.taxonomy import Taxonomy, TaxonomyConverter, get_taxonomy, resolve_taxonomy
from mseg_semantic.taxonomy.files import FILE_KIND, source_mismatch
from mseg_semantic.taxonomy.tables import NAIVE, UNIVERSAL

_BAND_BYTES = 64 * 2**20  # size of one band of output rows while combining scales
#: How many windows (flips included) int8 calibration runs at most.
CALIBRATION_WINDOWS = 64


@dataclass
class _Job:
    """One resized image of one input: its windows are cut from ``canvas`` (normalised, padded)."""

    image: int
    grid: WindowGrid
    image_data: np.ndarray | None
    canvas: torch.Tensor | None = None
    outputs: list[WindowOutput] = field(default_factory=list)


@dataclass
class Prediction:
    """What :meth:`Segmenter.predict_outputs` gives for one image; the arrays not asked for are None."""

    labels: np.ndarray  # (H, W) uint8/uint16, as predict()
    confidence: np.ndarray | None = None  # (H, W) float32: the probability of each pixel's label
    probs: np.ndarray | None = None  # (H, W, C) float16, or (H, W, k) with top-k: the k largest, descending
    ids: np.ndarray | None = None  # with top-k: (H, W, k) the classes of those probabilities


MAX_ELONGATION = 25
"""The longest an image's long side may be, in multiples of its short side. A preset scales the short side to its
base size, so a 20-pixel-wide strip 20,000 pixels long would become 360,000 x 360: refused with its size named."""


class Segmenter:
    """Predict semantic label maps (and probabilities) for RGB images with the original MSeg algorithm.

    Two lines from an image to labels::

        from mseg_semantic import Segmenter
        labels = Segmenter().predict("street.jpg")   # the bundled CamVid-11 model; Segmenter("mseg-3m") for MSeg

    Args:
        model_or_name: a segmentation ``nn.Module`` returning logits (N, K, h, w); a zoo name or a checkpoint path,
            loaded with :func:`mseg_semantic.load_model`; or None: the model that ships with the package
            (``camvid11-compact``).
        config: a preset name (``360_ss``, ``360_ms``, ``720_ss``, ``720_ms``, ``1080_ss``, ``1080_ms``,
            ``batched_480``, ``batched_720``, ``batched_1080``, ``compact_360_ss``), a YAML path, or an
            :class:`InferenceConfig`; default: the model's recommended preset (``model.preset``, set by
            :func:`~mseg_semantic.load_model`), else :data:`~mseg_semantic.presets.DEFAULT_PRESET`.
        model_taxonomy: the taxonomy of the model's K outputs: ``universal`` (194), ``naive`` (316) or a dataset
            taxonomy (oracle models); default: the one the model carries (``model.taxonomy``), else ``universal``.
        output_taxonomy: the taxonomy of the results; default: the model's. A universal or naive model can
            output any test taxonomy (probabilities are summed onto it before averaging). Also a taxonomy file of
            your own, or the :class:`~mseg_semantic.taxonomy.Taxonomy` read from one
            (:func:`~mseg_semantic.taxonomy.load_taxonomy_file`), whose SOURCE is the model's taxonomy: its rows
            sum the model's probabilities the same way (docs/taxonomies.md).
        device: where the model runs (``"cpu"``, ``"cuda"``, ...).
        fast: turn on every speed-up of :data:`mseg_semantic.inference.config.FAST` (label maps agree with the
            faithful ones on >= 99% of pixels, not exactly); explicit keywords below still win.
        **overrides: any :class:`InferenceConfig` value: the algorithm's (``base_size``, ``scales``, ``crop_size``,
            ``flip``, ...) and the speed-ups' (``precision``, ``pad``, ``head``, ``batch_windows``,
            ``channels_last``, ``backend``, ``compile``, ``calibration``).
        log: where one-time notices go (exporting the network for a runtime backend, int8 calibration);
            default: none.
    """

    def __init__(
        self,
        model_or_name: nn.Module | str | os.PathLike | None = None,
        config: str | os.PathLike | InferenceConfig | None = None,
        model_taxonomy: str | None = None,
        output_taxonomy: str | os.PathLike | Taxonomy | None = None,
        device: str | torch.device = "cpu",
        fast: bool = False,
        log: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        # A preset given is checked before a model is loaded (or downloaded).
        chosen = None if config is None else load_config(config, fast=fast, **overrides)
        self.device = torch.device(device)
        if isinstance(model_or_name, nn.Module):
            model = model_or_name
        else:
            from mseg_semantic.zoo import load_model

            model = load_model(model_or_name, device=self.device)
        self.config = chosen if chosen is not None else load_config(preset_for(model), fast=fast, **overrides)
        model = model.to(self.device).eval()
        self._set_taxonomies(model, model_taxonomy, output_taxonomy)
        #: What runs the network and in which arithmetic (``auto`` resolved for this device and installation).
        self.backend, self.precision = resolve_backend(self.config.backend, self.config.precision, self.device, model)
        if self.config.compile and self.backend != "torch":
            raise InputError(f"compile=True compiles PyTorch's network; backend {self.backend!r} compiles its own")
        # The Segmenter keeps no reference of its own to ``model``: with a low-precision copy or a runtime, an fp32
        # model it loaded itself (or that the caller drops) is freed.
        self.network: Network | RuntimeNetwork = self._network(model, log)

    def _set_taxonomies(
        self, model: nn.Module, model_taxonomy: str | None, output_taxonomy: str | os.PathLike | Taxonomy | None
    ) -> None:
        """The taxonomies of the model's outputs and of the results, checked against the model's class count, and
        the projection from the one onto the other when they differ."""
        carried = getattr(model, "taxonomy", None)
        self.model_taxonomy = get_taxonomy(model_taxonomy or carried or UNIVERSAL).name
        #: The taxonomy of the results (a built-in one, or one read from a taxonomy file).
        self.taxonomy: Taxonomy = resolve_taxonomy(output_taxonomy or self.model_taxonomy)
        self.output_taxonomy = self.taxonomy.name
        #: The colours of a taxonomy file's ``# palette:`` (None: the fixed palette).
        self.colors = self.taxonomy.colors if self.taxonomy.kind == FILE_KIND else None
        self.num_model_classes = get_taxonomy(self.model_taxonomy).num_classes
        declared = getattr(model, "num_classes", None)
        if isinstance(declared, int) and declared != self.num_model_classes:
            assumed = "" if model_taxonomy or carried else " (the default for a model that carries no taxonomy)"
            raise TaxonomyError(
                f"the model has {declared} output classes but taxonomy {self.model_taxonomy!r} has "
                f"{self.num_model_classes}{assumed}; pass the model's taxonomy: Segmenter(..., model_taxonomy=T) or "
                "load_model(..., taxonomy=T) (the command line: --model-taxonomy)"
            )
        self._projection: torch.Tensor | None = None
        if self.taxonomy.kind == FILE_KIND:
            if self.taxonomy.source != self.model_taxonomy:
                raise source_mismatch(self.taxonomy, self.model_taxonomy, "the model predicts")
            self._projection = torch.from_numpy(TaxonomyConverter().universal_to_test_matrix(self.taxonomy))
            self._projection = self._projection.to(self.device)
        elif self.output_taxonomy != self.model_taxonomy:
            if get_taxonomy(self.model_taxonomy).kind not in (UNIVERSAL, NAIVE):  # a master table's is universal too
                raise TaxonomyError(
                    f"a {self.model_taxonomy!r} model can only output its own taxonomy; universal and naive models "
                    f"can output a test taxonomy"
                )
            matrix = TaxonomyConverter().universal_to_test_matrix(self.output_taxonomy, source=self.model_taxonomy)
            self._projection = torch.from_numpy(matrix).to(self.device)
        self.class_names: list[str] = list(self.taxonomy.classes)

    def _network(self, model: nn.Module, log: Callable[[str], None] | None) -> Network | RuntimeNetwork:
        """What runs ``model``'s forward pass: PyTorch, or a runtime on the model's exported (cached) file."""
        if self.backend == "torch":
            return Network(model, self.device, self.precision, self.config.channels_last, compile=self.config.compile)
        images, key = calibration_images(self.config.calibration)
        return runtime_network(
            model,
            self.backend,
            self.precision,
            crop=(self.config.crop_h, self.config.crop_w),
            calibration=lambda: self.calibration_windows(images()),
            calibration_key=self._windows_key(key),
            log=log,
        )

    @property
    def model(self) -> nn.Module | None:
        """The module that runs: the model, or the low-precision copy of it (``precision="bf16"``); None when a
        runtime backend (``onnxruntime``, ``openvino``) runs the network."""
        return self.network.module

    @property
    def num_classes(self) -> int:
        """Number of classes of the output taxonomy (channels of :meth:`predict_proba`)."""
        return len(self.class_names)

    @property
    def label_dtype(self) -> type:
        return np.uint8 if self.num_classes <= 256 else np.uint16

    # ------------------------------------------------------------------ public API
    def predict(self, image: Any, return_confidence: bool = False) -> Any:
        """(H, W) label map at the input resolution, uint8 (uint16 for taxonomies with more than 256 classes).

        With ``return_confidence``: ``(labels, confidence)``, the confidence being the (H, W) float32 probability of
        each pixel's label (the maximum of :meth:`predict_proba`), from the same pass over the network.
        """
        if not return_confidence:
            return self.predict_batch([image])[0]
        result = self.predict_outputs([image], confidence=True)[0]
        return result.labels, result.confidence

    def predict_batch(self, images: Sequence[Any]) -> list[np.ndarray]:
        """:meth:`predict` for several images, their windows sharing forward passes (``batch_windows`` at a time).

        The label maps are those :meth:`predict` gives each image (up to the rounding of batched convolutions).
        """
        return [result.labels for result in self.predict_outputs(images)]

    def predict_outputs(
        self, images: Sequence[Any], *, confidence: bool = False, probs: bool = False, topk: int | None = None
    ) -> list[Prediction]:
        """Labels and, from the same forward passes, what else is asked for each image (a :class:`Prediction`).

        ``confidence``: each pixel's maximum probability (float32). ``probs``: the averaged probabilities in the
        output taxonomy as (H, W, C) float16, or with ``topk=k`` the ``k`` most likely classes per pixel, most likely
        first: ``probs`` (H, W, k) float16 and ``ids`` (H, W, k) uint8/uint16. Every value is the one
        :meth:`predict_proba` gives (rounded to float16 for ``probs``); the labels are :meth:`predict`'s.
        """
        if topk is not None and not 1 <= topk <= self.num_classes:
            raise InputError(
                f"top-k must lie in 1..{self.num_classes} (the classes of {self.output_taxonomy}), got {topk}"
            )
        rgbs = [as_rgb_array(image) for image in images]
        results = []
        for rgb, maps in zip(rgbs, self._scale_maps(rgbs), strict=True):
            h, w = rgb.shape[:2]
            result = Prediction(np.empty((h, w), dtype=self.label_dtype))
            if not (probs and topk is None) and all(m.has_candidates for m in maps):
                sink = self._outputs_sink(result, h, w, confidence, probs, topk)
                self._combine_candidates(maps, h, w, sink, top=topk if probs and topk else 1)
            else:
                self._combine(maps, h, w, self._outputs_sink(result, h, w, confidence, probs, topk))
            results.append(result)
        return results

    def _outputs_sink(
        self, result: Prediction, h: int, w: int, confidence: bool, probs: bool, topk: int | None
    ) -> Callable[[int, int, torch.Tensor], None]:
        """The band sink of :meth:`_combine` that fills ``result``'s arrays (allocated here) from each band of rows."""
        if confidence:
            result.confidence = np.empty((h, w), dtype=np.float32)
        if probs:
            channels = self.num_classes if topk is None else topk
            result.probs = np.empty((h, w, channels), dtype=np.float16)
            if topk is not None:
                result.ids = np.empty((h, w, topk), dtype=self.label_dtype)

        def sink(r0: int, r1: int, band: torch.Tensor, classes: torch.Tensor | None = None) -> None:
            """Rows r0:r1 from ``band``: all classes, or only those of ``classes`` (ascending), when the band is
            known to hold the top ``topk`` (or 1) classes of every pixel."""
            index = band.argmax(dim=0)
            result.labels[r0:r1] = (index if classes is None else classes[index]).to(torch.int32).cpu().numpy()
            if result.confidence is not None:
                result.confidence[r0:r1] = band.gather(0, index[None])[0].cpu().numpy()
            if result.probs is not None and result.ids is not None:
                values, ids = band.topk(result.ids.shape[2], dim=0)
                result.probs[r0:r1] = values.permute(1, 2, 0).to(torch.float16).cpu().numpy()
                ids = ids if classes is None else classes[ids]
                result.ids[r0:r1] = ids.permute(1, 2, 0).to(torch.int32).cpu().numpy()
            elif result.probs is not None:
                result.probs[r0:r1] = band.permute(1, 2, 0).to(torch.float16).cpu().numpy()

        return sink

    def predict_proba(self, image: Any) -> np.ndarray:
        """(C, H, W) float32 class probabilities at the input resolution (the label map is their argmax)."""
        rgb = as_rgb_array(image)
        maps = self._scale_maps([rgb])[0]
        h, w = rgb.shape[:2]
        probs = np.empty((self.num_classes, h, w), dtype=np.float32)

        def sink(r0: int, r1: int, band: torch.Tensor) -> None:
            probs[:, r0:r1] = band.cpu().numpy()

        self._combine(maps, h, w, sink)
        return probs

    __call__ = predict

    def _windows_key(self, images: str) -> str:
        """What decides the calibration windows: the images and the settings that cut them."""
        c = self.config
        return f"{images}; base {c.base_size}, scales {list(c.scales)}, flip {c.flip}, pad {c.pad}, batched {c.batched}"

    def calibration_windows(self, images: Iterable[Any], limit: int = CALIBRATION_WINDOWS) -> Iterator[np.ndarray]:
        """The network inputs these images give under this Segmenter's settings, as float32 (1, 3, h, w) arrays:
        every window of every scale, with its flip; at most ``limit``, taken evenly from each image's windows."""
        images = list(images)
        per_image = max(1, limit // max(1, len(images)))
        passes = (False, True) if self.config.flip else (False,)
        count = 0
        for image in images:
            jobs = [_Job(0, grid, resized) for resized, grid in self._resized_images(as_rgb_array(image))]
            inputs = [(job, y, x, f) for job in jobs for y, x in job.grid.windows() for f in passes]
            step = max(1, len(inputs) // per_image)
            for job, y, x, flipped in inputs[::step][:per_image]:
                if count == limit:
                    return
                yield self._crop(job, y, x, flipped)[None].float().cpu().numpy()
                count += 1

    # ------------------------------------------------------------------ the algorithm
    def window_grids(self, height: int, width: int) -> list[WindowGrid]:
        """The windows an ``height`` x ``width`` image is cut into, one grid per scale (each window is one forward
        pass, two with ``flip``)."""
        return [grid for _, grid in self._scale_sizes(height, width)]

    def _scale_sizes(self, h: int, w: int) -> list[tuple[tuple[int, int], WindowGrid]]:
        """Each scale's resized image size and windows."""
        cfg = self.config
        if cfg.batched:
            base = max_base_size(h, w, min(cfg.crop_h, cfg.crop_w))
            if base < 1:
                raise InputError(f"image of size {w}x{h} is too elongated for a {cfg.crop_w}x{cfg.crop_h} crop")
            sizes = [truncated_short_side_size(h, w, base)]
        else:
            assert cfg.base_size is not None
            sizes = [scaled_short_side_size(h, w, round(scale * cfg.base_size)) for scale in cfg.scales]
        for new_h, new_w in sizes:
            if max(new_h, new_w) > MAX_ELONGATION * min(new_h, new_w):
                raise InputError(
                    f"image of size {w}x{h} is more than {MAX_ELONGATION} times longer than it is wide: the preset "
                    f"would resize it to {new_w}x{new_h} (minutes and gigabytes); crop or split it first"
                )
        return [
            (size, window_grid(size[0], size[1], cfg.crop_h, cfg.crop_w, cfg.pad, cfg.max_window)) for size in sizes
        ]

    def _resized_images(self, rgb: np.ndarray) -> list[tuple[np.ndarray, WindowGrid]]:
        """Each scale's resized float32 image (OpenCV INTER_LINEAR, as the original) and its windows."""
        image = rgb.astype(np.float32)
        out = []
        for (new_h, new_w), grid in self._scale_sizes(*image.shape[:2]):
            resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            out.append((resized, grid))
        return out

    def _canvas(self, resized: np.ndarray, grid: WindowGrid) -> torch.Tensor:
        """The normalised image padded to the windows; the padding is 0, i.e. the mean pixel as the original."""
        x = normalize(torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(self.device))
        canvas = torch.zeros((3, *grid.canvas), dtype=torch.float32, device=self.device)
        canvas[:, grid.pad_top : grid.pad_top + grid.height, grid.pad_left : grid.pad_left + grid.width] = x
        return canvas

    @torch.inference_mode()
    def _scale_maps(self, rgbs: list[np.ndarray]) -> list[list[ScaleMap]]:
        """Per image, the per-scale probability maps, every window of every image run in shared batches.

        A forward pass takes ``batch_windows`` windows, each with its flipped copy. On a CPU a single window and its
        flip run as two passes: convolutions are no faster in pairs there, and the activations take half the memory.
        """
        jobs = [
            _Job(index, grid, resized) for index, rgb in enumerate(rgbs) for resized, grid in self._resized_images(rgb)
        ]
        passes = (False, True) if self.config.flip else (False,)
        per_forward = self.config.batch_windows * len(passes)
        if self.config.batch_windows == 1 and self.device.type == "cpu":
            per_forward = 1
        inputs = [(job, y, x, flipped) for job in jobs for y, x in job.grid.windows() for flipped in passes]
        by_shape: dict[tuple[int, int], list[tuple[_Job, int, int, bool]]] = {}
        for entry in inputs:
            by_shape.setdefault((entry[0].grid.win_h, entry[0].grid.win_w), []).append(entry)
        for group in by_shape.values():
            pending: list[torch.Tensor] = []
            for start in range(0, len(group), per_forward):
                chunk = group[start : start + per_forward]
                logits = self.network(torch.stack([self._crop(job, y, x, flipped) for job, y, x, flipped in chunk]))
                if logits.shape[1] != self.num_model_classes:
                    raise TaxonomyError(
                        f"the model outputs {logits.shape[1]} classes but taxonomy {self.model_taxonomy!r} has "
                        f"{self.num_model_classes}"
                    )
                for (job, y, x, _), out in zip(chunk, logits, strict=True):
                    pending.append(out)
                    if len(pending) == len(passes):  # a window and its flip are complete, in window order
                        job.outputs.append(self._window_output(torch.stack(pending), job.grid, y, x))
                        pending = []
                        if len(job.outputs) == len(job.grid.ys) * len(job.grid.xs):
                            job.canvas = job.image_data = None  # its last window is done
        maps: list[list[ScaleMap]] = [[] for _ in rgbs]
        for job in jobs:
            maps[job.image].append(ScaleMap(job.grid, job.outputs, self.num_classes, self._to_probs))
        return maps

    def _crop(self, job: _Job, y: int, x: int, flipped: bool) -> torch.Tensor:
        g = job.grid
        if job.canvas is None:  # made when its first window runs, so one canvas at a time exists
            assert job.image_data is not None
            job.canvas = self._canvas(job.image_data, g)
        crop = job.canvas[:, y + g.pad_top : y + g.pad_top + g.win_h, x + g.pad_left : x + g.pad_left + g.win_w]
        return crop.flip(-1) if flipped else crop

    def _window_output(self, logits: torch.Tensor, grid: WindowGrid, y: int, x: int) -> WindowOutput:
        """What a window keeps of its network outputs (P, K, h', w'), P = 2 with the flip."""
        if self.config.head != "low_res":
            return window_output(logits, grid, y, x, probabilities=False)
        # Softmax, projection and flip average at the network's resolution, kept in float16 (probabilities).
        probs = self._to_probs(logits[:1].float())[0]
        if len(logits) == 2:
            probs.add_(self._to_probs(logits[1:].float())[0].flip(-1)).div_(2)
        return window_output(probs[None].to(torch.float16), grid, y, x, probabilities=True)

    def _to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (P, K, h, w) -> probabilities in the output taxonomy (P, C, h, w): softmax, then the linear map."""
        probs = logits.softmax(dim=1)
        if self._projection is not None:
            probs = torch.einsum("tc,nchw->nthw", self._projection, probs)
        return probs

    @torch.inference_mode()
    def _combine(
        self,
        maps: list[ScaleMap],
        h: int,
        w: int,
        sink: Callable[[int, int, torch.Tensor], None],
        bands: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """Mean over scales of the maps resized to (h, w), handed to ``sink`` one band of rows at a time.

        Maps are resized with half-pixel centres (OpenCV), except in the batched variant, which the original
        resizes with ``align_corners=True``.
        """
        for r0, r1 in bands or self._bands(h, w, self.num_classes):
            sink(r0, r1, self._mean_band(maps, h, w, r0, r1, lambda m, lo, hi: m.rows(lo, hi)))

    def _bands(self, h: int, w: int, channels: int) -> list[tuple[int, int]]:
        rows = max(1, _BAND_BYTES // (4 * channels * w * 2))
        return [(r0, min(h, r0 + rows)) for r0 in range(0, h, rows)]

    def _mean_band(
        self,
        maps: list[ScaleMap],
        h: int,
        w: int,
        r0: int,
        r1: int,
        source: Callable[[ScaleMap, int, int], torch.Tensor],
    ) -> torch.Tensor:
        """Rows r0:r1 of the mean over scales; ``source(map, lo, hi)`` gives rows lo:hi of a map."""
        align_corners = self.config.batched
        acc = None
        for m in maps:
            if (m.height, m.width) == (h, w):
                band = source(m, r0, r1)
            else:
                lo, hi = source_rows(m.height, h, r0, r1, align_corners)
                band = resize_rows(
                    source(m, lo, hi), h, w, r0, r1, in_h=m.height, row_offset=lo, align_corners=align_corners
                )
            acc = band.clone() if acc is None else acc.add_(band)
        assert acc is not None
        return acc.div_(len(maps))

    @torch.inference_mode()
    def _combine_candidates(
        self, maps: list[ScaleMap], h: int, w: int, sink: Callable[..., None], top: int = 1
    ) -> None:
        """The outputs of the low-resolution head, computed for a few candidate classes per band of rows.

        The candidates of a band are the classes among the top ``TOP_K`` of some low-resolution pixel it reads; a
        last channel bounds all the others (:meth:`ScaleMap.bounded_rows`). Where the ``top``-th best candidate (the
        best for labels and confidence; the k-th for the top k probabilities) does not beat that bound, the band is
        recomputed with all classes, so the labels, confidences and top-k are exactly those of
        :meth:`predict_proba` with this head, at a fraction of the work (about 10 of 194 classes).
        ``sink(r0, r1, band, classes)`` receives the band of the candidate ``classes`` (or all, ``classes`` None).
        """
        align_corners = self.config.batched
        for r0, r1 in self._bands(h, w, self.num_classes):
            spans = [
                (r0, r1) if (m.height, m.width) == (h, w) else source_rows(m.height, h, r0, r1, align_corners)
                for m in maps
            ]
            classes = torch.unique(torch.cat([m.candidates(lo, hi) for m, (lo, hi) in zip(maps, spans, strict=True)]))
            acc = self._mean_band(maps, h, w, r0, r1, lambda m, lo, hi, c=classes: m.bounded_rows(lo, hi, c))
            if len(classes) >= top:
                kth = acc[:-1].max(dim=0).values if top == 1 else acc[:-1].topk(top, dim=0).values[-1]
                if bool((kth > acc[-1]).all()):
                    sink(r0, r1, acc[:-1], classes)
                    continue
            sink(r0, r1, self._mean_band(maps, h, w, r0, r1, lambda m, lo, hi: m.rows(lo, hi)), None)
