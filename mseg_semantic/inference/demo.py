"""Run a :class:`Segmenter` over images, folders and videos and write label maps, colour maps and overlays.

For an image ``NAME.ext`` the outputs (``outputs``, default the first three) are ``NAME_gray.png`` (label ids,
lossless), ``NAME_color.png`` (the taxonomy's palette), ``NAME_overlay.jpg`` (the image blended with the colour map,
class names written on the regions), ``NAME_confidence.png`` (each pixel's probability of its label as a 16-bit PNG,
``round(p * 65535)``) and ``NAME_probs.npz`` (the averaged probabilities, all classes or the top k). For a video,
``NAME_overlay.mp4`` at the source frame rate, and with ``save_frames`` the per-frame label maps (and confidence
maps) in ``NAME_frames/``. Sub-folders of a folder input are mirrored, as are the folders of the paths of a list
file. Each output is written atomically and each input gets a line in ``OUT/manifest.jsonl``
(:mod:`.manifest`); an input whose line says done and whose outputs exist is skipped unless ``overwrite``, so an
interrupted run resumes where it stopped. A file that cannot be read is reported and skipped, the others are
still processed. Under ``torchrun`` the inputs left to do are split over the processes (every ``world_size``-th
one from the ``rank``-th), so a rerun with any number of processes resumes; a rerun first removes the temporary files a
killed run left.

The work goes inputs -> predictions -> outputs, and each check runs once: a :class:`DemoJob` is what to segment and
write, checked (the CLI makes it before the model loads, so that a typo does not wait for a checkpoint);
:func:`run_job` works through it with :class:`DemoOptions`, in one object per run whose few methods share the run's
state (the manifest, the report, where messages go) instead of closures: what is left to do, the images (decoded
ahead, segmented ``batch_windows`` at a time, written behind), the videos (:class:`_FrameLoop` into a
:class:`_VideoSink`), and the manifest lines of both. :func:`run_demo` is the one-call form of the two.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from mseg_semantic import distributed
from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.fileio import (
    atomic_path,
    encode_label,
    is_image_path,
    is_temporary,
    is_video_path,
    read_image,
    write_bytes_atomic,
    write_label,
)
from mseg_semantic.inference.background import WriteBehind, read_ahead
from mseg_semantic.inference.manifest import Manifest
from mseg_semantic.inference.segmenter import Prediction, Segmenter
from mseg_semantic.locks import BusyError, exclusive
from mseg_semantic.taxonomy.files import taxonomy_record
from mseg_semantic.visualize import colorize, overlay

#: What ``outputs`` may name, in the order they are written, and the file name each adds to an image's stem.
OUTPUT_SUFFIXES: dict[str, str] = {
    "gray": "_gray.png",
    "color": "_color.png",
    "overlay": "_overlay.jpg",
    "confidence": "_confidence.png",
    "probs": "_probs.npz",
}
DEFAULT_OUTPUTS: tuple[str, ...] = ("gray", "color", "overlay")


@dataclass(frozen=True)
class DemoItem:
    """One input file and the output stem (path without suffix) its results are written under."""

    path: Path
    out_stem: Path
    is_video: bool


@dataclass
class DemoReport:
    """What a run did; after a run under torchrun, the counts and failures of all processes."""

    images: int = 0
    frames: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)  # (the files written are in the manifest: a report stays small)
    processes: int = 1


def parse_outputs(
    text: str | Iterable[str], choices: Sequence[str] = tuple(OUTPUT_SUFFIXES), option: str = "--outputs"
) -> tuple[str, ...]:
    """``"gray,confidence"`` (or a list of names) -> the outputs named, in :data:`OUTPUT_SUFFIXES` order; only
    ``choices`` may be named (``option``: how the message names the setting)."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        what = f"unknown output {unknown[0]!r}" if unknown else "no output named"
        raise InputError(f"{option}: {what}; choose from {','.join(choices)} (comma-separated)")
    return tuple(kind for kind in OUTPUT_SUFFIXES if kind in names)


