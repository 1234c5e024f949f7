"""Read the taxonomy tables shipped in ``tables/`` into plain dataclasses.

The tables are data, derived once from the original mseg-api spreadsheet by ``tools/build_taxonomy_tables.py``;
this module only reads them (each file once per process) and builds the one taxonomy that is a rule rather
than a table: the *naive* merge of the seven unrelabeled training taxonomies (316 outputs).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources

import yaml

from mseg_semantic.errors import TaxonomyError

IGNORE_LABEL = 255
"""Label value meaning 'unlabeled / ignore' in every taxonomy (never a class of a model's output)."""

UNLABELED = "unlabeled"
UNIVERSAL = "universal"
NAIVE = "naive"

NUM_UNIVERSAL_CLASSES = 194
NUM_NAIVE_CLASSES = 316

UNRELABELED_TRAIN_DATASETS: tuple[str, ...] = (
    "ade20k-150",
    "bdd",
    "cityscapes-19",
    "coco-panoptic-133",
    "idd-39",
    "mapillary-public65",
    "sunrgbd-37",
)
"""The seven training datasets with their original labels (also the sources of the naive taxonomy)."""

RELABELED_TRAIN_DATASETS: tuple[str, ...] = (
    "ade20k-150-relabeled",
    "bdd-relabeled",
    "cityscapes-19-relabeled",
    "cityscapes-34-relabeled",
    "coco-panoptic-133-relabeled",
    "idd-39-relabeled",
    "mapillary-public65-relabeled",
    "sunrgbd-37-relabeled",
)
"""Their MSeg-relabeled versions (the labels MSeg models were trained on)."""

DEFAULT_TRAIN_DATASETS: tuple[str, ...] = UNRELABELED_TRAIN_DATASETS + RELABELED_TRAIN_DATASETS

TEST_DATASETS: tuple[str, ...] = ("camvid-11", "kitti-19", "pascal-context-60", "scannet-20", "voc2012", "wilddash-19")
"""The zero-shot test datasets, in the original order."""

KINDS = ("universal", "naive", "train", "test", "raw")


@dataclass(frozen=True)
class Taxonomy:
    """One label space: its classes in label-value order and how they relate to the universal taxonomy.

    ``universal[i]`` holds the universal counterpart(s) of class ``i``:
    - ``kind == "train"``: one universal class name, or ``"unlabeled"`` (the class is ignored in training);
    - ``kind == "test"``: the universal classes whose probabilities class ``i`` collects (may be empty);
    - ``kind == "universal"``: the class itself; ``kind == "naive"``: the training classes merged into it;
    - ``kind == "raw"``: empty (raw labels reach other taxonomies through pairwise remap tables);
    - ``kind == "file"``: a taxonomy read from a user's file (:mod:`.files`): the classes of ``source`` (any
      taxonomy a model predicts) whose probabilities class ``i`` collects, as for a test taxonomy; ``origin`` is
      the file, ``origin_line`` the line of its header (which names ``source``).

    A universal taxonomy of the user's own (a master table, :mod:`.master`) has kind ``"universal"`` too; its
    ``maps`` say what each dataset class becomes (``maps[dataset][i]``: one class, or ``("unlabeled",)``) and
    what each test class sums (``maps[test][t]``: its classes), and ``table`` keeps the file's text (checkpoints
    record it, so a model trained on it needs no file).
    """

    name: str
    kind: str
    description: str
    classes: tuple[str, ...]
    universal: tuple[tuple[str, ...], ...]
    colors: tuple[tuple[int, int, int], ...] | None = None
    relabeled_from: str | None = None
    default_training: bool = False
    details: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    source: str = UNIVERSAL
    origin: str | None = None
    origin_line: int = 0  # the line of a taxonomy file that names ``source`` (its header)
    maps: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict, compare=False, repr=False)
    table: str | None = field(default=None, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class RemapTable:
    """A pairwise table from one taxonomy's label values to another's (255 = ignore)."""

    source: str
    target: str
    pairs: tuple[tuple[int, str, int, str], ...]  # (source id, source name, target id, target name)


def _read_text(*parts: str) -> str:
    return resources.files("mseg_semantic.taxonomy").joinpath("tables", *parts).read_text(encoding="utf-8")


def _read_tsv(*parts: str) -> list[dict[str, str]]:
    """Rows of one of our TSV tables (``#`` lines are comments, the first other line is the header)."""
    lines = [line for line in _read_text(*parts).splitlines() if line and not line.startswith("#")]
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def split_sources(cell: str) -> tuple[str, ...]:
    """The source classes listed in one cell of a test-taxonomy table (``a; b; c``; empty: none)."""
    return tuple(u.strip() for u in cell.split(";") if u.strip())


@functools.cache
def _index() -> dict:
    return yaml.safe_load(_read_text("taxonomies.yaml"))


def taxonomy_names(kind: str | None = None) -> list[str]:
    """Names of every known taxonomy (optionally only one ``kind``: universal, naive, train, test, raw)."""
    if kind is not None and kind not in KINDS:
        raise TaxonomyError(f"unknown taxonomy kind {kind!r}; known kinds: {', '.join(KINDS)}")
    names = [entry["name"] for entry in _index()["taxonomies"]]
    names.insert(1, NAIVE)
    return [n for n in names if kind is None or get_taxonomy(n).kind == kind]


def _unknown(name: str) -> TaxonomyError:
    known = taxonomy_names()
    import difflib

    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return TaxonomyError(f"unknown taxonomy {name!r}.{hint} Known taxonomies: {', '.join(known)}")


#: Taxonomies of the user's own known by name in this process (a master table read for training or from a
#: checkpoint); they are not built in, so :func:`taxonomy_names` does not list them.
_REGISTERED: dict[str, Taxonomy] = {}


def register_taxonomy(taxonomy: Taxonomy) -> Taxonomy:
    """Make ``taxonomy`` known to :func:`get_taxonomy` by its name (e.g. a model's universal taxonomy of its own).

    Registering the same table again is harmless; a built-in name, or a different table under a name already
    registered, is a :class:`TaxonomyError` (lookup tables are cached by name)."""
    if taxonomy.name in taxonomy_names():
        raise TaxonomyError(f"{taxonomy.origin}: name {taxonomy.name!r} is a built-in taxonomy's; choose another")
    known = _REGISTERED.get(taxonomy.name)
    if known is not None and (known.table, known.classes) != (taxonomy.table, taxonomy.classes):
        raise TaxonomyError(
            f"two different taxonomies are named {taxonomy.name!r} ({known.origin} and {taxonomy.origin}); "
            "give one another name ('# name: ...' at the top of the file)"
        )
    _REGISTERED.setdefault(taxonomy.name, taxonomy)
    return _REGISTERED[taxonomy.name]


def get_taxonomy(name: str) -> Taxonomy:
    """The :class:`Taxonomy` called ``name``; raises :class:`TaxonomyError` listing the known names."""
    registered = _REGISTERED.get(name)
    return registered if registered is not None else _builtin_taxonomy(name)


@functools.cache
def _builtin_taxonomy(name: str) -> Taxonomy:
    if name == NAIVE:
        return _naive_taxonomy()
    entries = {entry["name"]: entry for entry in _index()["taxonomies"]}
    if name not in entries:
        raise _unknown(name)
    entry = entries[name]
    rows = _read_tsv(f"{name}.tsv")
    kind = entry["kind"]
    classes = tuple(row["name"] for row in rows)
    if kind == "train":
        universal = tuple((row["universal"],) for row in rows)
    elif kind == "test":
        universal = tuple(split_sources(row["universal"]) for row in rows)
    elif kind == "universal":
        universal = tuple((row["name"],) for row in rows)
    else:
        universal = tuple(() for _ in rows)
    colors = None
    if "color" in (rows[0] if rows else {}):
        colors = tuple(tuple(int(v) for v in row["color"].split(",")) for row in rows)
    details = {}
    if kind == "universal":
        details = {key: tuple(row[key] for row in rows) for key in ("group", "wordnet", "definition")}
    taxonomy = Taxonomy(
        name=name,
        kind=kind,
        description=entry.get("description", ""),
        classes=classes,
        universal=universal,
        colors=colors,  # type: ignore[arg-type]
        relabeled_from=entry.get("relabeled_from"),
        default_training=bool(entry.get("default_training", False)),
        details=details,
    )
    if taxonomy.num_classes != entry["num_classes"]:
        raise TaxonomyError(f"table {name}.tsv has {taxonomy.num_classes} rows, the index says {entry['num_classes']}")
    return taxonomy


def class_names(taxonomy: str) -> list[str]:
    """Class names of ``taxonomy`` in label-value order (index ``i`` is the class with pixel value ``i``).

    For the naive taxonomy the list has 316 entries; entry 255 is ``"unlabeled"``, an output that never
    receives a training label because 255 is the ignore value.
    """
    return list(get_taxonomy(taxonomy).classes)


@functools.cache
def _naive_taxonomy() -> Taxonomy:
    """The naive-merge baseline: lower-cased class names of the unrelabeled training sets, first one wins.

    Ids are given in order of first appearance, dataset by dataset, skipping 255 (the ignore value), so 315
    names occupy ids 0..254 and 256..315 and the model has 316 outputs.
    """
    merged: dict[str, list[str]] = {}
    for dataset in UNRELABELED_TRAIN_DATASETS:
        for cls in get_taxonomy(dataset).classes:
            merged.setdefault(cls.lower(), []).append(f"{dataset}:{cls}")
    names = list(merged)
    names.insert(IGNORE_LABEL, UNLABELED)
    sources = [tuple(merged.get(n, ())) if i != IGNORE_LABEL else () for i, n in enumerate(names)]
    return Taxonomy(
        name=NAIVE,
        kind=NAIVE,
        description="Naive merge of the 7 unrelabeled training taxonomies by lower-cased class name (316 outputs)",
        classes=tuple(names),
        universal=tuple(sources),
    )


@functools.cache
def remap_tables() -> dict[tuple[str, str], RemapTable]:
    """Every pairwise remap table, keyed by (source, target)."""
    tables = {}
    for entry in _index()["remaps"]:
        source, target = entry["source"], entry["target"]
        rows = _read_tsv("remap", f"{source}_to_{target}.tsv")
        pairs = tuple((int(r["source_id"]), r["source"], int(r["target_id"]), r["target"]) for r in rows)
        tables[(source, target)] = RemapTable(source, target, pairs)
    return tables
