"""From a config's ``datasets`` to a DataLoader of balanced, augmented, label-mapped batches.

Folders and lists are checked before anything is built (a wrong ``--data-root`` fails in a second with the
dataset's name, not after the model was built); image files are read, and a corrupt one reported with its list
file and line, when a batch needs them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mseg_semantic.data import (
    BalancedBatchSampler,
    KeyedDataset,
    LabelMapper,
    ListEntry,
    SegmentationDataset,
    TrainTransform,
    available_splits,
    dataset_root,
    read_list,
)
from mseg_semantic.errors import InputError
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.training.config import DatasetConfig, TrainConfig, TransformConfig


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset of the config with its resolved folder and list entries."""

    config: DatasetConfig
    root: Path
    train: list[ListEntry]
    val: list[ListEntry] | None


def prepare_datasets(config: TrainConfig) -> list[PreparedDataset]:
    """Resolve every dataset's folder and lists; raises :class:`InputError` naming the dataset and the fix."""
    prepared = []
    for i, dataset in enumerate(config.datasets):
        where = f"dataset {dataset.name}"
        folder = dataset.root or config.data_root
        if folder is None:
            raise InputError(f"{where}: no data folder; pass --data-root DIR (or --set datasets.{i}.root=DIR)")
        base = str(Path(folder).expanduser())
        try:
            root = dataset_root(dataset.name, base)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        train = _read_entries(dataset.train_list, root, base, dataset.name, "train", i)
        val = _read_entries(dataset.val_list, root, base, dataset.name, "val", i) if dataset.val_list else None
        first = train[0]
        if not first.image.is_file():
            raise InputError(
                f"{where}: {first.image} does not exist ({first.source}); is the data folder {root} right?"
            )
        prepared.append(PreparedDataset(dataset, root, train, val))
    return prepared


def _read_entries(list_file: str | None, root: Path, base: str, name: str, split: str, index: int) -> list[ListEntry]:
    key = f"datasets.{index}.{split}_list"
    if list_file is None:
        if split not in available_splits(name, base):
            found = ", ".join(available_splits(name, base)) or "none"
            hint = " ('mseg data prepare coco-panoptic' writes the COCO train lists)" if "coco" in name else ""
            raise InputError(
                f"dataset {name}: no {split!r} list ships with the package (shipped: {found}){hint}; give one with "
                f"--set {key}=FILE"
            )
        return read_list(None, base, dataset=name, split=split)
    path = Path(list_file).expanduser()
    if not path.is_absolute() and (root / path).is_file():
        path = root / path  # lists usually sit next to the data; else relative to the current folder
    if not path.is_file():
        raise InputError(f"{key}: list file {list_file} not found (looked in {root} and the current folder)")
    return read_list(path, root)


def label_target(config: TrainConfig) -> str | None:
    """The taxonomy labels are mapped to after cropping (None: the dataset's own)."""
    return None if config.taxonomy.mode == "own" else config.model_taxonomy


def train_transform(config: TrainConfig) -> TrainTransform:
    """The augmentation of the config's ``transform`` section (the one place the config becomes a transform)."""
    # The section is the transform's own settings class; the transform adds only ignore_label.
    return TrainTransform(**{f.name: getattr(config.transform, f.name) for f in fields(TransformConfig)})


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's global generators per worker (torch already seeds each worker itself).

    The augmentation does not use them (each crop has its own seed); this is for anything else that might.
    (OpenCV's thread count is left alone: ``cv2.setNumThreads`` in a forked worker can deadlock on the pool
    the parent created.)
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_train_loader(
    config: TrainConfig,
    datasets: list[PreparedDataset],
    *,
    rank: int,
    world_size: int,
    start_iter: int,
    max_iters: int,
    pin_memory: bool,
) -> tuple[DataLoader, BalancedBatchSampler]:
    """This process's loader of steps ``start_iter .. max_iters - 1``: ``(images, labels, dataset_ids)`` batches."""
    target = label_target(config)
    sampler = BalancedBatchSampler(
        [len(d.train) for d in datasets],
        config.batch_size,
        rank=rank,
        world_size=world_size,
        layout=config.dataset_layout,
        seed=config.seed,
        start_step=start_iter,
        end_step=max_iters,
    )
    keyed = KeyedDataset(
        # The Taxonomy itself, not its name: a dataset of the user's own is known by name only in this process.
        [SegmentationDataset(d.train, taxonomy=get_taxonomy(d.config.name)) for d in datasets],
        train_transform(config),
        [LabelMapper(d.config.name, target) for d in datasets],
    )
    loader = DataLoader(
        keyed,
        batch_sampler=sampler,
        num_workers=config.workers,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(config.seed + start_iter),
        prefetch_factor=4 if config.workers else None,
    )
    return loader, sampler


def worker_error_message(exc: InputError) -> str:
    """The message of an :class:`InputError` raised in a DataLoader worker, without the worker's traceback."""
    text = str(exc)
    marker = "InputError: "
    if text.startswith("Caught ") and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text