def check_outputs(outputs: str | Iterable[str], probs_topk: int | None) -> tuple[str, ...]:
    """The outputs named (:func:`parse_outputs`); ``probs_topk`` only with probs."""
    kinds = parse_outputs(outputs)
    if probs_topk is not None and "probs" not in kinds:
        raise InputError("--probs-topk applies to the probs output: add probs to --outputs")
    return kinds


def read_input_list(path: str | os.PathLike) -> list[Path]:
    """The image and video paths of a list file, one per line (blank lines and ``#`` comments skipped; relative
    paths are taken from the current folder, as on the command line); an error names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such list file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a list file (give the folder as an INPUT)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list file ({getattr(exc, 'strerror', None) or exc})") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        item = Path(entry)
        where = f"{path}:{number}: {item}"
        if item.is_dir():
            raise InputError(f"{where}: is a folder; a list names files (give folders as INPUTs)")
        if not item.is_file():
            raise InputError(f"{where}: no such file")
        if not (is_image_path(item) or is_video_path(item)):
            raise InputError(f"{where}: not an image or video file")
        found.append(item)
    if not found:
        raise InputError(f"{path}: lists no files")
    return found


def collect_inputs(
    inputs: Iterable[str | os.PathLike], out_dir: Path, inputs_from: Iterable[str | os.PathLike] = ()
) -> list[DemoItem]:
    """Expand files, folders (recursively, sorted) and list files into demo items; errors name the path that is
    wrong. The files of a list are written below ``out_dir`` as their paths lie below the folder they share."""
    items: list[DemoItem] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and (is_image_path(p) or is_video_path(p))
            )  # fmt: skip
            if not found:
                raise InputError(f"{path}: folder contains no images or videos")
            items += [DemoItem(p, out_dir / p.relative_to(path).with_suffix(""), is_video_path(p)) for p in found]
        elif is_image_path(path) or is_video_path(path):
            items.append(DemoItem(path, out_dir / path.stem, is_video_path(path)))
        else:
            raise InputError(
                f"{path}: not an image or video file (image suffixes: jpg, jpeg, png, bmp, webp, tif; "
                f"videos: mp4, avi, mov, mkv)"
            )
    for list_file in inputs_from:
        listed = read_input_list(list_file)
        absolute = [Path(os.path.abspath(p)) for p in listed]
        common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
        items += [
            DemoItem(p, out_dir / a.relative_to(common).with_suffix(""), is_video_path(p))
            for p, a in zip(listed, absolute, strict=True)
        ]
    # The same file given twice is done once.
    unique: dict[tuple[str, Path], DemoItem] = {}
    for item in items:
        unique.setdefault((os.path.abspath(item.path), item.out_stem), item)
    items = list(unique.values())
    # Two inputs with the same stem in one output folder (a.jpg, a.png) keep their suffix in the output name.
    stems: dict[Path, int] = {}
    for item in items:
        stems[item.out_stem] = stems.get(item.out_stem, 0) + 1
    items = [
        DemoItem(i.path, i.out_stem.with_name(f"{i.out_stem.name}_{i.path.suffix[1:].lower()}"), i.is_video)
        if stems[i.out_stem] > 1 else i
        for i in items
    ]  # fmt: skip
    owners: dict[Path, Path] = {}
    for item in items:
        other = owners.setdefault(item.out_stem, item.path)
        if other != item.path:
            raise InputError(
                f"{other} and {item.path} would both be written as {item.out_stem}_*; give their folder (or a list "
                "file) instead, whose sub-folders are mirrored, or run them with different --out"
            )
    return items


def prepare_output_dir(out: Path) -> None:
    """Create the output folder or fail with one clear line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: output folder is not writable")


