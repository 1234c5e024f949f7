"""Relabeling records: which segment of which image becomes which class.

A records folder holds ``records.tsv`` (tab-separated; header ``dataset split from to file``, optionally a
``lines`` column that is then checked) and the record files it names, in the original mseg-api line format:
``<image id>_<segment id>.<ext>`` (the extension means nothing). Rows are applied in manifest order, lines in file
order; later writes win where masks overlap. A record file may also be stored gzip-compressed (``file.gz``).

Everything here is checked before any label file is written: the manifest (names of known classes, files that
exist), every line's grammar, duplicates (a segment named twice for one image, with both lines named), and that each
named image is in the dataset's split list (in a run restricted with ``--list``, lines for other images are only
parsed). Problems name ``file:line``.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mseg_semantic.errors import InputError
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.taxonomy.tables import IGNORE_LABEL, UNLABELED

HEADER = ("dataset", "split", "from", "to", "file")
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
"""The mseg-api commit whose ``mseg/relabeled_data/`` the shipped manifest describes."""

RECORDS_URL = f"https://raw.githubusercontent.com/mseg-dataset/mseg-api/{SOURCE_COMMIT}/mseg/relabeled_data"


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


@dataclass(frozen=True)
class Update:
    """One segment of one image to overwrite: ids in the X-relabeled taxonomy (255 = unlabeled)."""

    segment: int
    orig_id: int
    new_id: int
    where: str  # "<record file>:<line>"


ImageKey = tuple[str, str]  # (parent folder of the label file, image stem)


def shipped_dir() -> Path:
    """The package's records folder (its manifest always ships; the record files may not, see :func:`resolve`)."""
    return Path(str(resources.files("mseg_semantic.dataprep").joinpath("records")))


def cache_dir() -> Path:
    """Where ``mseg data download records`` puts the original record files."""
    from mseg_semantic.downloads import cache_dir as mseg_cache

    return mseg_cache() / "records" / SOURCE_COMMIT[:7]


def _record_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def resolve(records_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """(manifest file, folder the manifest's ``file`` paths are relative to) for ``--records DIR`` or the default.

    ``DIR`` is a folder with its own ``records.tsv``, or a copy of mseg-api's ``mseg/relabeled_data`` (used with
    the shipped manifest). Without ``DIR``: the package's files when complete, else those of
    ``mseg data download records``.
    """
    shipped = shipped_dir() / "records.tsv"
    if records_dir is not None:
        folder = Path(records_dir).expanduser()
        if not folder.is_dir():
            raise InputError(f"{folder}: records folder does not exist")
        if (folder / "records.tsv").is_file():
            return folder / "records.tsv", folder
        if _manifest_files(shipped) & {p.name for p in folder.iterdir() if p.is_dir()}:
            return shipped, folder  # the original's folder layout: the shipped manifest describes it
        raise InputError(f"{folder}: no records.tsv (tab-separated: {' '.join(HEADER)}) in the records folder")
    for folder in (shipped_dir(), cache_dir()):
        if _all_present(shipped, folder):
            return shipped, folder
    raise InputError(
        "the original relabeling records (381 files, 6 MB) are not installed: run 'mseg data download records' "
        "(or give --records DIR, e.g. a checkout's mseg-api/mseg/relabeled_data)"
    )


def _manifest_rows(manifest: Path) -> list[list[str]]:
    with open(manifest, encoding="utf-8") as handle:
        return [row for row in list(csv.reader(handle, delimiter="\t"))[1:] if len(row) >= 5]


def _manifest_files(manifest: Path) -> set[str]:
    """Top-level folders of the files a manifest names."""
    return {row[4].split("/", 1)[0] for row in _manifest_rows(manifest)}


def _all_present(manifest: Path, folder: Path) -> bool:
    rows = _manifest_rows(manifest)
    return bool(rows) and all(_record_path(folder, row[4]) is not None for row in rows)


def read_manifest(manifest: Path, folder: Path, *, datasets: tuple[str, ...] | None = None) -> list[Record]:
    """The manifest's rows (only those of ``datasets`` when given), checked; files must exist."""
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest}: cannot read the records manifest ({exc})") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows or tuple(c.strip() for c in rows[0][:5]) != HEADER:
        raise InputError(f"{manifest}:1: header must be {' '.join(HEADER)} (tab-separated)")
    has_lines = len(rows[0]) > 5 and rows[0][5].strip() == "lines"
    records = []
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
        path = _record_path(folder, file)
        if path is None:
            raise InputError(f"{where}: record file {folder / file} does not exist")
        lines = None
        if has_lines and len(row) > 5 and row[5].strip():
            try:
                lines = int(row[5])
            except ValueError:
                raise InputError(f"{where}: lines must be a whole number, got {row[5]!r}") from None
        records.append(Record(dataset, split, orig, new, path, lines, where))
    return records


def read_record_lines(record: Record) -> list[str]:
    """A record file's entries (stripped; blank lines skipped), checked against the manifest's line count."""
    try:
        data = record.file.read_bytes()
        if record.file.suffix == ".gz":
            data = gzip.decompress(data)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{record.file}: cannot read the record file ({exc})") from None
    lines = [line.strip() for line in text.splitlines()]
    count = sum(1 for line in lines if line)
    if record.lines is not None and count != record.lines:
        raise InputError(f"{record.file}: {count} entries, but the manifest ({record.where}) says {record.lines}")
    return lines


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


def download_records(*, mirror: str | None = None, progress: bool = True) -> Path:
    """Fetch the original record files named by the shipped manifest into :func:`cache_dir` (gzip-compressed).

    Files already there are kept; each download is checked against the manifest's line count. ``mirror``: fetch
    ``MIRROR/<folder>/<file>`` instead of the mseg-api repository (for sites without internet access).
    """
    from tqdm import tqdm

    from mseg_semantic.downloads import http_download
    from mseg_semantic.errors import DownloadError
    from mseg_semantic.fileio import write_bytes_atomic

    manifest = shipped_dir() / "records.tsv"
    dest = cache_dir()
    rows = {row[4]: row for row in _manifest_rows(manifest)}  # Cityscapes files are listed twice
    base = (mirror or RECORDS_URL).rstrip("/")
    for name, row in tqdm(rows.items(), desc="records", unit="file", disable=not progress):
        target = dest / f"{name}.gz"
        if target.is_file():
            continue
        part = dest / f"{name}.part"
        part.unlink(missing_ok=True)
        http_download(f"{base}/{name}", part, progress=False)
        text = part.read_bytes()
        count = sum(1 for line in text.decode("utf-8", errors="replace").splitlines() if line.strip())
        expected = int(row[5]) if len(row) > 5 and row[5].strip() else None
        if expected is not None and count != expected:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{base}/{name}: {count} entries, expected {expected}; not the original record file")
        write_bytes_atomic(target, gzip.compress(text, mtime=0))
        part.unlink(missing_ok=True)
    return dest
