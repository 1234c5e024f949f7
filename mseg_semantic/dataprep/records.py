"""Relabeling records: which segment of which image becomes which class.

MSeg's 381 original record files (mseg-api ``mseg/relabeled_data`` at :data:`SOURCE_COMMIT`, 228,776 lines, CC BY 4.0)
ship inside the package, gzip-compressed, with their manifest ``records.tsv``; ``mseg data relabel`` uses them unless
``--records DIR`` names another folder.

A records folder holds ``records.tsv`` (tab-separated; header ``dataset split from to file``, optionally followed by
``lines`` and ``sha256`` columns, which are then checked) and the record files it names, in the original mseg-api
line format: ``<image id>_<segment id>.<ext>`` (the extension means nothing). Rows are applied in manifest order,
lines in file order; later writes win where masks overlap. A record file may be stored gzip-compressed
(``file.gz``); its ``sha256`` is that of the uncompressed text, so it equals the hash of mseg-api's own file.

Everything here is checked before any label file is written: the manifest (names of known classes, files that
exist, each file's line count and content hash), every line's grammar, duplicates (a segment named twice for one
image, with both lines named), and that each named image is in the dataset's split list (in a run restricted with
``--list``, lines for other images are only parsed). Problems name ``file:line``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mseg_semantic.errors import InputError
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.taxonomy.tables import IGNORE_LABEL, UNLABELED

HEADER = ("dataset", "split", "from", "to", "file")
CHECKS = ("lines", "sha256")
"""Optional manifest columns after :data:`HEADER`, checked against each record file when present."""
TASKS = (
    "ade20k-150",
    "bdd",
    "cityscapes-19",
    "cityscapes-34",
    "coco-panoptic-133",
    "idd-39",
    "mapillary-public65",
    "sunrgbd-37",
)
"""The taxonomies X that are relabeled into X-relabeled (the ``dataset`` column of ``records.tsv``)."""

SOURCE_COMMIT = "2bd00ae8c224d94cbc7ff9b47fde6ae8420adc27"
"""The mseg-api commit whose ``mseg/relabeled_data/`` files ship in the package."""


@dataclass(frozen=True)
class Record:
    """One manifest row: every segment listed in ``file`` goes from class ``orig`` to ``new`` (split ``split``)."""

    dataset: str
    split: str
    orig: str
    new: str
    file: Path
    lines: int | None
    where: str  # "records.tsv:<line>"
    sha256: str | None = None


@dataclass(frozen=True)
class Update:
    """One segment of one image to overwrite: ids in the X-relabeled taxonomy (255 = unlabeled)."""

    segment: int
    orig_id: int
    new_id: int
    where: str  # "<record file>:<line>"


ImageKey = tuple[str, str]  # (parent folder of the label file, image stem)


def shipped_dir() -> Path:
    """The package's records folder: ``records.tsv`` and the original record files, gzip-compressed."""
    return Path(str(resources.files("mseg_semantic.dataprep").joinpath("records")))


def _record_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def resolve(records_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """(manifest file, folder the manifest's ``file`` paths are relative to) for ``--records DIR`` or the default.

    ``DIR`` is a folder with its own ``records.tsv``, or a copy of mseg-api's ``mseg/relabeled_data`` (used with
    the shipped manifest, so its files must be the original ones). Without ``DIR``: the records in the package.
    """
    shipped = shipped_dir() / "records.tsv"
    if records_dir is None:
        return shipped, shipped_dir()
    folder = Path(records_dir).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: records folder does not exist")
    if (folder / "records.tsv").is_file():
        return folder / "records.tsv", folder
    if _manifest_files(shipped) & {p.name for p in folder.iterdir() if p.is_dir()}:
        return shipped, folder  # the original's folder layout: the shipped manifest describes it
    raise InputError(f"{folder}: no records.tsv (tab-separated: {' '.join(HEADER)}) in the records folder")


def _manifest_files(manifest: Path) -> set[str]:
    """Top-level folders of the files a manifest names."""
    with open(manifest, encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))[1:]
    return {row[4].split("/", 1)[0] for row in rows if len(row) >= 5}


def read_manifest(manifest: Path, folder: Path, *, datasets: tuple[str, ...] | None = None) -> list[Record]:
    """The manifest's rows (only those of ``datasets`` when given), checked; files must exist."""
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest}: cannot read the records manifest ({exc})") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows or tuple(c.strip() for c in rows[0][:5]) != HEADER:
        raise InputError(f"{manifest}:1: header must be {' '.join(HEADER)} (tab-separated)")
    extra = {name.strip(): i for i, name in enumerate(rows[0][5:], start=5) if name.strip() in CHECKS}
    records = []
    first_row: dict[tuple[str, str], str] = {}
    for number, row in enumerate(rows[1:], start=2):
        where = f"{manifest}:{number}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 5:
            raise InputError(f"{where}: expected {len(HEADER)} tab-separated columns, got {len(row)}")
        dataset, split, orig, new, file = (c.strip() for c in row[:5])
        if dataset not in TASKS:
            raise InputError(f"{where}: unknown dataset {dataset!r}; expected one of {', '.join(TASKS)}")
        if datasets is not None and dataset not in datasets:
            continue
        if split not in ("train", "val"):
            raise InputError(f"{where}: split must be 'train' or 'val', got {split!r}")
        classes = set(get_taxonomy(f"{dataset}-relabeled").classes) | {UNLABELED}
        for role, name in (("from", orig), ("to", new)):
            if name not in classes:
                raise InputError(f"{where}: {role} class {name!r} is not a class of {dataset}-relabeled")
        first = first_row.setdefault((dataset, file), where)
        if first != where:
            raise InputError(f"{where}: names record file {file} for {dataset} again (first at {first}); a file is "
                             "applied once per dataset: give each change its own file")  # fmt: skip
        path = _record_path(folder, file)
        if path is None:
            raise InputError(f"{where}: record file {folder / file} does not exist")
        lines, sha256 = (row[extra[c]].strip() if c in extra and len(row) > extra[c] else "" for c in CHECKS)
        if lines and not lines.isdigit():
            raise InputError(f"{where}: lines must be a whole number, got {lines!r}")
        records.append(Record(dataset, split, orig, new, path, int(lines) if lines else None, where, sha256 or None))
    return records