def output_paths(stem: Path, outputs: Sequence[str] = DEFAULT_OUTPUTS) -> list[Path]:
    """The files an image with output stem ``stem`` gets for ``outputs``."""
    return [stem.with_name(stem.name + OUTPUT_SUFFIXES[kind]) for kind in outputs]


def image_outputs(stem: Path) -> tuple[Path, Path, Path]:
    gray, color, over = output_paths(stem, DEFAULT_OUTPUTS)
    return gray, color, over


def video_output(stem: Path) -> Path:
    return stem.with_name(stem.name + "_overlay.mp4")


#: How a video's name ends while it is written (OpenCV picks the container from the suffix, so ".mp4" stays).
_PARTIAL_VIDEO = ".partial.mp4"


def _partial_video(target: Path) -> Path:
    """Where a video is written before it is complete: ``.NAME_overlay.partial.mp4``."""
    return target.with_name(f".{target.stem}{_PARTIAL_VIDEO}")


def remove_leftovers(out: Path) -> int:
    """Remove the temporary files a killed run left below ``out`` (atomic writes, partial videos); returns how many.
    Only while no process of this run writes."""
    removed = 0
    for path in out.rglob(".*"):
        if (is_temporary(path) or path.name.endswith(_PARTIAL_VIDEO)) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def confidence_values(confidence: np.ndarray) -> np.ndarray:
    """Probabilities (0..1) as the uint16 values of a confidence PNG: ``round(p * 65535)``."""
    return np.rint(np.clip(confidence.astype(np.float64), 0.0, 1.0) * 65535).astype(np.uint16)


