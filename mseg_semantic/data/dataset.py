"""Image/label pairs of a split list, read losslessly and checked against their taxonomy.

``SegmentationDataset[i]`` returns ``(image, label)``: (H, W, 3) RGB uint8 and (H, W) int64 in the dataset's own
label ids (255 = unlabeled). Mapping labels to the universal taxonomy is the caller's choice (training maps after
cropping, evaluation maps whole images). A label of the wrong size or with values outside the taxonomy raises
:class:`InputError` naming the files and the list line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mseg_semantic.data.lists import ListEntry
from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.taxonomy import Taxonomy, TaxonomyConverter


def read_sample(entry: ListEntry, taxonomy: str | Taxonomy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one list entry: (RGB uint8 image, int64 label map)."""
    try:
        image = read_image(entry.image)
    except InputError as exc:
        raise InputError(f"{entry.source}: {exc}") from None
    return image, read_entry_label(entry, image.shape[:2], taxonomy)


def read_entry_label(entry: ListEntry, shape: tuple[int, ...], taxonomy: str | Taxonomy | None = None) -> np.ndarray:
    """The label map of an entry as int64, checked to be single-channel, of ``shape`` (H, W), and in ``taxonomy``."""
    if entry.label is None:
        raise InputError(f"{entry.source}: the list gives no label for {entry.image}")
    try:
        label = read_label(entry.label)
    except InputError as exc:
        raise InputError(f"{entry.source}: {exc}") from None
    if label.ndim != 2:
        raise InputError(f"{entry.source}: {entry.label} is a colour image; expected a single-channel label map")
    if label.shape != tuple(shape):
        raise InputError(
            f"{entry.source}: label {entry.label} is {label.shape[1]}x{label.shape[0]} but image {entry.image} is "
            f"{shape[1]}x{shape[0]}"
        )
    if taxonomy is not None:
        try:
            TaxonomyConverter().convert_labels(label, taxonomy, taxonomy)  # identity map: validates the values
        except TaxonomyError as exc:
            raise InputError(f"{entry.source}: {entry.label}: {exc}") from None
    return label.astype(np.int64)


class SegmentationDataset(Dataset):
    """A split list as a map-style dataset; ``transform(image, label)`` is applied when given."""

    def __init__(
        self,
        entries: Sequence[ListEntry],
        taxonomy: str | None = None,
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    ) -> None:
        self.entries = list(entries)
        self.taxonomy = taxonomy
        self.transform = transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Any:
        image, label = read_sample(self.entries[index], self.taxonomy)
        return self.transform(image, label) if self.transform else (image, label)
