"""``verify`` and ``status``: is a dataset on disk exactly what the split lists promise?

``verify`` reads every line of the dataset's train/val lists (semseg and ``-relabeled``): the image and the label
exist and decode whole (a truncated file is reported like a missing one), their sizes agree, the label is
single-channel and every value is a class of the taxonomy or 255. It collects problems instead of stopping at the
first, and records a successful check in ``<dataset folder>/.mseg_verified.json`` (what ``status`` shows; on a root
it cannot write, verify still checks and reports). ``status`` only counts which files exist.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mseg_semantic.data.lists import list_lines, read_list_file
from mseg_semantic.dataprep.datasets import DATASETS, SPLITS, DatasetSpec, get_dataset, relabeled
from mseg_semantic.dataprep.run import _coco_json, _source_path, check_root, read_skips, run_jobs, selection
from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.fileio import read_image, read_label, write_bytes_atomic
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.taxonomy.master import check_master, read_names
from mseg_semantic.taxonomy.tables import IGNORE_LABEL

MARKER = ".mseg_verified.json"
MAX_SHOWN = 20


@dataclass(frozen=True)
class CheckJob:
    image: str  # as in the list, for messages
    image_path: Path
    label_path: Path
    num_classes: int
    where: str


def check_one(job: CheckJob) -> list[str]:
    """Problems of one list line (empty when it is fine)."""
    problems = []
    if not job.image_path.is_file():
        problems.append(f"{job.where}: image {job.image_path} does not exist")
    if not job.label_path.is_file():
        problems.append(f"{job.where}: label {job.label_path} does not exist")
    if problems:
        return problems
    try:
        height, width = read_image(job.image_path).shape[:2]  # decoded whole, as training will: truncation shows
    except MsegError as exc:
        return [f"{job.where}: image {exc}"]
    try:
        label = read_label(job.label_path)
    except MsegError as exc:
        return [f"{job.where}: label {exc}"]
    if label.ndim != 2 or label.dtype != np.uint8:
        return [f"{job.where}: label {job.label_path} is not a single-channel 8-bit image"]
    if label.shape != (height, width):
        problems.append(
            f"{job.where}: label {job.label_path} is {label.shape[1]}x{label.shape[0]}, image is {width}x{height}"
        )
    values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    bad = [int(v) for v in values if v >= job.num_classes and v != IGNORE_LABEL]
    if bad:
        problems.append(
            f"{job.where}: label {job.label_path} holds values {bad[:8]} that are not classes "
            f"(0..{job.num_classes - 1} or 255)"
        )
    return problems


@dataclass
class SplitReport:
    taxonomy: str
    split: str
    entries: int
    ok: int
    problems: int


@dataclass
class VerifyReport:
    dataset: str
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is not wrong but worth knowing (classes left unlabeled)

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.splits)

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "passed": self.passed,
            "splits": [asdict(s) for s in self.splits],
            "problems": self.problems[:MAX_SHOWN],
            "problem_count": len(self.problems),
            "notes": self.notes,
        }


def taxonomies(spec: DatasetSpec) -> list[str]:
    """The taxonomies whose lists training/evaluation read for this dataset."""
    return [spec.semseg, *(relabeled(t) for t in spec.relabel)]


def verify(
    dataset: str,
    root: str | os.PathLike,
    *,
    list_file: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
) -> VerifyReport:
    """Check every train/val list line of ``dataset`` (only the images of ``list_file`` when given)."""
    spec = get_dataset(dataset)
    root = check_root(root)
    base = root / spec.list_root
    report = VerifyReport(spec.name)
    listed: dict[tuple[str, str], tuple[str, list[list[str]]]] = {}
    for taxonomy in taxonomies(spec):
        for split in SPLITS:
            try:
                listed[taxonomy, split] = list_lines(taxonomy, split, root)
            except InputError as exc:
                report.problems.append(str(exc))
                report.splits.append(SplitReport(taxonomy, split, 0, 0, 1))
    chosen = selection(list_file, {f[0] for _, lines in listed.values() for f in lines if f})
    for (taxonomy, split), (name, lines) in listed.items():
        num_classes = get_taxonomy(taxonomy).num_classes
        _check_lines(report, (taxonomy, split, name), lines, base, num_classes, chosen, workers, progress)
    _mark(root / spec.top / MARKER, report, whole=chosen is None)
    return report


def _check_lines(
    report: VerifyReport,
    what: tuple[str, str, str],
    lines: list[list[str]],
    base: Path,
    num_classes: int,
    chosen: set[str] | None,
    workers: int,
    progress: bool,
) -> None:
    """Check the lines of one list (``what``: taxonomy, split, the list's name for messages) into ``report``."""
    taxonomy, split, name = what
    jobs: list[CheckJob] = []
    index: dict[tuple[str, ...], int] = {}
    line_jobs: list[int] = []
    for number, fields in enumerate(lines, start=1):
        if not fields or (chosen is not None and fields[0] not in chosen):
            continue
        where = f"{name}:{number}"
        if len(fields) != 2:
            report.problems.append(f"{where}: expected 'image_path label_path'")
            continue
        if tuple(fields) not in index:
            index[tuple(fields)] = len(jobs)
            jobs.append(CheckJob(fields[0], base / fields[0], base / fields[1], num_classes, where))
        line_jobs.append(index[tuple(fields)])
    results = run_jobs(check_one, jobs, workers=workers, desc=f"verify {taxonomy} {split}", progress=progress)
    for problems in results:
        report.problems.extend(problems)
    ok = sum(1 for i in line_jobs if not results[i])
    report.splits.append(SplitReport(taxonomy, split, len(line_jobs), ok, len(line_jobs) - ok))


def verify_own(
    name: str,
    root: str | os.PathLike,
    names: str | os.PathLike,
    lists: list[str | os.PathLike],
    *,
    master: str | os.PathLike | None = None,
    workers: int = 1,
    progress: bool = True,
) -> VerifyReport:
    """Check a dataset of the user's own: every line of its ``lists`` (paths relative to ``root``) against its
    ``names`` list, and, with a ``master`` table, that table with the dataset's column (errors are problems; classes
    in no row are notes)."""
    classes = read_names(names)
    root = check_root(root)
    report = VerifyReport(name)
    if master is not None:
        table = check_master(master, {name: classes})
        report.problems.extend(table.errors)
        report.notes.extend(table.notes)
        if table.taxonomy is not None and name not in table.taxonomy.maps:
            report.problems.append(f"{master}: no column {name!r}: what its classes become in the table")
    for list_file in lists:
        lines = read_list_file(list_file)
        what = (name, Path(list_file).stem, str(list_file))
        _check_lines(report, what, lines, root, len(classes), None, workers, progress)
    return report


def _mark(marker: Path, report: VerifyReport, whole: bool) -> None:
    """Record a passed check of the whole dataset (what ``status`` shows); forget it when a check fails.

    The marker is a convenience: on a root this process cannot write (read-only, another user's) it is left as is.
    """
    try:
        if report.passed and whole:
            splits = [asdict(s) for s in report.splits]
            record = {"dataset": report.dataset, "verified": time.strftime("%Y-%m-%d %H:%M:%S"), "splits": splits}
            write_bytes_atomic(marker, (json.dumps(record, indent=1) + "\n").encode())
        elif not report.passed:
            marker.unlink(missing_ok=True)
    except OSError:
        pass


# ---------------------------------------------------------------------- status
def status(root: str | os.PathLike) -> list[dict]:
    """Per dataset: how many raw inputs, prepared and relabeled labels exist, and when it was last verified."""
    root = check_root(root)
    return [_status_of(spec, root) for spec in DATASETS.values()]


def _count(paths: list, present: bool) -> tuple[int, int]:
    """(files that exist, files listed); nothing is looked up below a dataset folder that is not there."""
    return (sum(1 for p in paths if os.path.exists(p)) if present else 0), len(paths)


def _label_paths(taxonomy: str, root: Path, base: Path) -> list[str] | None:
    """The label files the train and val lists of ``taxonomy`` name (as strings: tens of thousands of them)."""
    paths = []
    for split in SPLITS:
        try:
            _, lines = list_lines(taxonomy, split, root)
        except InputError:
            return None
        paths.extend({os.path.join(base, f[1]) for f in lines if len(f) == 2})
    return sorted(paths)


def _status_of(spec: DatasetSpec, root: Path) -> dict:
    base = root / spec.list_root
    present = (root / spec.top).is_dir()
    row: dict = {"dataset": spec.name, "role": spec.role, "folder": spec.top, "present": present}
    if spec.name == "coco-panoptic":
        raw = [str(_coco_json(root, s)) for s in SPLITS] + (_label_paths(spec.chain[0], root, base) or [])
    elif spec.stages:
        first = _label_paths(spec.chain[0], root, base) or []
        raw = [_source_path(spec, base, [os.path.relpath(p, base)]) for p in first] if present else first
    else:
        raw = _label_paths(spec.semseg, root, base) or []
    row["raw"] = _count(raw, present)
    prepared = _label_paths(spec.semseg, root, base)
    row["prepared"] = _count(prepared, present) if prepared is not None else None
    if spec.relabel:
        counts = [_label_paths(relabeled(t), root, base) for t in spec.relabel]
        paths = [p for c in counts if c is not None for p in c]
        row["relabeled"] = _count(paths, present) if all(c is not None for c in counts) else None
        row["unrelabeled"] = sum(len(v) for v in read_skips(root, spec).values())
    marker = root / spec.top / MARKER
    row["verified"] = None
    if marker.is_file():
        try:
            row["verified"] = json.loads(marker.read_text(encoding="utf-8")).get("verified")
        except (OSError, ValueError):
            row["verified"] = None
    return row
