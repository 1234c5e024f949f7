"""Move labels and probabilities between taxonomies.

Two kinds of maps exist, as in MSeg:

- **label maps** (training taxonomy -> universal, raw -> semseg, ...): a function on label values, applied as a
  lookup table. Unlike the original (which silently sent unknown values to universal class 0, ``backpack``), a
  value that is neither a class nor 255 raises :class:`TaxonomyError` unless ``strict=False``.
- **probability maps** (universal -> test taxonomy): a fixed 0/1 matrix ``P`` of shape (test classes, 194);
  test probabilities are ``P @ p_universal`` per pixel, i.e. the sum of the universal classes mapped to each test
  class (the paper's linear mapping; the original implements it as a frozen 1x1 convolution).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from mseg_semantic.errors import TaxonomyError
from mseg_semantic.taxonomy.files import FILE_KIND, source_mismatch
from mseg_semantic.taxonomy.tables import (
    IGNORE_LABEL,
    NAIVE,
    UNIVERSAL,
    UNLABELED,
    UNRELABELED_TRAIN_DATASETS,
    Taxonomy,
    get_taxonomy,
    remap_tables,
)

if TYPE_CHECKING:
    import torch

_INVALID = -1  # lookup-table entry of a value that is not a label of the source taxonomy


class TaxonomyConverter:
    """Label and probability conversion between every taxonomy in :func:`taxonomy_names`.

    Stateless apart from caches, so one instance can be shared (``TaxonomyConverter()`` is cheap).
    """

    ignore_label: int = IGNORE_LABEL

    # ------------------------------------------------------------------ label maps
    def lookup_table(self, source: str, target: str = UNIVERSAL) -> np.ndarray:
        """The label lookup table from ``source`` to ``target`` as an int64 array.

        ``table[v]`` is the target label of source value ``v`` (255 = ignore) or -1 where ``v`` is not a label
        of ``source``. The table has at least 256 entries, so any uint8 label map can index it.
        """
        return _lookup_table(source, target).copy()

    def convert_labels(self, label: Any, source: str | Taxonomy, target: str | Taxonomy, *, strict: bool = True) -> Any:
        """Map a label map of taxonomy ``source`` to taxonomy ``target``.

        ``label`` is a numpy array or torch tensor of any integer dtype and shape; the result has the same
        shape, type and device, and the same dtype when it can hold the target values (else int64).
        Values that are not labels of ``source`` raise :class:`TaxonomyError` naming them; with
        ``strict=False`` they become 255 instead. A taxonomy read from a file converts only to itself (a check).
        """
        return _apply_table(label, _lookup_table(source, target), source, strict)

    def to_universal(self, label: Any, taxonomy: str, *, strict: bool = True) -> Any:
        """Training labels of ``taxonomy`` -> universal ids (0..193); 255 and unmapped classes become 255.

        Works for every training taxonomy (relabeled or not), for ``universal`` itself (a validity check), and
        for a raw taxonomy that a pairwise table connects to a training one (e.g. ``sunrgbd-38``).
        """
        return self.convert_labels(label, taxonomy, UNIVERSAL, strict=strict)

    def to_naive(self, label: Any, taxonomy: str, *, strict: bool = True) -> Any:
        """Labels of an unrelabeled training taxonomy -> naive-taxonomy ids (0..315, never 255)."""
        return self.convert_labels(label, taxonomy, NAIVE, strict=strict)

    # ------------------------------------------------------------------ probability maps
    def universal_to_test_matrix(self, taxonomy: str | Taxonomy, source: str | None = None) -> np.ndarray:
        """0/1 float32 matrix of shape (classes of ``taxonomy``, classes of ``source``).

        ``source`` is ``"universal"`` (194 columns, the default) or ``"naive"`` (316 columns). Entry [t, u] is 1
        when source class ``u`` feeds test class ``t``; each column has at most one 1. ``taxonomy`` may also be a
        taxonomy read from a file (:func:`~mseg_semantic.taxonomy.files.load_taxonomy_file`): its source is the one
        the file names (``universal``, ``camvid-11``, ...).
        """
        if isinstance(taxonomy, Taxonomy) and taxonomy.kind != FILE_KIND:
            taxonomy = taxonomy.name
        default = taxonomy.source if isinstance(taxonomy, Taxonomy) else UNIVERSAL
        return _test_matrix(taxonomy, source or default).copy()

    def universal_probs_to(self, taxonomy: str | Taxonomy, probs: torch.Tensor) -> torch.Tensor:
        """Probabilities over universal (194) or naive (316) classes -> probabilities over ``taxonomy``.

        ``probs`` is a torch tensor (N, C, H, W) or (C, H, W); the source taxonomy follows from C. Each output
        channel is the sum of the source channels mapped to it (no renormalisation: for camvid-11 and the
        like most universal mass is dropped, so only the argmax is meaningful). Same dtype and device as
        the input. Mapping to the source taxonomy itself returns ``probs`` unchanged. A taxonomy read from a file
        takes the probabilities of the taxonomy it names as its source (C = that taxonomy's class count).
        """
        import torch

        channels = probs.shape[-3] if probs.dim() >= 3 else -1
        sources = {get_taxonomy(UNIVERSAL).num_classes: UNIVERSAL, get_taxonomy(NAIVE).num_classes: NAIVE}
        expected = "194 (universal) or 316 (naive)"
        if isinstance(taxonomy, Taxonomy) and taxonomy.kind == FILE_KIND:
            sources = {get_taxonomy(taxonomy.source).num_classes: taxonomy.source}
            expected = f"{next(iter(sources))} ({taxonomy.source}, the source of {taxonomy.origin})"
        elif isinstance(taxonomy, Taxonomy):
            taxonomy = taxonomy.name
        if probs.dim() not in (3, 4) or channels not in sources:
            raise TaxonomyError(
                f"expected probabilities of shape (N, C, H, W) or (C, H, W) with C = {expected}, "
                f"got shape {tuple(probs.shape)}"
            )
        source = sources[channels]
        if taxonomy == source:
            return probs
        matrix = torch.from_numpy(_test_matrix(taxonomy, source)).to(device=probs.device, dtype=probs.dtype)
        return torch.einsum("tc,...chw->...thw", matrix, probs)

    def universal_logits_to(self, taxonomy: str | Taxonomy, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the class axis, then :meth:`universal_probs_to` (the original test-time transform)."""
        return self.universal_probs_to(taxonomy, logits.softmax(dim=-3))


# ---------------------------------------------------------------------- producible classes
def producible_classes(dataset: str, taxonomy: str) -> tuple[int, ...]:
    """Class ids of ``taxonomy`` that labels of ``dataset`` map to, in increasing order.

    ``taxonomy`` is a model's output taxonomy (``universal``, ``naive`` or the dataset's own): its other classes
    never occur in the ground truth of ``dataset``, so evaluation and training validation leave them out of the
    mean IoU (:func:`unproducible_classes`). 255 is the ignore value, not a class, except in the naive taxonomy,
    whose class 255 (``unlabeled``) no label produces; naive ids above 255 are classes like any other.
    Raises :class:`TaxonomyError` when no label map leads from ``dataset`` to ``taxonomy``.
    """
    table = _lookup_table(dataset, taxonomy)
    return tuple(sorted({int(v) for v in table if v >= 0 and v != IGNORE_LABEL}))


def unproducible_classes(dataset: str, taxonomy: str) -> tuple[int, ...]:
    """The class ids of ``taxonomy`` not in :func:`producible_classes`: those left out of the means."""
    produced = set(producible_classes(dataset, taxonomy))
    return tuple(c for c in range(_taxonomy(taxonomy).num_classes) if c not in produced)


# ---------------------------------------------------------------------- cached tables
def _taxonomy(spec: str | Taxonomy) -> Taxonomy:
    """A built-in taxonomy by name, or a taxonomy read from a file as it is (it has no name to look up)."""
    return spec if isinstance(spec, Taxonomy) else get_taxonomy(spec)


@functools.cache
def _lookup_table(source: str | Taxonomy, target: str | Taxonomy) -> np.ndarray:
    table = _find_table(source, target)
    if table is None:
        src, dst = _taxonomy(source), _taxonomy(target)
        source, target = src.name, dst.name
        reachable = ", ".join(_targets_of(source)) or "none"
        hint = ""
        if "test" in (src.kind, dst.kind):
            hint = (
                ". Test taxonomies have no label map to or from universal ids: universal (or naive) probabilities "
                "are mapped onto them with universal_probs_to"
            )
        raise TaxonomyError(
            f"no label mapping from {source!r} ({src.kind}) to {target!r} ({dst.kind}); "
            f"labels of {source!r} can be converted to: {reachable}{hint}"
        )
    return table


@functools.cache
def _find_table(source: str | Taxonomy, target: str | Taxonomy) -> np.ndarray | None:
    """The lookup table from ``source`` to ``target`` (identity, direct, or one pairwise hop), or None.

    A taxonomy read from a file has the identity only (its labels are checked with it): it is reached from its
    source by probabilities, not labels."""
    src = _taxonomy(source)
    dst = _taxonomy(target)  # unknown names raise here
    if source == target:
        table = np.full(max(IGNORE_LABEL + 1, src.num_classes), _INVALID, dtype=np.int64)
        table[: src.num_classes] = np.arange(src.num_classes)
        if src.num_classes <= IGNORE_LABEL:
            table[IGNORE_LABEL] = IGNORE_LABEL
        return table
    if FILE_KIND in (src.kind, dst.kind):
        return None
    direct = _direct_table(source, target)
    if direct is not None:
        return direct
    # One hop through a pairwise table: raw (e.g. sunrgbd-38) -> semseg (sunrgbd-37) -> universal.
    for a, b in remap_tables():
        second = _direct_table(b, target) if a == source else None
        if second is not None:
            first = _direct_table(a, b)
            assert first is not None
            table = np.full_like(first, _INVALID)
            valid = first >= 0
            table[valid] = second[first[valid]]
            return table
    return None


def _targets_of(source: str) -> list[str]:
    from mseg_semantic.taxonomy.tables import taxonomy_names

    return [name for name in taxonomy_names() if name != source and _find_table(source, name) is not None]


@functools.cache
def _direct_table(source: str, target: str) -> np.ndarray | None:
    """A table given by the data itself (no composition), or None."""
    src, dst = get_taxonomy(source), get_taxonomy(target)
    size = max(IGNORE_LABEL + 1, src.num_classes)
    table = np.full(size, _INVALID, dtype=np.int64)
    if (source, target) in remap_tables():
        for sid, _, tid, _ in remap_tables()[(source, target)].pairs:
            table[sid] = tid
        return table
    if source in dst.maps and dst.kind == UNIVERSAL and src.kind == "train":  # a master table's column
        return _class_table(dst.maps[source], dst.classes, size)
    if target == UNIVERSAL and src.kind == "train":
        return _class_table(src.universal, dst.classes, size)
    if target == NAIVE and source in UNRELABELED_TRAIN_DATASETS:
        nid = {name: i for i, name in enumerate(dst.classes) if i != IGNORE_LABEL}
        for i, name in enumerate(src.classes):
            table[i] = nid[name.lower()]
        table[IGNORE_LABEL] = IGNORE_LABEL
        return table
    return None


def _class_table(targets: tuple[tuple[str, ...], ...], classes: tuple[str, ...], size: int) -> np.ndarray:
    """The lookup table of a training taxonomy into a universal one: label ``i`` becomes the class named
    ``targets[i]`` (one name; ``unlabeled``: 255), 255 stays 255, other values are invalid."""
    index = {name: i for i, name in enumerate(classes)}
    index[UNLABELED] = IGNORE_LABEL
    table = np.full(size, _INVALID, dtype=np.int64)
    for i, (name,) in enumerate(targets):
        table[i] = index[name]
    table[IGNORE_LABEL] = IGNORE_LABEL
    return table


def _summing_matrix(groups: tuple[tuple[str, ...], ...], classes: tuple[str, ...]) -> np.ndarray:
    """The 0/1 matrix whose row ``t`` sums the source classes named in ``groups[t]`` (out of ``classes``)."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(groups), len(classes)), dtype=np.float32)
    for t, names in enumerate(groups):
        for name in names:
            matrix[t, index[name]] = 1.0
    return matrix


@functools.cache
def _test_matrix(taxonomy: str | Taxonomy, source: str) -> np.ndarray:
    if isinstance(taxonomy, Taxonomy):
        return _file_matrix(taxonomy, source)
    test = get_taxonomy(taxonomy)
    if get_taxonomy(source).kind == UNIVERSAL and source != UNIVERSAL:
        return _master_matrix(test, get_taxonomy(source))
    if source not in (UNIVERSAL, NAIVE):
        raise TaxonomyError(f"probabilities can only be mapped from 'universal' or 'naive', not {source!r}")
    src = get_taxonomy(source)
    if test.kind != "test":
        raise TaxonomyError(
            f"{taxonomy!r} is a {test.kind} taxonomy; universal probabilities map only to test taxonomies: "
            + ", ".join(n for n in _test_names())
        )
    if source == UNIVERSAL:
        return _summing_matrix(test.universal, src.classes)
    # The naive baseline matches test classes to naive classes by lower-cased name; unmatched rows stay 0.
    matrix = np.zeros((test.num_classes, src.num_classes), dtype=np.float32)
    nid = {name: i for i, name in enumerate(src.classes) if i != IGNORE_LABEL}
    for t, name in enumerate(test.classes):
        if name.lower() in nid:
            matrix[t, nid[name.lower()]] = 1.0
    return matrix


def _master_matrix(test: Taxonomy, master: Taxonomy) -> np.ndarray:
    """Probabilities of a master table's rows -> a test taxonomy, by the table's own column for it."""
    if test.name not in master.maps or test.kind != "test":
        columns = ", ".join(n for n in master.maps if get_taxonomy(n).kind == "test") or "none"
        raise TaxonomyError(
            f"the universal taxonomy {master.name!r} ({master.origin}) has no column for the test taxonomy "
            f"{test.name!r}; its test columns: {columns}"
        )
    return _summing_matrix(master.maps[test.name], master.classes)


def _file_matrix(taxonomy: Taxonomy, source: str) -> np.ndarray:
    """The matrix of a taxonomy read from a file: row t sums the classes of its source listed on row t."""
    if source != taxonomy.source:
        raise source_mismatch(taxonomy, source)
    return _summing_matrix(taxonomy.universal, get_taxonomy(source).classes)


def _test_names() -> list[str]:
    from mseg_semantic.taxonomy.tables import taxonomy_names

    return taxonomy_names("test")


# ---------------------------------------------------------------------- applying a table
def _apply_table(label: Any, table: np.ndarray, source: str, strict: bool) -> Any:
    """Index ``table`` with ``label`` (numpy or torch), checking for values outside the source taxonomy."""
    if isinstance(label, np.ndarray):
        if not np.issubdtype(label.dtype, np.integer):
            raise TaxonomyError(f"label map must have an integer dtype, got {label.dtype}")
        if label.size == 0:
            return label.copy()
        lo, hi = int(label.min()), int(label.max())
        if lo < 0 or hi >= len(table):
            table = _widen(table, lo, hi)
            offset = -lo if lo < 0 else 0
            out = table[label.astype(np.int64) + offset]
        else:
            out = table[label]
        bad = out == _INVALID
        if bad.any():
            if strict:
                raise _bad_values(np.unique(label[bad]).tolist(), source)
            out[bad] = IGNORE_LABEL
        return out.astype(_result_dtype_np(label.dtype, table), copy=False)

    import torch

    if not isinstance(label, torch.Tensor):
        raise TaxonomyError(f"label map must be a numpy array or a torch tensor, got {type(label).__name__}")
    if label.dtype.is_floating_point or label.dtype.is_complex or label.dtype == torch.bool:
        raise TaxonomyError(f"label map must have an integer dtype, got {label.dtype}")
    if label.numel() == 0:
        return label.clone()
    lo, hi = int(label.min()), int(label.max())
    offset = 0
    if lo < 0 or hi >= len(table):
        table = _widen(table, lo, hi)
        offset = -lo if lo < 0 else 0
    lut = torch.from_numpy(table).to(label.device)
    # A uint8 tensor used as an index would be read as a boolean mask: index with int64.
    out = lut[label.long() + offset]
    bad = out == _INVALID
    if bool(bad.any()):
        if strict:
            raise _bad_values(torch.unique(label[bad]).tolist(), source)
        out[bad] = IGNORE_LABEL
    dtype = label.dtype if _fits_torch(label.dtype, table) else torch.int64
    return out.to(dtype)


def _widen(table: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Extend a table with invalid entries so it covers [min(lo, 0), max(hi, len-1)] (offset by -lo)."""
    start = min(lo, 0)
    wide = np.full(max(hi + 1, len(table)) - start, _INVALID, dtype=np.int64)
    wide[-start : -start + len(table)] = table
    return wide


def _max_target(table: np.ndarray) -> int:
    return int(table.max())


def _result_dtype_np(dtype: np.dtype, table: np.ndarray) -> np.dtype:
    info = np.iinfo(dtype)
    return dtype if info.max >= _max_target(table) else np.dtype(np.int64)


def _fits_torch(dtype: torch.dtype, table: np.ndarray) -> bool:
    import torch

    return torch.iinfo(dtype).max >= _max_target(table)


def _bad_values(values: list[int], source: str | Taxonomy) -> TaxonomyError:
    taxonomy = _taxonomy(source)
    n = taxonomy.num_classes
    shown = ", ".join(str(v) for v in values[:20]) + (", ..." if len(values) > 20 else "")
    return TaxonomyError(
        f"label values [{shown}] are not classes of {taxonomy.name!r} (valid: 0..{n - 1} and 255 = unlabeled); "
        f"pass strict=False to map them to 255",
        keywords={"strict": "strict=False"},
    )
