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
from pathlib import Path
from typing import TYPE_CHECKING

from mseg_semantic.configs import ConfigError
from mseg_semantic.errors import MsegError
from mseg_semantic.taxonomy import Taxonomy, get_taxonomy, taxonomy_names
from mseg_semantic.taxonomy.master import load_master, names_taxonomy, read_names
from mseg_semantic.taxonomy.tables import UNIVERSAL, register_taxonomy

if TYPE_CHECKING:
    from mseg_semantic.training.config import TrainConfig


def training_taxonomy(config: TrainConfig) -> Taxonomy:
    """The taxonomy of the model's outputs: universal, a master table's, naive, or the one dataset's own."""
    if config.taxonomy.mode == "own":
        return resolve_taxonomies(config) if config.datasets[0].names else get_taxonomy(config.datasets[0].name)
    if config.taxonomy.master:
        return resolve_taxonomies(config)
    return get_taxonomy(config.taxonomy.mode)


def resolve_taxonomies(config: TrainConfig) -> Taxonomy:
    """Read the config's master table and names lists, make them known by name, and return the trained taxonomy.

    Raises :class:`ConfigError` naming the key (``taxonomy.master``, ``datasets.0.names``) and the file's line."""
    own = own_datasets(config)
    for i, dataset in enumerate(config.datasets):
        if dataset.name not in own and dataset.name not in taxonomy_names():
            try:
                get_taxonomy(dataset.name)  # the error lists the built-in names and the closest one
            except MsegError as exc:
                raise ConfigError(
                    f"{exc}; for a dataset of your own, give its names list too (datasets.{i}.names=FILE)",
                    f"datasets.{i}.name",
                ) from None
    master = config.taxonomy.master
    if master is None:
        if own and config.taxonomy.mode != "own":
            i = next(i for i, d in enumerate(config.datasets) if d.names)
            raise ConfigError(
                f"a dataset of your own joins the universal taxonomy through its column in a master table: set "
                f"taxonomy.master=FILE (a copy of MSeg_master.tsv with a column {config.datasets[i].name!r}), or "
                "taxonomy=own to train it alone in its own classes",
                f"datasets.{i}.names",
            )
        for name, (path, classes) in own.items():
            register_taxonomy(names_taxonomy(name, classes, str(Path(path))))
        mode = config.taxonomy.mode
        return get_taxonomy(config.datasets[0].name if mode == "own" else mode)
    if config.taxonomy.mode != UNIVERSAL:
        raise ConfigError(
            f"a master table defines a universal taxonomy; use taxonomy.mode universal, not {config.taxonomy.mode!r}",
            "taxonomy.master",
        )
    try:
        taxonomy = _read_master(master, _mtime(master), tuple((k, v[1]) for k, v in own.items()))
        taxonomy = register_taxonomy(taxonomy)
        for name, (path, classes) in own.items():
            register_taxonomy(names_taxonomy(name, classes, str(Path(path))))
    except MsegError as exc:
        raise ConfigError(str(exc), "taxonomy.master") from None
    for i, dataset in enumerate(config.datasets):
        if dataset.name not in taxonomy.maps:
            raise ConfigError(
                f"{dataset.name} has no column in the master table {master}; add one naming which of its classes "
                "become each row",
                f"datasets.{i}.name",
            )
    return taxonomy


def own_datasets(config: TrainConfig) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{name: (names file, class names)}`` of the config's datasets of the user's own (those with ``names``)."""
    own = {}
    for i, dataset in enumerate(config.datasets):
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
            own[dataset.name] = (dataset.names, read_names(dataset.names))
        except MsegError as exc:
            raise ConfigError(str(exc), f"{key}.names") from None
    return own


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0  # reading it reports the problem


@functools.cache
def _read_master(path: str, mtime: int, own: tuple[tuple[str, tuple[str, ...]], ...]) -> Taxonomy:
    """A master table, read once per process and version of the file."""
    return load_master(path, dict(own))