def _encode(suffix: str, rgb: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(suffix, np.ascontiguousarray(rgb[:, :, ::-1]), params or [])
    if not ok:
        raise InputError(f"could not encode a {suffix} image")
    return data.tobytes()


#: The outputs :func:`encode_output` gives as bytes (every output but the probabilities' npz).
IMAGE_OUTPUTS: tuple[str, ...] = ("gray", "color", "overlay", "confidence")


def encode_output(
    kind: str,
    rgb: np.ndarray,
    result: Prediction,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
) -> bytes:
    """The file contents of one of :data:`IMAGE_OUTPUTS` of an image, as :func:`write_image_outputs` writes them
    (and ``mseg serve`` answers them): label PNG, colour PNG, overlay JPEG (quality 92), 16-bit confidence PNG."""
    labels = result.labels
    if kind == "gray":
        return encode_label(labels)
    if kind == "color":
        return _encode(".png", colorize(labels, len(class_names), colors))
    if kind == "overlay":
        return _encode(".jpg", overlay(rgb, labels, class_names, colors=colors), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if kind == "confidence":
        if result.confidence is None:
            raise InputError("the confidence output needs a prediction with confidence (confidence=True)")
        return encode_label(confidence_values(result.confidence), bits=16)
    raise InputError(f"unknown output {kind!r}; choose from {','.join(IMAGE_OUTPUTS)}")


def write_probs(path: Path, result: Prediction, class_names: Sequence[str], taxonomy: str) -> None:
    """``NAME_probs.npz`` (uncompressed): ``probs`` (H, W, C or k) float16, with top-k also ``ids`` (H, W, k); the
    ``class_names`` and ``taxonomy`` the channels (or ids) refer to."""
    assert result.probs is not None
    arrays: dict[str, np.ndarray] = {"probs": result.probs}
    if result.ids is not None:
        arrays["ids"] = result.ids
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays, class_names=np.array(class_names), taxonomy=np.array(taxonomy))
        handle.flush()
        os.fsync(handle.fileno())


def write_image_outputs(
    stem: Path,
    rgb: np.ndarray,
    result: Prediction | np.ndarray,
    class_names: list[str],
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    taxonomy: str = "",
    colors: Sequence[Sequence[int]] | None = None,
) -> list[Path]:
    """Write ``outputs`` of one image (``result``: a :class:`Prediction`, or a label map for gray/color/overlay);
    ``colors``: the taxonomy's own colours (a taxonomy file's palette), else the fixed palette."""
    result = result if isinstance(result, Prediction) else Prediction(result)
    paths = output_paths(stem, outputs)
    for kind, path in zip(outputs, paths, strict=True):
        if kind == "probs":
            write_probs(path, result, class_names, taxonomy)
        else:
            write_bytes_atomic(path, encode_output(kind, rgb, result, class_names, colors))
    return paths


def class_histogram(labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=len(class_names))[: len(class_names)]


def histogram_keys(class_names: Sequence[str]) -> list[str]:
    """The manifest's name of each class: its name, with `` (id)`` added to a name the taxonomy repeats."""
    repeated = {name for name in class_names if class_names.count(name) > 1}
    return [f"{name} ({i})" if name in repeated else name for i, name in enumerate(class_names)]


def _histogram_dict(counts: np.ndarray, keys: Sequence[str]) -> dict[str, int]:
    """Pixels per class of the output taxonomy, the classes present only, by :func:`histogram_keys`."""
    return {keys[i]: int(counts[i]) for i in np.flatnonzero(counts)}


def _message(item: DemoItem, error: Exception) -> str:
    text = str(error)
    return text if str(item.path) in text else f"{item.path}: {text}"


@dataclass(frozen=True)
class DemoJob:
    """What a run segments and writes, checked once: the inputs (collected), the output folder (created) and the
    outputs asked for (parsed). :meth:`prepare` does the checks; the CLI does them before it loads the model."""

    out: Path
    items: tuple[DemoItem, ...]
    kinds: tuple[str, ...] = DEFAULT_OUTPUTS
    probs_topk: int | None = None

    @classmethod
    def prepare(
        cls,
        inputs: Iterable[str | os.PathLike],
        out_dir: str | os.PathLike,
        outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
        probs_topk: int | None = None,
        inputs_from: Iterable[str | os.PathLike] = (),
    ) -> DemoJob:
        out = Path(out_dir)
        kinds = check_outputs(outputs, probs_topk)
        items = collect_inputs(inputs, out, inputs_from)
        prepare_output_dir(out)
        return cls(out, tuple(items), kinds, probs_topk)


@dataclass(frozen=True)
class DemoOptions:
    """How a job is run; only ``overwrite``, ``save_frames`` and ``max_frames`` change what is written."""

    overwrite: bool = False
    save_frames: bool = False
    max_frames: int | None = None
    progress: bool = True
    background_io: bool = True
    io_workers: int = 1


def run_demo(
    segmenter: Segmenter,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    save_frames: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    background_io: bool = True,
    outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
    probs_topk: int | None = None,
    inputs_from: Iterable[str | os.PathLike] = (),
    io_workers: int = 1,
) -> DemoReport:
    """Segment every input and write its outputs below ``out_dir``; returns what was done and what failed.

    ``outputs``: any of gray, color, overlay, confidence, probs (``probs_topk``: the k most likely classes only);
    videos always give their overlay video, and with ``save_frames`` each frame's gray (and confidence) map.
    ``inputs_from``: list files, one path per line. With ``background_io`` (default) images and frames are decoded
    ahead and outputs encoded and written behind in background threads (``io_workers`` of them for images) while
    the model runs; the outputs are the same as without. Frames of a video go through the segmenter
    ``batch_windows`` at a time.

    In a process group (``torchrun``) every process must call this with the same arguments: each takes its share
    of the inputs left to do, appends its lines to its part of the manifest, and all return the same counts and
    failures. Temporary files left by a killed run are removed first.
    """
    job = DemoJob.prepare(inputs, out_dir, outputs, probs_topk, inputs_from)
    options = DemoOptions(overwrite, save_frames, max_frames, progress, background_io, io_workers)
    return run_job(segmenter, job, options, log)


def run_job(
    segmenter: Segmenter, job: DemoJob, options: DemoOptions = DemoOptions(), log: Callable[[str], None] = print
) -> DemoReport:
    """:func:`run_demo` for a job already checked: what is left to do, then this process's share of the images
    and of the videos, then the report of all processes."""
    with _output_lock(job.out):
        run = _DemoRun(segmenter, job, options, log)
        todo = run.left_to_do()
        run.remove_leftovers()
        mine = todo[distributed.rank() :: distributed.world_size()]
        run.segment_images([i for i in mine if not i.is_video])
        run.segment_videos([i for i in mine if i.is_video])
        run.report.seconds = time.perf_counter() - run.start
        return _gather(run.report, run.manifest)


DEMO_LOCK = ".mseg-demo.lock"
"""The output folder's lock, held by rank 0 of the run writing there (:mod:`mseg_semantic.locks`)."""


@contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """One run per output folder (a second would remove the first one's temporary files): rank 0 holds the folder's
    lock, and every process of the run learns whether it got it, so a refused run stops whole."""
    with ExitStack() as stack:
        error = None
        if distributed.rank() == 0:
            try:
                stack.enter_context(exclusive(out / DEMO_LOCK, "mseg demo"))
            except BusyError as exc:
                error = str(exc)
        if distributed.world_size() > 1:
            error = next((e for e in distributed.all_gather_objects(error) if e), None)
        if error:
            raise BusyError(error)
        yield


class _DemoRun:
    """One run of a job in one process: its manifest lines, its report, its messages (through the progress bar
    while there is one)."""

    def __init__(self, segmenter: Segmenter, job: DemoJob, options: DemoOptions, log: Callable[[str], None]) -> None:
        self.segmenter, self.job, self.options, self.log = segmenter, job, options, log
        self.report = DemoReport(processes=distributed.world_size())
        self.rank = distributed.rank()
        self.manifest = Manifest(job.out, part=self.rank if self.report.processes > 1 else None)
        self.records = self.manifest.read()
        for where in self.manifest.torn:  # the next run redoes such an input: say why
            log(f"note: {where}: an incomplete manifest line (a run was killed or the disk was full); ignored")
        self.start = time.perf_counter()
        probs = "probs" in job.kinds
        self.settings = {"taxonomy": segmenter.output_taxonomy, **taxonomy_record(segmenter.taxonomy),
                         **({"probs_topk": job.probs_topk} if probs else {})}  # fmt: skip
        self.wants = {"confidence": "confidence" in job.kinds, "probs": probs, "topk": job.probs_topk}
        self.names = segmenter.class_names
        self.keys = histogram_keys(self.names)
        self.prefix = f"[rank {self.rank}] " if self.report.processes > 1 else ""
        self.say = log
        self.bar: tqdm | None = None

    # ------------------------------------------------------------------ what is left to do
    def _trusted(self, item: DemoItem) -> bool:
        """Its manifest line says done, with the outputs asked for, which exist, made with the same settings."""
        record = self.records.get(self.manifest.relative(item.out_stem))
        if item.is_video:
            return self.manifest.is_done(record, [video_output(item.out_stem)])
        expected = output_paths(item.out_stem, self.job.kinds)
        return self.manifest.is_done(record, expected) and all(record.get(k) == v for k, v in self.settings.items())

    def left_to_do(self) -> list[DemoItem]:
        todo = []
        for item in self.job.items:
            if not self.options.overwrite and self._trusted(item):
                self.report.skipped += 1
            else:
                todo.append(item)
        self.records.clear()  # 50,000 lines with their histograms: not kept for the whole run
        return todo

    def remove_leftovers(self) -> None:
        if distributed.is_main():
            removed = remove_leftovers(self.job.out)
            if removed:
                self.log(f"removed {removed} temporary file(s) an interrupted run left in {self.job.out}")
        # Every process has decided what is left, and the leftovers are gone, before any of them writes.
        distributed.barrier()

    # ------------------------------------------------------------------ the manifest
    def record(self, item: DemoItem, **fields: Any) -> None:
        self.manifest.append(
            {"name": self.manifest.relative(item.out_stem), "input": str(item.path), **fields, "rank": self.rank}
        )

    def failed(self, item: DemoItem, error: Exception) -> None:
        if not isinstance(error, MsegError):
            raise error
        message = _message(item, error)
        self.report.failures.append(message)
        self.record(item, status="failed", error=message)
        self.say(f"{self.prefix}skipped: {message}")

    # ------------------------------------------------------------------ images
    def segment_images(self, images: list[DemoItem]) -> None:
        """Decode ahead, segment ``batch_windows`` images at a time, write their outputs behind."""
        threaded = self.options.background_io
        disable = not self.options.progress or not images or self.rank != 0
        self.bar = bar = tqdm(total=len(images), desc="images", unit="img", disable=disable)
        self.say = bar.write if not bar.disable else self.log
        # batch_windows > 1 (--batch-windows N, for GPUs): N images at a time, their windows batched together.
        per_batch = max(1, self.segmenter.config.batch_windows)
        with WriteBehind(depth=2 * per_batch, threaded=threaded, workers=self.options.io_workers) as writer:
            batch: list[tuple[DemoItem, np.ndarray]] = []
            for item, rgb, error in read_ahead(_read_item, images, depth=2 * per_batch, threaded=threaded):
                if error is not None:
                    self.failed(item, error)
                    bar.update(1)
                    continue
                assert rgb is not None
                batch.append((item, rgb))
                if len(batch) == per_batch:
                    self._predict(batch, writer)
                    batch = []
            if batch:
                self._predict(batch, writer)
        bar.close()

    def _predict(self, batch: list[tuple[DemoItem, np.ndarray]], writer: WriteBehind) -> None:
        """Segment images together (their windows share forward passes) and queue their outputs."""
        assert self.bar is not None
        began = time.perf_counter()
        try:
            results = self.segmenter.predict_outputs([rgb for _, rgb in batch], **self.wants)
        except MsegError as exc:
            if len(batch) > 1:  # one image the settings cannot take (too elongated): the others one by one
                for entry in batch:
                    self._predict([entry], writer)
                return
            self.failed(batch[0][0], exc)
            self.bar.update(1)
            return
        seconds = (time.perf_counter() - began) / len(batch)
        for (item, rgb), result in zip(batch, results, strict=True):
            on_done = functools.partial(self._written, item, rgb.shape[:2], seconds)
            writer.submit(functools.partial(self._write, item, rgb, result), on_done)

    def _write(self, item: DemoItem, rgb: np.ndarray, result: Prediction) -> tuple[list[Path], np.ndarray, float]:
        """An image's outputs (on a write-behind thread)."""
        began = time.perf_counter()
        paths = write_image_outputs(item.out_stem, rgb, result, self.names, self.job.kinds,
                                    self.segmenter.output_taxonomy, self.segmenter.colors)  # fmt: skip
        return paths, class_histogram(result.labels, self.names), time.perf_counter() - began

    def _written(
        self, item: DemoItem, size: tuple[int, int], seconds: float, done: Any, error: Exception | None
    ) -> None:
        """An image's manifest line, once its outputs are written (on this thread)."""
        assert self.bar is not None
        if error is not None:
            self.failed(item, error)
        else:
            paths, counts, write_seconds = done
            self.report.images += 1
            self.record(item, status="done", outputs=[self.manifest.relative(p) for p in paths], height=size[0],
                        width=size[1], seconds=round(seconds + write_seconds, 4), **self.settings,
                        histogram=_histogram_dict(counts, self.keys))  # fmt: skip
        self.bar.update(1)

    # ------------------------------------------------------------------ videos
    def segment_videos(self, videos: list[DemoItem]) -> None:
        for item in videos:
            began = time.perf_counter()
            try:
                self._segment_video(item, began)
            except MsegError as exc:
                self.failed(item, exc)

    def _segment_video(self, item: DemoItem, began: float) -> None:
        """One video's overlay (and frames), and its manifest line: partial, with the error, when it was cut short."""
        options = self.options
        sink = _run_video(self.segmenter, item, options, options.progress and self.rank == 0,
                          "confidence" in self.job.kinds)  # fmt: skip
        self.report.frames += sink.frames
        warning = sink.warning
        if warning is not None:
            self.report.failures.append(warning)
            self.log(f"{self.prefix}warning: {warning}")
        saved = [video_output(item.out_stem)] + ([sink.frames_dir] if options.save_frames else [])
        self.record(item, status="done" if warning is None else "partial",
                    outputs=[self.manifest.relative(p) for p in saved], height=sink.size[0], width=sink.size[1],
                    frames=sink.frames, seconds=round(time.perf_counter() - began, 4),
                    taxonomy=self.segmenter.output_taxonomy, histogram=_histogram_dict(sink.histogram, self.keys),
                    **({"error": warning} if warning is not None else {}))  # fmt: skip


def _read_item(item: DemoItem) -> np.ndarray:
    return read_image(item.path)


def _gather(report: DemoReport, manifest: Manifest) -> DemoReport:
    """The counts and failures of every process (the same in all); rank 0 then merges the manifest."""
    if report.processes == 1:
        manifest.merge()
        return report
    parts = distributed.all_gather_objects((report.images, report.frames, report.failures, report.seconds))
    report.images = sum(p[0] for p in parts)
    report.frames = sum(p[1] for p in parts)
    report.failures = [f for p in parts for f in p[2]]
    report.seconds = max(p[3] for p in parts)
    if distributed.is_main():  # every process has appended its last line: they are all past the gather
        manifest.merge()
    return report


# ---------------------------------------------------------------------------- one video
def _frames(capture: cv2.VideoCapture, max_frames: int | None) -> Iterator[np.ndarray]:
    """Decoded RGB frames (read in the read-ahead thread when background I/O is on)."""
    count = 0
    while max_frames is None or count < max_frames:
        ok, bgr = capture.read()
        if not ok:
            return
        count += 1
        yield np.ascontiguousarray(bgr[:, :, ::-1])


class _VideoSink:
    """Writes overlay frames (and label and confidence maps) of one video; used from the write-behind thread only."""

    def __init__(self, item: DemoItem, partial: Path, target: Path, fps: float, save_frames: bool,
                 class_names: list[str], colors: Sequence[Sequence[int]] | None = None) -> None:  # fmt: skip
        self.item, self.partial, self.target, self.fps = item, partial, target, fps
        self.save_frames, self.class_names, self.colors = save_frames, class_names, colors
        self.writer: cv2.VideoWriter | None = None
        self.frames_dir = item.out_stem.with_name(item.out_stem.name + "_frames")
        self.histogram = np.zeros(len(class_names), dtype=np.int64)
        self.size = (0, 0)
        self.frames = 0
        self.warning: str | None = None  # set when fewer frames decoded than the container announces

    def write(self, index: int, rgb: np.ndarray, result: Prediction) -> None:
        labels = result.labels
        if self.writer is None:
            self.size = rgb.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (rgb.shape[1], rgb.shape[0]))
            if not self.writer.isOpened():
                raise InputError(f"{self.target}: cannot write the video")
        self.writer.write(np.ascontiguousarray(overlay(rgb, labels, self.class_names, colors=self.colors)[:, :, ::-1]))
        self.histogram += class_histogram(labels, self.class_names)
        if self.save_frames:
            write_label(self.frames_dir / f"{index:06d}_gray.png", labels)
            if result.confidence is not None:
                write_label(self.frames_dir / f"{index:06d}_confidence.png", confidence_values(result.confidence),
                            bits=16)  # fmt: skip

    def release(self) -> None:
        if self.writer is not None:
            self.writer.release()


