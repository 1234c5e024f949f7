"""Run a :class:`Segmenter` over images, folders and videos and write label maps, colour maps and overlays.

For an image ``NAME.ext`` the outputs are ``NAME_gray.png`` (label ids, lossless), ``NAME_color.png`` (the
taxonomy's palette) and ``NAME_overlay.jpg`` (the image blended with the colour map, class names written on
the regions). For a video, ``NAME_overlay.mp4`` at the source frame rate, and with ``save_frames`` the per-frame
label maps in ``NAME_frames/``. Sub-folders of a folder input are mirrored. Each output is written atomically;
existing outputs are skipped unless ``overwrite``, so an interrupted run resumes where it stopped. A file that
cannot be read is reported and skipped, the others are still processed.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.fileio import atomic_path, is_image_path, is_video_path, read_image, write_bytes_atomic, write_label
from mseg_semantic.inference.background import WriteBehind, read_ahead
from mseg_semantic.inference.segmenter import Segmenter
from mseg_semantic.visualize import colorize, overlay


@dataclass(frozen=True)
class DemoItem:
    """One input file and the output stem (path without suffix) its results are written under."""

    path: Path
    out_stem: Path
    is_video: bool


@dataclass
class DemoReport:
    images: int = 0
    frames: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


def collect_inputs(inputs: Iterable[str | os.PathLike], out_dir: Path) -> list[DemoItem]:
    """Expand files and folders (recursively, sorted) into demo items; errors name the path that is wrong."""
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
    # Two inputs with the same stem in one output folder (a.jpg, a.png) keep their suffix in the output name.
    stems: dict[Path, int] = {}
    for item in items:
        stems[item.out_stem] = stems.get(item.out_stem, 0) + 1
    return [
        DemoItem(i.path, i.out_stem.with_name(f"{i.out_stem.name}_{i.path.suffix[1:].lower()}"), i.is_video)
        if stems[i.out_stem] > 1 else i
        for i in items
    ]  # fmt: skip


def prepare_output_dir(out: Path) -> None:
    """Create the output folder or fail with one clear line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: output folder is not writable")


def image_outputs(stem: Path) -> tuple[Path, Path, Path]:
    return (
        stem.with_name(stem.name + "_gray.png"),
        stem.with_name(stem.name + "_color.png"),
        stem.with_name(stem.name + "_overlay.jpg"),
    )


def video_output(stem: Path) -> Path:
    return stem.with_name(stem.name + "_overlay.mp4")


