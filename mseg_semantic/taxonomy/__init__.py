"""The MSeg taxonomies: the 194-class universal one, every dataset's own, and the maps between them; and the
user's own: an output taxonomy read from a file that sums a model's classes (:mod:`.files`), and a universal
taxonomy read from a master table to train in (:mod:`.master`).

>>> from mseg_semantic.taxonomy import class_names, TaxonomyConverter
>>> class_names("camvid-11")[:3]
['Building', 'Tree', 'Sky']
>>> TaxonomyConverter().universal_to_test_matrix("camvid-11").shape
(11, 194)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mseg_semantic.taxonomy.files import check_taxonomy_file, load_taxonomy_file, resolve_taxonomy
from mseg_semantic.taxonomy.master import builtin_master, check_master, load_master
from mseg_semantic.taxonomy.tables import (
    DEFAULT_TRAIN_DATASETS,
    IGNORE_LABEL,
    NUM_NAIVE_CLASSES,
    NUM_UNIVERSAL_CLASSES,
    RELABELED_TRAIN_DATASETS,
    TEST_DATASETS,
    UNRELABELED_TRAIN_DATASETS,
    RemapTable,
    Taxonomy,
    class_names,
    get_taxonomy,
    register_taxonomy,
    remap_tables,
    taxonomy_names,
)

if TYPE_CHECKING:
    from mseg_semantic.taxonomy.converter import TaxonomyConverter, producible_classes, unproducible_classes
    from mseg_semantic.taxonomy.remap import remap_label_folder

# The maps between taxonomies need numpy (and remapping files OpenCV): loaded on first use, so that reading the
# tables (``mseg taxonomy list``) stays fast.
_LAZY = {
    "TaxonomyConverter": "converter",
    "producible_classes": "converter",
    "unproducible_classes": "converter",
    "remap_label_folder": "remap",
}

__all__ = [
    "DEFAULT_TRAIN_DATASETS",
    "IGNORE_LABEL",
    "NUM_NAIVE_CLASSES",
    "NUM_UNIVERSAL_CLASSES",
    "RELABELED_TRAIN_DATASETS",
    "TEST_DATASETS",
    "UNRELABELED_TRAIN_DATASETS",
    "RemapTable",
    "Taxonomy",
    "TaxonomyConverter",
    "builtin_master",
    "check_master",
    "check_taxonomy_file",
    "class_names",
    "get_taxonomy",
    "load_master",
    "load_taxonomy_file",
    "producible_classes",
    "register_taxonomy",
    "remap_label_folder",
    "remap_tables",
    "resolve_taxonomy",
    "taxonomy_names",
    "unproducible_classes",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