def read_record_file(path: Path, *, lines: int | None = None, sha256: str | None = None, where: str = "") -> str:
    """The text of a record file (gunzipped), checked against the manifest's line count and content hash."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read the record file ({exc})") from None
    source = f" ({where})" if where else ""
    count = sum(1 for line in text.splitlines() if line.strip())
    if lines is not None and count != lines:
        raise InputError(f"{path}: {count} entries, but the manifest{source} says {lines}")
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(
            f"{path}: content differs from the record file the manifest{source} names (sha256 mismatch); "
            "to apply edited records, give --records a folder with its own records.tsv"
        )
    return text


def read_record_lines(record: Record) -> list[str]:
    """A record file's lines (stripped; blank lines kept as ''), checked against the manifest."""
    text = read_record_file(record.file, lines=record.lines, sha256=record.sha256, where=record.where)
    return [line.strip() for line in text.splitlines()]


def check_records(manifest: Path, folder: Path) -> list[str]:
    """Problems of a records folder (empty when every file the manifest names is there, whole and unchanged)."""
    try:
        records = read_manifest(manifest, folder)
    except InputError as exc:
        return [str(exc)]
    problems = []
    for record in {r.file: r for r in records}.values():  # Cityscapes files are named twice
        try:
            read_record_lines(record)
        except InputError as exc:
            problems.append(str(exc))
    return problems


def parse_line(task: str, line: str, split: str) -> tuple[str, str, int]:
    """(parent folder, image stem, segment id) named by a record line, by the original's per-dataset grammar.

    Raises ValueError when the line does not fit the grammar.
    """
    name = line.rsplit("/", 1)[-1]
    stem_of_line = name.rsplit(".", 1)[0] if "." in name else name
    fields = stem_of_line.split("_")
    if len(fields) < 2:
        raise ValueError("expected '<image id>_<segment id>.<ext>'")
    segment = int(fields[-1])  # ValueError for a non-number
    if segment < 0:
        raise ValueError("segment id must not be negative")
    family = task.removesuffix("-relabeled")
    if family == "ade20k-150":
        return ("training" if split == "train" else "validation"), "_".join(fields[:-1]), segment
    if family == "coco-panoptic-133":
        return f"{split}2017", "_".join(fields[:-1]), segment
    if family == "bdd":
        return split, fields[0], segment
    if family == "sunrgbd-37":
        return ("train" if split == "train" else "test"), fields[0], segment
    if family in ("cityscapes-19", "cityscapes-34", "idd-39", "mapillary-public65"):
        if len(fields) < 3:
            raise ValueError("expected '<sequence>_<image name>_<segment id>.<ext>'")
        if family == "mapillary-public65":
            return "labels", "_".join(fields[1:-1]), segment
        if not fields[0].startswith("seq"):
            raise ValueError("expected the first field to start with 'seq'")
        return fields[0].removeprefix("seq"), "_".join(fields[1:-1]), segment
    raise ValueError(f"no record grammar for {task!r}")


def class_ids(task: str) -> dict[str, int]:
    """Class name -> id in ``task``-relabeled, with ``unlabeled`` -> 255."""
    ids = {name: i for i, name in enumerate(get_taxonomy(f"{task}-relabeled").classes)}
    ids[UNLABELED] = IGNORE_LABEL
    return ids


def updates_by_image(
    task: str,
    records: list[Record],
    split: str,
    known: set[ImageKey],
    in_run: set[ImageKey] | None = None,
) -> dict[ImageKey, list[Update]]:
    """Every update of ``split`` for ``task``, grouped per image in application order.

    ``known``: the images of the split list (a record naming another image is an error); ``in_run``: the images
    being processed (``--list``); lines for other images are skipped before any check but their grammar.
    """
    ids = class_ids(task)
    out: dict[ImageKey, list[Update]] = defaultdict(list)
    seen: dict[tuple[str, str, int], str] = {}
    for record in records:
        if record.dataset != task or record.split != split:
            continue
        orig_id, new_id = ids[record.orig], ids[record.new]
        for number, line in enumerate(read_record_lines(record), start=1):
            if not line:
                continue
            where = f"{record.file}:{number}"
            try:
                parent, stem, segment = parse_line(task, line, split)
            except ValueError as exc:
                raise InputError(f"{where}: cannot parse record line {line!r} ({exc})") from None
            key = (parent, stem)
            if in_run is not None and key not in in_run:
                continue
            if key not in known:
                raise InputError(f"{where}: record names image {stem!r} ({parent}), which is not in the {split} list")
            first = seen.setdefault((parent, stem, segment), where)
            if first != where:
                raise InputError(f"{where}: segment {segment} of {stem!r} is already relabeled by {first}")
            out[key].append(Update(segment, orig_id, new_id, where))
    return dict(out)
