"""``prepare`` and ``relabel``: build the jobs from the split lists, run them over worker processes, write atomically.

Every output is written to a temporary file and renamed, so a killed run leaves no half-written label; outputs that
exist are skipped unless ``overwrite``, so a rerun finishes what a killed run left. An exception in any job stops
the run with the image and the reason named. A run holds its dataset folder's lock (:mod:`mseg_semantic.locks`)
while it writes, so a second run on the same dataset is refused with the first one named; temporary files a dead
run left are removed only under that lock.

``relabel`` works in three phases so that a bad record never leaves a relabeled file behind: (1) all records are
read and checked; (2) the images that records touch are computed into staged files beside their destinations (same
folder, so moving them in is a rename on one file system; names unique to the run); a failure here removes the
run's staged files and writes nothing; (3) staged files are moved into place, then the images without updates are
remapped.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mseg_semantic.data.lists import generated_list_path, list_lines, read_list_file
from mseg_semantic.dataprep import convert
from mseg_semantic.dataprep.datasets import SPLITS, DatasetSpec, dataset_lock, get_dataset, relabeled
from mseg_semantic.dataprep.masks import MaskJob, MaskReader, RecordMismatch, ade_instance_paths, mask_job
from mseg_semantic.dataprep.records import Record, Update, read_manifest, resolve, updates_by_image
from mseg_semantic.errors import InputError, MsegError, TaxonomyError, describe_os_error
from mseg_semantic.fileio import write_bytes_atomic, write_label
from mseg_semantic.locks import usable_cpus
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.taxonomy.converter import TaxonomyConverter

STAGED_SUFFIX = ".staged"
"""Relabel's staged outputs: ``.<label name>.<run token>.staged`` beside the label they become."""


class JobError(InputError):
    """A job failed; the message names the image and the reason."""


@dataclass
class Summary:
    """What a run did, per split: files written and images skipped because their outputs existed."""

    dataset: str
    step: str
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    updates: int = 0
    note: str = ""
    unrelabeled: list[str] = field(default_factory=list)  # "file:line: reason" of each update left out

    def lines(self) -> list[str]:
        out = [self.note] if self.note else []
        for split in self.images:
            out.append(
                f"{self.dataset} {split}: {self.images[split]} images, {self.written.get(split, 0)} files written, "
                f"{self.skipped.get(split, 0)} images already done"
            )
        if self.step == "relabel":
            out.append(f"{self.updates} segments relabeled")
        if self.unrelabeled:
            out.append(
                f"{len(self.unrelabeled)} segments left unrelabeled: their record does not fit this copy of the data "
                "(see the warnings; --strict makes this an error)"
            )
        return out


# ---------------------------------------------------------------------- lists
def _aligned(taxonomies: Iterable[str], split: str, root: Path) -> list[tuple[str, list[str]]]:
    """(image path, [label path of each taxonomy]) of ``split``, the lists of all taxonomies paired line by line."""
    tables = [list_lines(t, split, root) for t in taxonomies]
    rows = [[f for f in lines if f] for _, lines in tables]
    first = rows[0]
    for (name, _), other in zip(tables[1:], rows[1:], strict=True):
        if len(other) != len(first) or any(a[0] != b[0] for a, b in zip(first, other, strict=True)):
            raise InputError(f"{name}: its image column does not match {tables[0][0]} line for line")
    out, seen = [], set()
    for i, fields in enumerate(first):
        labels = [r[i][1] if len(r[i]) > 1 else "" for r in rows]
        if tuple(labels) in seen:
            continue  # repeated lines (the WildDash train list is the val list 16 times)
        seen.add(tuple(labels))
        out.append((fields[0], labels))
    return out


COCO_TRAIN = {
    "coco-panoptic-inst-201": "annotations/panoptic_train2017/{}.png",
    "coco-panoptic-201": "semantic_annotations201/train2017/{}.png",
    "coco-panoptic-133": "semantic_annotations133/train2017/{}.png",
    "coco-panoptic-133-relabeled": "semantic_relabeled133/train2017/{}.png",
}
"""COCO's train lists do not ship (the original's were lost): every annotation of the train JSON, val's pattern."""


