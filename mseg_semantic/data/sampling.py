"""Balanced multi-dataset batches: every optimisation step sees the same number of crops from each dataset.

MSeg trains on datasets of very different sizes (COCO has 20x the images of Cityscapes) and gives each the same
weight: the original runs one dataset per GPU, so every step all-reduces equal numbers of crops per dataset. Here
the *global* batch of a step (all processes together) holds ``batch_size / D`` crops of each of the D datasets, and
``layout`` decides how that batch is split over processes:

- ``"per_rank"`` (the original): the global batch is ordered dataset by dataset and each process takes a
  contiguous share, so with one process per dataset every process trains on one dataset;
- ``"mixed"``: the global batch is interleaved (d0, d1, ..., d0, d1, ...), so each process's batch draws
  equally from all datasets (for a CPU or fewer GPUs than datasets; also keeps unsynchronised BatchNorm balanced).

Each dataset is consumed as an endless stream: pass ``e`` over dataset ``d`` is a permutation seeded by
``(seed, d, e)``, and step ``s`` takes the stream positions ``s * n .. s * n + n - 1`` (``n`` = crops per dataset per
step). A crop is identified by :class:`SampleKey` (dataset, index, augmentation seed), computed from the step alone,
so the data of step ``s`` is the same whatever the number of processes or workers, and resuming at step ``s``
needs no sampler state. Small datasets simply cycle more often (the original's epochs per rank differ likewise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

LAYOUTS = ("mixed", "per_rank")


class SampleKey(NamedTuple):
    """One drawn crop: which dataset, which sample of it, and the seed of its augmentation."""

    dataset: int
    index: int
    seed: int


class BalancedBatchSampler(Sampler[list[SampleKey]]):
    """Yields, for steps ``start_step .. end_step - 1``, this process's share of each step's balanced batch.

    Args:
        dataset_sizes: number of samples of each dataset.
        batch_size: crops per step over all processes; a multiple of the dataset count and of ``world_size``.
        rank, world_size: this process and the number of processes.
        layout: ``"mixed"`` or ``"per_rank"`` (see the module docstring).
        seed: the run's seed (shuffling and augmentation).
        start_step, end_step: the steps to yield (a resumed run starts at its checkpoint's iteration).
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        layout: str = "mixed",
        seed: int = 0,
        start_step: int = 0,
        end_step: int,
    ) -> None:
        num_datasets = len(dataset_sizes)
        if num_datasets == 0 or min(dataset_sizes) < 1:
            raise ValueError(f"every dataset needs at least one sample, got sizes {list(dataset_sizes)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if batch_size % num_datasets:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {num_datasets} datasets")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.sizes = list(dataset_sizes)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.layout, self.seed = layout, seed
        self.start_step, self.end_step = start_step, end_step
        self.per_dataset = batch_size // num_datasets
        per_rank = batch_size // world_size
        slots = global_batch_slots(num_datasets, self.per_dataset, layout)
        # (dataset, k): the k-th crop of that dataset within the step, for this rank's slots.
        self._slots = slots[rank * per_rank : (rank + 1) * per_rank]
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for step in range(self.start_step, self.end_step):
            yield self.batch(step)

    def batch(self, step: int) -> list[SampleKey]:
        """This process's crops of step ``step``."""
        return [self.key(dataset, step * self.per_dataset + k) for dataset, k in self._slots]

    def key(self, dataset: int, position: int) -> SampleKey:
        """The crop at ``position`` of dataset ``dataset``'s stream."""
        size = self.sizes[dataset]
        index = int(self._permutation(dataset, position // size)[position % size])
        seed = int(np.random.SeedSequence([self.seed, dataset, position]).generate_state(1)[0])
        return SampleKey(dataset, index, seed)

    def _permutation(self, dataset: int, epoch: int) -> np.ndarray:
        cache_key = (dataset, epoch)
        if cache_key not in self._permutations:
            # Only the current and next pass of each dataset are ever needed.
            for old in [k for k in self._permutations if k[0] == dataset and k[1] < epoch]:
                del self._permutations[old]
            rng = np.random.default_rng([self.seed, dataset, epoch, 0x5EED])
            self._permutations[cache_key] = rng.permutation(self.sizes[dataset])
        return self._permutations[cache_key]


def global_batch_slots(num_datasets: int, per_dataset: int, layout: str) -> list[tuple[int, int]]:
    """The global batch of one step as ``(dataset, k)`` pairs in the order processes split it."""
    if layout == "per_rank":
        return [(d, k) for d in range(num_datasets) for k in range(per_dataset)]
    return [(d, k) for k in range(per_dataset) for d in range(num_datasets)]


class KeyedDataset(Dataset):
    """Reads the crop a :class:`SampleKey` names: sample, augmentation with the key's seed, label mapping.

    ``datasets[d][i]`` must return ``(image, label)`` numpy arrays; ``transform(image, label, rng)`` returns
    tensors; ``label_maps[d]`` maps dataset ``d``'s label tensor to the training taxonomy. Items are
    ``(image, label, d)``.
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        transform: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
        label_maps: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    ) -> None:
        if len(datasets) != len(label_maps):
            raise ValueError("one label map per dataset is needed")
        self.datasets, self.transform, self.label_maps = list(datasets), transform, list(label_maps)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, label = self.datasets[key.dataset][key.index]
        image_t, label_t = self.transform(image, label, np.random.default_rng(key.seed))
        return image_t, self.label_maps[key.dataset](label_t), key.dataset
