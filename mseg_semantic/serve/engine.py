"""The model side of ``mseg serve``: load once, decode uploads, run batches, turn predictions into answers.

It is split by thread so that each step runs where it belongs: :meth:`Engine.load` on a loader thread at startup
(the service answers ``/healthz`` meanwhile, ``/readyz`` once it is done); :meth:`Engine.prepare` and
:meth:`Engine.answer` (decoding the upload, encoding the outputs: CPU work that must not block the event loop) on
the service's I/O threads; :meth:`Engine.run` on the batcher's one worker thread, the only one that touches a
:class:`~mseg_semantic.inference.Segmenter`. The outputs are those of ``mseg demo`` (:func:`encode_output`), so the
service and the command line give the same files for the same image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mseg_semantic.errors import InputError, MsegError, TaxonomyError
from mseg_semantic.fileio import decode_image
from mseg_semantic.inference.config import InferenceConfig
from mseg_semantic.inference.demo import IMAGE_OUTPUTS, class_histogram, encode_output
from mseg_semantic.inference.segmenter import Prediction, Segmenter
from mseg_semantic.taxonomy.tables import NAIVE, TEST_DATASETS, UNIVERSAL, get_taxonomy
from mseg_semantic.visualize import palette

#: The media type of each output's bytes.
MEDIA_TYPES: dict[str, str] = {
    "gray": "image/png",
    "color": "image/png",
    "overlay": "image/jpeg",
    "confidence": "image/png",
}
assert tuple(MEDIA_TYPES) == IMAGE_OUTPUTS


@dataclass(frozen=True)
class Upload:
    """A decoded upload, what the worker needs of it."""

    rgb: np.ndarray
    taxonomy: str


def output_taxonomies(model_taxonomy: str) -> list[str]:
    """What a model of ``model_taxonomy`` can answer in: its own taxonomy, and for a universal or naive model the
    test taxonomies. By name only: the service reads no taxonomy file of the server's disk."""
    model = get_taxonomy(model_taxonomy)
    if model.kind not in (UNIVERSAL, NAIVE):
        return [model_taxonomy]
    # A universal taxonomy of the user's own (a master table's) reaches the test taxonomies it has a column for.
    own = model.name not in (UNIVERSAL, NAIVE)
    return [model_taxonomy, *(t for t in TEST_DATASETS if not own or t in model.maps)]


class Engine:
    """One model, loaded once, and the :class:`Segmenter` of each output taxonomy asked for (made on first use).

    ``load_model``: returns the model and its taxonomy (called once, on the loader thread).
    """

    def __init__(
        self,
        load_model: Callable[[], tuple[nn.Module, str]],
        config: InferenceConfig,
        device: torch.device,
        name: str,
        max_pixels: int,
    ) -> None:
        self._load_model, self.config, self.device, self.name = load_model, config, device, name
        self.max_pixels = max_pixels
        self.ready = threading.Event()
        self.error: str | None = None  # why loading failed
        self._model: nn.Module | None = None
        self._segmenters: dict[str, Segmenter] = {}
        self.model_taxonomy = ""
        self.taxonomies: list[str] = []

    # ------------------------------------------------------------------ loader thread
    def load(self) -> None:
        """Load the model and make the Segmenter of its own taxonomy; sets :attr:`ready`, or :attr:`error`."""
        try:
            model, taxonomy = self._load_model()
            segmenter = Segmenter(model, config=self.config, model_taxonomy=taxonomy, device=self.device)
        except MsegError as exc:
            self.error = str(exc)
            return
        self._model, self.model_taxonomy = model, taxonomy
        self.taxonomies = output_taxonomies(taxonomy)
        self._segmenters[taxonomy] = segmenter
        self.ready.set()

    def describe(self) -> dict[str, Any]:
        """The model, as ``GET /v1/models`` lists it."""
        own = self._segmenters.get(self.model_taxonomy)
        return {
            "name": self.name,
            "ready": self.ready.is_set(),
            "taxonomy": self.model_taxonomy or None,
            "output_taxonomies": self.taxonomies,
            "num_classes": own.num_model_classes if own else None,
            "preset": self.config.name,
            "backend": own.backend if own else None,
            "precision": own.precision if own else None,
            "device": str(self.device),
            "outputs": list(IMAGE_OUTPUTS),
        }

    def check_taxonomy(self, taxonomy: str | None) -> str:
        """The output taxonomy a request names (None: the model's), or a :class:`TaxonomyError` listing those it
        can name."""
        if taxonomy is None or taxonomy == "":
            return self.model_taxonomy
        if taxonomy not in self.taxonomies:
            raise TaxonomyError(
                f"unknown output taxonomy {taxonomy!r} for this model ({self.name}, {self.model_taxonomy}); "
                f"choose from {', '.join(self.taxonomies)}"
            )
        return taxonomy

    # ------------------------------------------------------------------ I/O threads
    def prepare(self, data: bytes, taxonomy: str, name: str = "upload") -> tuple[Hashable, Upload]:
        """Decode an upload (its pixel count checked from the header first) and give its batch key: the output
        taxonomy and the window shapes of its size (an image too elongated for the preset is refused here)."""
        rgb = decode_image(np.frombuffer(data, dtype=np.uint8), name, max_pixels=self.max_pixels)
        grids = self._segmenters[self.model_taxonomy].window_grids(*rgb.shape[:2])
        return (taxonomy, tuple((g.win_h, g.win_w) for g in grids)), Upload(rgb, taxonomy)

    def answer(
        self, upload: Upload, result: Prediction, outputs: Sequence[str]
    ) -> tuple[list[str], list[dict], dict[str, bytes]]:
        """The taxonomy's class names, the classes present (id, name, colour, pixels and their share, biggest
        first) and the encoded outputs."""
        segmenter = self._segmenters[upload.taxonomy]
        names = segmenter.class_names
        counts = class_histogram(result.labels, names)
        colors = palette(len(names), segmenter.colors)
        total = max(1, int(result.labels.size))
        classes = [
            {
                "id": int(i),
                "name": names[i],
                "color": "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colors[i])),
                "pixels": int(counts[i]),
                "share": round(int(counts[i]) / total, 6),
            }
            for i in np.argsort(-counts, kind="stable")
            if counts[i] > 0
        ]
        encoded = {kind: encode_output(kind, upload.rgb, result, names, segmenter.colors) for kind in outputs}
        return names, classes, encoded

    # ------------------------------------------------------------------ the worker thread
    def run(self, uploads: Sequence[Upload]) -> list[Prediction | Exception]:
        """Segment uploads of one batch key together (their windows share forward passes, ``batch_windows`` at a
        time); an image the batch cannot take is retried alone, so that it fails alone."""
        try:
            segmenter = self._segmenter(uploads[0].taxonomy)
            return list(segmenter.predict_outputs([u.rgb for u in uploads], confidence=True))
        except MsegError as exc:
            if len(uploads) == 1:
                return [exc]
            return [result for upload in uploads for result in self.run([upload])]

    def _segmenter(self, taxonomy: str) -> Segmenter:
        """The Segmenter of an output taxonomy, sharing the one model (made on the worker thread, on first use)."""
        if taxonomy not in self._segmenters:
            if self._model is None:
                raise InputError("the model is not loaded yet")
            self._segmenters[taxonomy] = Segmenter(
                self._model,
                config=self.config,
                model_taxonomy=self.model_taxonomy,
                output_taxonomy=taxonomy,
                device=self.device,
            )
        return self._segmenters[taxonomy]
