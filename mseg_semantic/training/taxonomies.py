"""The taxonomy a training run learns, and the datasets of the user's own it learns from, resolved from the config.

``taxonomy.master`` (a master table: :mod:`mseg_semantic.taxonomy.master`) and a dataset's ``names`` list are files.
Reading them makes their taxonomies known by name in this process
(:func:`~mseg_semantic.taxonomy.tables.register_taxonomy`), so label maps, the loss's class names, validation and
checkpoints use them as they use the built-in ones; every process of a run (and a resumed run) reads them again
from the config.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mseg_semantic.configs import ConfigError
from mseg_semantic.errors import MsegError
from mseg_semantic.taxonomy import Taxonomy, get_taxonomy, taxonomy_names
from mseg_semantic.taxonomy.master import load_master, names_taxonomy, read_names
from mseg_semantic.taxonomy.tables import UNIVERSAL, register_taxonomy


@dataclass
class DatasetConfig:
    """One training dataset: its label taxonomy and where its images and split lists are."""

    name: str  # the taxonomy of its label files, e.g. "cityscapes-19-relabeled" or "camvid-11"
    root: str | None = None  # its folder; default: the run's data_root (or data_root/<MSeg folder of the dataset>)
    train_list: str | None = None  # "image label" lines relative to root; default: the list shipped for `name`
    val_list: str | None = None  # for periodic validation; none by default
    # a dataset of your own: its names list (line i names label i); `name` is then its column in taxonomy.master
    names: str | None = None


@dataclass
class TaxonomyConfig:
    """The taxonomy trained in: ``taxonomy: universal`` (or naive, own) is short for ``taxonomy: {mode: ...}``."""

    mode: str = "universal"  # universal | naive | own (own: one dataset, trained in its own classes)
    # a universal taxonomy of your own: a master table in the format of MSeg's MSeg_master.tsv (mode universal)
    master: str | None = None


def resolve_taxonomies(taxonomy: TaxonomyConfig, datasets: Sequence[DatasetConfig]) -> Taxonomy:
    """Read the master table and names lists (each once per process and version of the file), make them known by
    name, and return the taxonomy trained in: universal, a master table's, naive, or the one dataset's own.

    Raises :class:`ConfigError` naming the key (``taxonomy.master``, ``datasets.0.names``) and the file's line."""
    own = own_datasets(datasets)
    for i, dataset in enumerate(datasets):
        if dataset.name not in own and dataset.name not in taxonomy_names():
            try:
                get_taxonomy(dataset.name)  # the error lists the built-in names and the closest one
            except MsegError as exc:
                raise ConfigError(
                    f"{exc}; for a dataset of your own, give its names list too (datasets.{i}.names=FILE)",
                    f"datasets.{i}.name",
                ) from None
    if taxonomy.master is None:
        if own and taxonomy.mode != "own":
            i = next(i for i, d in enumerate(datasets) if d.names)
            raise ConfigError(
                f"a dataset of your own joins the universal taxonomy through its column in a master table: set "
                f"taxonomy.master=FILE (a copy of MSeg_master.tsv with a column {datasets[i].name!r}), or "
                "taxonomy=own to train it alone in its own classes",
                f"datasets.{i}.names",
            )
        _register_own(own)
        return get_taxonomy(datasets[0].name if taxonomy.mode == "own" else taxonomy.mode)
    return _resolve_master(taxonomy, datasets, own)


def _resolve_master(
    taxonomy: TaxonomyConfig, datasets: Sequence[DatasetConfig], own: dict[str, tuple[str, tuple[str, ...]]]
) -> Taxonomy:
    master = str(taxonomy.master)
    if taxonomy.mode != UNIVERSAL:
        raise ConfigError(
            f"a master table defines a universal taxonomy; use taxonomy.mode universal, not {taxonomy.mode!r}",
            "taxonomy.master",
        )
    try:
        table = register_taxonomy(_read_master(master, _mtime(master), tuple((k, v[1]) for k, v in own.items())))
        _register_own(own)
    except MsegError as exc:
        raise ConfigError(str(exc), "taxonomy.master") from None
    for i, dataset in enumerate(datasets):
        if dataset.name not in table.maps:
            raise ConfigError(
                f"{dataset.name} has no column in the master table {master}; add one naming which of its classes "
                "become each row",
                f"datasets.{i}.name",
            )
    return table


def _register_own(own: dict[str, tuple[str, tuple[str, ...]]]) -> None:
    for name, (path, classes) in own.items():
        register_taxonomy(names_taxonomy(name, classes, str(Path(path))))


def own_datasets(datasets: Sequence[DatasetConfig]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{name: (names file, class names)}`` of the datasets of the user's own (those with ``names``)."""
    own = {}
    for i, dataset in enumerate(datasets):
        if dataset.names is None:
            continue
        key = f"datasets.{i}"
        if dataset.name in taxonomy_names():
            raise ConfigError(
                f"{dataset.name!r} is a built-in dataset (its classes ship with the package); give a dataset of "
                "your own another name, or leave names out",
                f"{key}.name",
            )
        try:
            own[dataset.name] = (dataset.names, _read_names(dataset.names, _mtime(dataset.names)))
        except MsegError as exc:
            raise ConfigError(str(exc), f"{key}.names") from None
    return own


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0  # reading it reports the problem


@functools.cache
def _read_names(path: str, mtime: int) -> tuple[str, ...]:
    return read_names(path)


@functools.cache
def _read_master(path: str, mtime: int, own: tuple[tuple[str, tuple[str, ...]], ...]) -> Taxonomy:
    """A master table, read once per process and version of the file."""
    return load_master(path, dict(own))