class _FrameLoop:
    """Feeds a video's frames to the segmenter ``batch_windows`` at a time and their outputs to the sink, written
    behind; stops at the first frame after a write failed."""

    def __init__(self, segmenter: Segmenter, sink: _VideoSink, bar: tqdm, confidence: bool) -> None:
        self.segmenter, self.sink, self.bar, self.confidence = segmenter, sink, bar, confidence
        self.errors: list[Exception] = []
        self.frames = 0

    def run(self, frames: Iterator[np.ndarray], threaded: bool) -> int:
        """Segment ``frames``; returns how many, or raises the first write error."""
        batch = self.segmenter.config.batch_windows  # frames per predict_outputs call
        with WriteBehind(threaded=threaded) as writer:
            chunk: list[np.ndarray] = []
            for _, rgb, _ in read_ahead(_same, frames, depth=2 * batch, threaded=threaded):
                if self.errors:
                    break
                chunk.append(rgb)
                if len(chunk) == batch:
                    self._predict(chunk, writer)
                    chunk = []
            if chunk and not self.errors:
                self._predict(chunk, writer)
        if self.errors:
            raise self.errors[0]
        return self.frames

    def _predict(self, chunk: list[np.ndarray], writer: WriteBehind) -> None:
        results = self.segmenter.predict_outputs(chunk, confidence=self.confidence)
        for rgb, result in zip(chunk, results, strict=True):
            writer.submit(functools.partial(self.sink.write, self.frames, rgb, result), self._written)
            self.frames += 1

    def _written(self, result: None, error: Exception | None) -> None:
        if error is not None:
            self.errors.append(error)
        else:
            self.bar.update(1)