def write_coco_train_lists(root: Path, stems: Iterable[str]) -> None:
    """The four COCO train lists, sorted by path, below ``COCOPanoptic/mseg_lists/`` (rewritten only on change)."""
    stems = sorted(stems)
    for taxonomy, pattern in COCO_TRAIN.items():
        text = "".join(f"images/train2017/{s}.jpg {pattern.format(s)}\n" for s in stems)
        path = generated_list_path(taxonomy, root) / "train.txt"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_bytes_atomic(path, text.encode("utf-8"))


def selection(list_file: str | os.PathLike | None, images: set[str]) -> set[str] | None:
    """Images named by ``--list FILE`` (first column); a line naming no image of the dataset is an error."""
    if list_file is None:
        return None
    chosen = set()
    for number, fields in enumerate(read_list_file(list_file), start=1):
        if not fields:
            continue
        if fields[0] not in images:
            raise InputError(f"{list_file}:{number}: {fields[0]} is not an image of the dataset's train/val lists")
        chosen.add(fields[0])
    return chosen


def remove_orphans(paths: Iterable[Path]) -> None:
    """Delete temporary and staged files a dead run left next to these outputs (call only under the dataset lock)."""
    for folder in {p.parent for p in paths}:
        if folder.is_dir():
            for tmp in (*folder.glob(".*.tmp"), *folder.glob(f".*{STAGED_SUFFIX}")):
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- running jobs
def _call(item: tuple[Callable, object]):
    fn, job = item
    try:
        return fn(job)
    except MsegError as exc:
        raise JobError(f"{job.image}: {exc}") from None
    except OSError as exc:  # a full disk, a read-only folder: the file and what to do
        raise JobError(f"{job.image}: {describe_os_error(exc)}") from None
    except Exception as exc:  # a bug or an unreadable file: still name the image
        raise JobError(f"{job.image}: {exc.__class__.__name__}: {exc}") from None


def run_jobs(fn: Callable, jobs: list, *, workers: int, desc: str, progress: bool = True) -> list:
    """``fn(job)`` for every job (in worker processes when ``workers`` > 1); results in job order."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress or not jobs, leave=False)
    workers = min(workers, usable_cpus())
    results = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(_call((fn, job)))
                bar.update(1)
            return results
        import multiprocessing

        chunk = max(1, min(16, len(jobs) // (workers * 8)))
        with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
            for result in pool.imap(_call, ((fn, job) for job in jobs), chunksize=chunk):
                results.append(result)
                bar.update(1)
        return results
    finally:
        bar.close()


# ---------------------------------------------------------------------- prepare
@dataclass(frozen=True)
class PrepareJob:
    image: str
    kinds: tuple[str, ...]  # stage kinds, in order
    taxonomies: tuple[str, ...]  # source of the first stage (or None), then each stage's target
    source: Path  # the first stage's input file
    outputs: tuple[Path, ...]  # one per stage
    overwrite: bool
    segments: convert.Segments | None = None


def _first_stage(job: PrepareJob) -> np.ndarray:
    kind, path = job.kinds[0], job.source
    if not path.is_file():
        raise InputError(f"{path}: raw file missing")
    if kind == "coco":
        return convert.coco_semantic(path, job.segments)
    if kind == "idd":
        return convert.idd_semantic(path)
    if kind == "mat":
        return convert.pascal_context_mat(path) if path.suffix == ".mat" else convert.read_grey(path)
    if kind == "rgb":
        return convert.decode_rgb(path, job.taxonomies[0])
    return convert.read_grey(path)


def prepare_one(job: PrepareJob) -> int:
    """Run one image's stages; write the outputs that are missing (or all, with overwrite). Returns files written."""
    if not job.overwrite and all(p.exists() for p in job.outputs):
        return 0
    label = _first_stage(job)
    arrays = []
    stage_source = job.taxonomies[0]
    for i, kind in enumerate(job.kinds):
        target = job.taxonomies[i + 1]
        if kind in ("remap", "rgb"):  # the other kinds produce the target's ids themselves
            label = remap(label, stage_source, target, job.source)
        arrays.append(label)
        stage_source = target
    written = 0
    for path, array, target in zip(job.outputs, arrays, job.taxonomies[1:], strict=True):
        if job.overwrite or not path.exists():
            # Taxonomies of more than 256 classes (pascal-context-460) are written 16-bit, as the original does.
            write_label(path, array, bits=16 if get_taxonomy(target).num_classes > 256 else None)
            written += 1
    return written


