"""Convert a folder of label PNGs from one taxonomy to another (``mseg remap``).

This is the data-preparation step of the original (``remap_dataset.py``): raw labels as distributed (e.g.
cityscapes-34, camvid-32 RGB images) become the semseg labels the training and evaluation code reads (e.g.
cityscapes-19, camvid-11). Inputs are never modified; outputs are written atomically, mirroring the input tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.fileio import read_label, write_label
from mseg_semantic.taxonomy.converter import TaxonomyConverter
from mseg_semantic.taxonomy.tables import get_taxonomy

LABEL_SUFFIXES = (".png",)


def rgb_to_ids(rgb: np.ndarray, taxonomy: str, *, strict: bool = True, unmatched: int = 255) -> np.ndarray:
    """Colour-coded labels (H, W, 3 RGB) of an RGB-encoded taxonomy -> class ids (H, W) uint8.

    Colours not in the taxonomy's palette raise :class:`TaxonomyError` (``strict=False``: they become
    ``unmatched``; the original data preparation used class 0 there, which ``mseg data prepare`` keeps).
    """
    colors = get_taxonomy(taxonomy).colors
    if colors is None:
        raise TaxonomyError(f"{taxonomy!r} labels are not colour-coded; expected a single-channel label map")
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.int64)
    order = np.argsort(palette, kind="stable")
    pos = np.clip(np.searchsorted(palette[order], code), 0, len(palette) - 1)
    found = palette[order][pos] == code
    ids = np.where(found, order[pos], unmatched)
    if strict and not found.all():
        bad = np.unique(code[~found])[:5]
        shown = ", ".join(f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in bad.tolist())
        raise TaxonomyError(f"colours not in the {taxonomy} palette: {shown}")
    return ids.astype(np.uint8 if len(colors) <= 255 else np.uint16)


def find_label_files(folder: Path) -> list[Path]:
    """Label files below ``folder`` (recursively), sorted, hidden files skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES and not p.name.startswith(".")
    )


def remap_label_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    source: str,
    target: str,
    *,
    overwrite: bool = False,
    strict: bool = True,
    workers: int = 1,
    progress: bool | Callable = True,
) -> list[Path]:
    """Convert every label PNG below ``input_dir`` from ``source`` to ``target``, mirrored into ``output_dir``.

    Returns the written files. Existing outputs are an error unless ``overwrite=True``; the output folder may
    not be (or lie inside) the input folder, so inputs are never replaced.
    """
    converter = TaxonomyConverter()
    converter.lookup_table(source, target)  # fail early on an impossible pair
    src = Path(input_dir)
    dst = Path(output_dir)
    if not src.is_dir():
        raise InputError(f"{src}: input folder does not exist")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise InputError(f"{dst}: the output folder must not be the input folder or lie inside it")
    files = find_label_files(src)
    if not files:
        raise InputError(f"{src}: no label files ({', '.join(LABEL_SUFFIXES)}) found")
    outputs = [dst / f.relative_to(src) for f in files]
    existing = [o for o in outputs if o.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]}: output exists ({len(existing)} in all); pass --overwrite to replace them")

    def convert(pair: tuple[Path, Path]) -> Path:
        in_path, out_path = pair
        label = read_label(in_path)
        try:
            if label.ndim == 3:
                label = rgb_to_ids(label, source, strict=strict)
            out = converter.convert_labels(label, source, target, strict=strict)
        except TaxonomyError as exc:
            raise InputError(f"{in_path}: {exc}", keywords=exc.keywords) from None
        write_label(out_path, out)
        return out_path

    pairs = list(zip(files, outputs, strict=True))
    bar = _progress(len(pairs), progress, f"{source} -> {target}")
    written = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path in pool.map(convert, pairs):
            written.append(path)
            bar.update(1)
    bar.close()
    return written


def _progress(total: int, progress: bool | Callable, desc: str):
    from tqdm import tqdm

    if callable(progress):
        return progress(total=total, desc=desc)
    return tqdm(total=total, desc=desc, unit="file", disable=not progress)