def _same(frame: np.ndarray) -> np.ndarray:
    return frame


def _open_video(path: Path, max_frames: int | None) -> tuple[cv2.VideoCapture, float, int]:
    """The capture, its frame rate (25 when it announces none that makes sense) and the frames it announces (at
    most ``max_frames``; 0: unknown)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"{path}: cannot open the video (corrupt file or unsupported codec)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    if not 0 < fps < 1000:
        fps = 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if max_frames is not None:
        total = min(total, max_frames) if total > 0 else max_frames
    return capture, fps, total


def _run_video(
    segmenter: Segmenter, item: DemoItem, options: DemoOptions, progress: bool, confidence: bool
) -> _VideoSink:
    """Segment one video into ``NAME_overlay.mp4`` (written as a partial file, renamed when complete; removed when
    no frame was segmented); the sink says how many frames, their size and histogram, and a truncated file."""
    capture, fps, total = _open_video(item.path, options.max_frames)
    target = video_output(item.out_stem)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_video(target)
    sink = _VideoSink(item, partial, target, fps, options.save_frames, segmenter.class_names, segmenter.colors)
    bar = tqdm(total=total or None, desc=item.path.name, unit="frame", disable=not progress)
    loop = _FrameLoop(segmenter, sink, bar, confidence and options.save_frames)
    finished = False
    try:
        frames = loop.run(_frames(capture, options.max_frames), options.background_io)
        finished = frames > 0
    finally:
        bar.close()
        capture.release()
        sink.release()
        if not finished:
            partial.unlink(missing_ok=True)
    if frames == 0:
        raise InputError(f"{item.path}: no frame could be decoded")
    with atomic_path(target) as tmp:
        os.replace(partial, tmp)
    sink.frames = frames
    if 0 < frames < total:
        # A truncated or damaged file: keep what decoded, but do not let the run pass for complete.
        sink.warning = (
            f"{item.path}: only {frames} of the {total} frames the container announces could be decoded "
            f"(truncated or damaged video); {target.name} holds those {frames}"
        )
    return sink