def _encode(suffix: str, rgb: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(suffix, np.ascontiguousarray(rgb[:, :, ::-1]), params or [])
    if not ok:
        raise InputError(f"could not encode a {suffix} image")
    return data.tobytes()


def write_image_outputs(stem: Path, rgb: np.ndarray, labels: np.ndarray, class_names: list[str]) -> list[Path]:
    gray, color, over = image_outputs(stem)
    write_label(gray, labels)
    write_bytes_atomic(color, _encode(".png", colorize(labels, len(class_names))))
    write_bytes_atomic(over, _encode(".jpg", overlay(rgb, labels, class_names), [cv2.IMWRITE_JPEG_QUALITY, 92]))
    return [gray, color, over]


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
) -> DemoReport:
    """Segment every input and write its outputs below ``out_dir``; returns what was done and what failed.

    With ``background_io`` (default) images and frames are decoded ahead and outputs encoded and written behind in
    background threads while the model runs; the outputs are the same as without. Frames of a video go through
    :meth:`Segmenter.predict_batch` ``batch_windows`` at a time.
    """
    out = Path(out_dir)
    items = collect_inputs(inputs, out)
    prepare_output_dir(out)
    report = DemoReport()
    start = time.perf_counter()
    images = [i for i in items if not i.is_video]
    videos = [i for i in items if i.is_video]
    todo = []
    for item in images:
        if not overwrite and all(p.exists() for p in image_outputs(item.out_stem)):
            report.skipped += 1
        else:
            todo.append(item)
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=not progress or not todo)
    say = bar.write if progress else log

    def failed(error: Exception) -> None:
        if not isinstance(error, MsegError):
            raise error
        report.failures.append(str(error))
        say(f"skipped: {error}")

    def written(outputs: list[Path] | None, error: Exception | None) -> None:
        if error is not None:
            failed(error)
        else:
            assert outputs is not None
            report.outputs.extend(outputs)
            report.images += 1
        bar.update(1)

    with WriteBehind(threaded=background_io) as writer:
        for item, rgb, error in read_ahead(lambda i: read_image(i.path), todo, threaded=background_io):
            if error is not None:
                failed(error)
                bar.update(1)
                continue
            assert rgb is not None
            try:
                labels = segmenter.predict(rgb)
            except MsegError as exc:
                failed(exc)
                bar.update(1)
                continue
            task = functools.partial(write_image_outputs, item.out_stem, rgb, labels, segmenter.class_names)
            writer.submit(task, written)
    bar.close()
    for item in videos:
        target = video_output(item.out_stem)
        if not overwrite and target.exists():
            report.skipped += 1
            continue
        try:
            failures = len(report.failures)
            report.frames += _run_video(segmenter, item, target, save_frames, max_frames, progress, report,
                                        background_io)  # fmt: skip
            for failure in report.failures[failures:]:
                log(f"warning: {failure}")
        except MsegError as exc:
            report.failures.append(str(exc))
            log(f"skipped: {exc}")
    report.seconds = time.perf_counter() - start
    return report


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
    """Writes overlay frames (and label maps) of one video; used from the write-behind thread only."""

    def __init__(self, item: DemoItem, partial: Path, target: Path, fps: float, save_frames: bool,
                 class_names: list[str]) -> None:  # fmt: skip
        self.item, self.partial, self.target, self.fps = item, partial, target, fps
        self.save_frames, self.class_names = save_frames, class_names
        self.writer: cv2.VideoWriter | None = None

    def write(self, index: int, rgb: np.ndarray, labels: np.ndarray) -> None:
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (rgb.shape[1], rgb.shape[0]))
            if not self.writer.isOpened():
                raise InputError(f"{self.target}: cannot write the video")
        self.writer.write(np.ascontiguousarray(overlay(rgb, labels, self.class_names)[:, :, ::-1]))
        if self.save_frames:
            stem = self.item.out_stem
            write_label(stem.with_name(stem.name + "_frames") / f"{index:06d}_gray.png", labels)

    def release(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _run_video(
    segmenter: Segmenter,
    item: DemoItem,
    target: Path,
    save_frames: bool,
    max_frames: int | None,
    progress: bool,
    report: DemoReport,
    background_io: bool = True,
) -> int:
    capture = cv2.VideoCapture(str(item.path))
    if not capture.isOpened():
        raise InputError(f"{item.path}: cannot open the video (corrupt file or unsupported codec)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    if not 0 < fps < 1000:
        fps = 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if max_frames is not None:
        total = min(total, max_frames) if total > 0 else max_frames
    target.parent.mkdir(parents=True, exist_ok=True)
    # OpenCV picks the container from the suffix, so the temporary file keeps ".mp4".
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    sink = _VideoSink(item, partial, target, fps, save_frames, segmenter.class_names)
    bar = tqdm(total=total or None, desc=item.path.name, unit="frame", disable=not progress)
    errors: list[Exception] = []
    frames = 0
    batch = segmenter.config.batch_windows  # frames per predict_batch call

    def written(result: None, error: Exception | None) -> None:
        if error is not None:
            errors.append(error)
        else:
            bar.update(1)

    def run(chunk: list[np.ndarray]) -> None:
        nonlocal frames
        for rgb, labels in zip(chunk, segmenter.predict_batch(chunk), strict=True):
            writer.submit(functools.partial(sink.write, frames, rgb, labels), written)
            frames += 1

    finished = False
    try:
        with WriteBehind(threaded=background_io) as writer:
            chunk: list[np.ndarray] = []
            for _, rgb, _ in read_ahead(lambda f: f, _frames(capture, max_frames), depth=2 * batch,
                                        threaded=background_io):  # fmt: skip
                if errors:
                    break
                chunk.append(rgb)
                if len(chunk) == batch:
                    run(chunk)
                    chunk = []
            if chunk and not errors:
                run(chunk)
        if errors:
            raise errors[0]
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
    report.outputs.append(target)
    if 0 < frames < total:
        # A truncated or damaged file: keep what decoded, but do not let the run pass for complete.
        report.failures.append(
            f"{item.path}: only {frames} of the {total} frames the container announces could be decoded "
            f"(truncated or damaged video); {target.name} holds those {frames}"
        )
    return frames