def remap(label: np.ndarray, source: str, target: str, path: Path) -> np.ndarray:
    """``label`` (read from ``path``) from ``source`` to ``target`` ids; values that are no class name the file."""
    try:
        return TaxonomyConverter().convert_labels(label, source, target)
    except TaxonomyError as exc:
        reason = str(exc).split("; pass strict=False")[0]
        raise InputError(f"{path}: {reason}") from None


def prepare(
    dataset: str,
    root: str | os.PathLike,
    *,
    list_file: str | os.PathLike | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Convert the raw labels of ``dataset`` into its semseg taxonomy at the paths the split lists name."""
    spec = get_dataset(dataset)
    root = check_root(root)
    summary = Summary(spec.name, "prepare")
    with dataset_lock(root, spec, "prepare"):
        _extract(spec, root, progress)
        if not spec.stages:
            summary.note = f"{spec.name}: labels are used as distributed; nothing to convert (run 'mseg data verify')"
            return summary
        _prepare_splits(spec, root, summary, list_file, workers, overwrite, progress)
    return summary


def _prepare_splits(
    spec: DatasetSpec, root: Path, summary: Summary, list_file, workers: int, overwrite: bool, progress: bool
) -> None:
    base = root / spec.list_root
    per_split = {split: _prepare_entries(spec, root, split) for split in SPLITS}
    chosen = selection(list_file, {image for entries in per_split.values() for image, _, _ in entries})
    done: set[tuple[Path, ...]] = set()  # outputs of an earlier split (the WildDash train list repeats val)
    for split, entries in per_split.items():
        jobs = [
            PrepareJob(
                image,
                tuple(s.kind for s in spec.stages),
                (spec.stages[0].source, *(s.target for s in spec.stages)),
                _source_path(spec, base, labels),
                tuple(base / p for p in labels[-len(spec.stages) :]),
                overwrite,
                segments,
            )
            for image, labels, segments in entries
            if chosen is None or image in chosen
        ]
        unlisted = [job.image for job in jobs if "coco" in job.kinds and job.segments is None]
        if unlisted:
            raise InputError(f"{unlisted[0]}: not annotated in {_coco_json(root, split)} ({len(unlisted)} in all)")
        missing = [job.source for job in jobs if not job.source.is_file()]
        if missing:
            more = f" ({len(missing)} of {len(jobs)} {split} images' raw files are missing)" if len(missing) > 1 else ""
            raise InputError(f"{missing[0]}: raw file missing{more}; run 'mseg data download {spec.name}' first")
        remove_orphans(p for job in jobs for p in job.outputs)
        todo = [job for job in jobs if job.outputs not in done]
        done.update(job.outputs for job in todo)
        counts = run_jobs(prepare_one, todo, workers=workers, desc=f"prepare {spec.name} {split}", progress=progress)
        summary.images[split] = len(jobs)
        summary.written[split] = sum(counts)
        summary.skipped[split] = len(jobs) - sum(1 for c in counts if c)


def _prepare_entries(spec: DatasetSpec, root: Path, split: str) -> list[tuple[str, list[str], object]]:
    """(image, [label path per chain taxonomy], COCO segments or None) for one split."""
    if spec.name == "coco-panoptic":
        index = _coco_index(root, split)
        if split == "train":
            write_coco_train_lists(root, index)
        entries = _aligned(spec.chain, split, root)
        return [(image, labels, index.get(Path(image).stem)) for image, labels in entries]
    return [(image, labels, None) for image, labels in _aligned(spec.chain, split, root)]


def _coco_json(root: Path, split: str) -> Path:
    return root / "COCOPanoptic" / "annotations" / f"panoptic_{split}2017.json"


def _coco_index(root: Path, split: str) -> dict[str, convert.Segments]:
    return convert.panoptic_index(_coco_json(root, split))


def _source_path(spec: DatasetSpec, base: Path, labels: list[str]) -> Path:
    kind = spec.stages[0].kind
    if kind == "idd":
        return base / labels[0].replace("_gtFine_labelids.png", "_gtFine_polygons.json")
    if kind == "mat":
        mat = base / "trainval" / f"{Path(labels[0]).stem}.mat"
        png = base / labels[0]
        return png if not mat.is_file() and png.is_file() else mat  # the original deleted trainval/ after use
    return base / labels[0]


def check_root(root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: data root " + ("is a file, not a folder" if root.exists() else "does not exist"))
    return root


def _extract(spec: DatasetSpec, root: Path, progress: bool) -> None:
    """Unpack archives of the dataset that lie in its folder (downloaded by hand) before converting."""
    from mseg_semantic.dataprep.download import extract_archives

    extract_archives(spec.name, root, progress=progress)


# ---------------------------------------------------------------------- relabel
@dataclass(frozen=True)
class RelabelJob:
    image: str
    task: str
    source: Path  # the X label
    output: Path  # where to write (the staging file for images with updates)
    final: Path  # the X-relabeled label path
    overwrite: bool
    check_from: bool  # the dataset's mask pixels must hold the record's `from` class (the original's "strict" swap)
    strict: bool  # a record that does not fit the data stops the run instead of being skipped
    updates: tuple[Update, ...] = ()
    mask: MaskJob | None = None


def relabel_one(job: RelabelJob) -> tuple[int, tuple[str, ...]]:
    """Remap X -> X-relabeled and overwrite the recorded segments.

    Returns the number of files written and the updates left out, as ``"file:line: reason"``: a record whose
    segment this copy of the data does not hold as recorded (see :class:`RecordMismatch`) leaves that segment as
    the class-level remap wrote it; with ``job.strict`` it stops the run instead.
    """
    if not job.overwrite and job.final.exists():
        return 0, ()
    if not job.source.is_file():
        raise InputError(f"{job.source}: label file missing (run 'mseg data prepare' first)")
    label = convert.read_grey(job.source)
    out = remap(label, job.task, relabeled(job.task), job.source).astype(np.uint8)
    left = []
    reader = MaskReader(job.mask, out, label) if job.updates else None
    for update in job.updates:
        try:
            out[_segment(reader, update, out, job)] = update.new_id
        except RecordMismatch as exc:
            if job.strict:
                raise InputError(f"{update.where}: {exc}") from None
            left.append(f"{update.where}: {exc}")
        except InputError as exc:
            raise InputError(f"{update.where}: {exc}") from None
    write_label(job.output, out)
    return 1, tuple(left)


def _segment(reader: MaskReader, update: Update, out: np.ndarray, job: RelabelJob) -> np.ndarray:
    """The mask of ``update``'s segment; :class:`RecordMismatch` when the data does not hold it as recorded."""
    mask = reader.mask(update.segment)
    if job.check_from:
        held = np.unique(out[mask])
        if held.size != 1 or int(held[0]) != update.orig_id:
            raise RecordMismatch(
                f"segment {update.segment} holds class ids {held.tolist()[:8]} in the {job.task}-relabeled labels, "
                f"not the record's class {update.orig_id}"
            )
    return mask


def relabel(
    dataset: str,
    root: str | os.PathLike,
    *,
    list_file: str | os.PathLike | None = None,
    records: str | os.PathLike | None = None,
    workers: int = 1,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> list[Summary]:
    """Write the ``-relabeled`` labels of a training dataset (both for Cityscapes: 19 and 34 classes).

    Records come from the package unless ``records`` names a folder. A record whose segment this copy of the data
    does not hold as recorded is left out with a warning (``Summary.unrelabeled``); ``strict`` makes it an error.
    """
    spec = get_dataset(dataset)
    if not spec.relabel:
        raise InputError(f"{spec.name} is a test dataset; only the training datasets are relabeled")
    root = check_root(root)
    plans = _relabel_plans(spec, root, list_file, records, overwrite, strict)
    for _, _, jobs in plans:
        missing = [job.source for job in jobs if not job.source.is_file() and (overwrite or not job.final.exists())]
        if missing:
            more = f" ({len(missing)} in all)" if len(missing) > 1 else ""
            raise InputError(f"{missing[0]}: label file missing{more}; run 'mseg data prepare {spec.name}' first")
    with dataset_lock(root, spec, "relabel"):
        remove_orphans(job.final for _, _, jobs in plans for job in jobs)
        staged = _stage_updates(plans, workers, progress)
        return _remap_rest(spec, root, plans, staged, workers, progress)


def _remap_rest(
    spec: DatasetSpec, root: Path, plans: list, staged: dict, workers: int, progress: bool
) -> list[Summary]:
    """Phase 3: the images without updates; the summaries; the skips file."""
    summaries = {task: Summary(spec.name if len(spec.relabel) == 1 else task, "relabel") for task in spec.relabel}
    done: dict[Path, tuple[str, ...]] = {}
    for task, split, jobs in plans:
        rest = [j for j in jobs if not j.updates]
        counts = run_jobs(relabel_one, rest, workers=workers, desc=f"relabel {task} {split}", progress=progress)
        done.update((j.final, left) for j, (c, left) in zip(rest, counts, strict=True) if c)
        landed = staged[task, split]
        done.update((j.final, left) for j, left in landed)
        summary = summaries[task]
        summary.images[split] = len(jobs)
        summary.written[split] = sum(c for c, _ in counts) + len(landed)
        summary.skipped[split] = len(jobs) - summary.written[split]
        summary.unrelabeled.extend(line for _, left in landed for line in left)
        summary.updates += sum(len(j.updates) - len(left) for j, left in landed)
    _record_skips(root, spec, done)
    return list(summaries.values())


def _relabel_plans(
    spec: DatasetSpec, root: Path, list_file, records, overwrite: bool, strict: bool
) -> list[tuple[str, str, list[RelabelJob]]]:
    """(task, split, jobs) of every task and split, after every record has been read and checked."""
    manifest, folder = resolve(records)
    record_rows = read_manifest(manifest, folder, datasets=spec.relabel)
    base = root / spec.list_root
    instances: dict[str, Path] | None = None  # ADE20K's instance masks, indexed once (only when a record needs them)

    def instance_paths() -> dict[str, Path]:
        nonlocal instances
        if instances is None:
            instances = ade_instance_paths(base)
        return instances

    context = _PlanContext(spec, root, base, overwrite, strict, instance_paths, f"{os.getpid()}-{secrets.token_hex(4)}")
    plans = []
    for task in spec.relabel:
        per_split = {split: _aligned((task, relabeled(task)), split, root) for split in SPLITS}
        chosen = selection(list_file, {image for entries in per_split.values() for image, _ in entries})
        for split, entries in per_split.items():
            plans.append(_plan(context, task, split, entries, chosen, record_rows))
    return plans


def _stage_updates(
    plans: list[tuple[str, str, list[RelabelJob]]], workers: int, progress: bool
) -> dict[tuple[str, str], list[tuple[RelabelJob, tuple[str, ...]]]]:
    """Every image with updates, computed into its staged file and moved into place only when all succeeded."""
    staged = {}
    new_folders = _missing_folders({j.output.parent for _, _, jobs in plans for j in jobs if j.updates})
    try:
        for task, split, jobs in plans:
            updated = [j for j in jobs if j.updates]
            results = run_jobs(relabel_one, updated, workers=workers, desc=f"relabel {task} {split} (records)",
                               progress=progress)  # fmt: skip
            staged[task, split] = [(j, left) for j, (c, left) in zip(updated, results, strict=True) if c]
    except BaseException:
        for _, _, jobs in plans:
            for job in jobs:
                if job.output != job.final:
                    job.output.unlink(missing_ok=True)
        for folder in sorted(new_folders, key=lambda f: len(f.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # made for staged files only: a failed run leaves no trace
        raise
    for job, _ in (item for items in staged.values() for item in items):
        os.replace(job.output, job.final)  # same folder: a rename, whatever file system the folder is on
    return staged


def _missing_folders(folders: set[Path]) -> set[Path]:
    """These folders and their ancestors that do not exist yet."""
    missing = set()
    for folder in folders:
        while not folder.exists() and folder not in missing:
            missing.add(folder)
            folder = folder.parent
    return missing


SKIPS = ".mseg_relabel_skips.json"
"""Below a dataset's folder: the updates each relabeled file left out, ``{label path: ["file:line: reason"]}``."""


def read_skips(root: Path, spec: DatasetSpec) -> dict[str, list[str]]:
    """The updates left out of the dataset's relabeled files, per label path (relative to ROOT)."""
    path = root / spec.top / SKIPS
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data.get("unrelabeled", {}) if isinstance(data, dict) else {}


def _record_skips(root: Path, spec: DatasetSpec, written: dict[Path, tuple[str, ...]]) -> None:
    """Update :data:`SKIPS` for the files this run wrote (files it kept keep their entries)."""
    skips = read_skips(root, spec)
    for path, left in written.items():
        key = path.relative_to(root).as_posix()
        if left:
            skips[key] = list(left)
        else:
            skips.pop(key, None)
    target = root / spec.top / SKIPS
    if skips or target.exists():
        text = json.dumps({"unrelabeled": dict(sorted(skips.items()))}, indent=1)
        write_bytes_atomic(target, text.encode("utf-8"))


@dataclass(frozen=True)
class _PlanContext:
    spec: DatasetSpec
    root: Path
    base: Path
    overwrite: bool
    strict: bool
    instance_paths: Callable[[], dict[str, Path]]
    token: str  # unique to the run: its staged files' names


def _plan(
    ctx: _PlanContext,
    task: str,
    split: str,
    entries: list[tuple[str, list[str]]],
    chosen: set[str] | None,
    record_rows: list[Record],
) -> tuple[str, str, list[RelabelJob]]:
    keys = {(Path(labels[0]).parent.name, Path(image).stem): image for image, labels in entries}
    in_run = None if chosen is None else {k for k, image in keys.items() if image in chosen}
    updates = updates_by_image(task, record_rows, split, set(keys), in_run)
    seg_paths = ctx.instance_paths() if updates and task == "ade20k-150" else {}
    coco_segments = _coco_index(ctx.root, split) if updates and task == "coco-panoptic-133" else {}
    jobs = []
    for image, labels in entries:
        if chosen is not None and image not in chosen:
            continue
        key = (Path(labels[0]).parent.name, Path(image).stem)
        todo = updates.get(key, [])
        final = ctx.base / labels[1]
        mask = None
        if todo:
            mask = mask_job(task, ctx.base, split, key[0], key[1], seg_paths)
            if coco_segments:
                if key[1] not in coco_segments:
                    raise InputError(f"{image}: not in {_coco_json(ctx.root, split)}")
                mask = MaskJob(mask.kind, mask.path, tuple(coco_segments[key[1]][0].tolist()))
        output = final.parent / f".{final.name}.{ctx.token}{STAGED_SUFFIX}" if todo else final
        jobs.append(RelabelJob(image, task, ctx.base / labels[0], output, final, ctx.overwrite, ctx.spec.check_from,
                               ctx.strict, tuple(todo), mask))  # fmt: skip
    return task, split, jobs
