"""Where a relabeling record's segment is found: the mask source of each training dataset.

Masks always come from raw (or not yet relabeled) data, never from the file being written, so one update cannot
change another's mask. What a "segment id" means differs per dataset (as in the original ``dataset_apis``):

| dataset | segment id | mask |
|---|---|---|
| ade20k | B channel of the full release's ``*_seg.png`` | B resized (OpenCV nearest) to the label size, == id |
| coco-panoptic | panoptic segment id (listed in the image's ``segments_info``) | panoptic PNG == id |
| bdd | a class index | original label ``seg/labels/<split>/<stem>_train_id.png`` == id |
| sunrgbd | a class index (sunrgbd-37) | prepared ``semseg-label37`` label == id |
| cityscapes, idd | the object's ``id`` key, else its position in ``objects`` | its polygon, PIL outline + fill |
| mapillary | instance PNG value (class * 256 + instance) | ``instances/<key>.png`` == id |

A source is built once per image (:func:`mask_job`) and sent with the image's job; the job reads it with
:class:`MaskReader`. A segment that this copy of the data does not hold as recorded (absent; an ADE20K segment of
fewer than :data:`MIN_ADE_PIXELS` pixels) raises :class:`RecordMismatch`: the relabel run leaves that segment out
with a warning, or stops under ``--strict``. An unreadable or missing mask file is an ordinary error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mseg_semantic.dataprep.convert import panoptic_ids, read_grey, read_json
from mseg_semantic.errors import InputError
from mseg_semantic.fileio import read_label

MIN_ADE_PIXELS = 10
"""The original refuses ADE20K segments of fewer pixels (after resizing the instance mask)."""


class RecordMismatch(InputError):
    """A record's segment is not in this copy of the data as the record describes it (the caller names the line)."""


@dataclass(frozen=True)
class MaskJob:
    """What one image needs to find its segments: the mask file(s) and, for COCO, the listed segment ids."""

    kind: str
    path: Path | None  # instance PNG / panoptic PNG / polygon JSON / label file (None: the label being written)
    segments: tuple[int, ...] = ()


def mask_job(task: str, root: Path, split: str, parent: str, stem: str, seg_paths: dict[str, Path]) -> MaskJob:
    """The mask source of image (parent, stem) of ``task`` below the list root ``root``."""
    family = task.removesuffix("-relabeled")
    if family == "ade20k-150":
        path = seg_paths.get(stem)
        if path is None:
            raise InputError(
                f"{stem}: no instance mask {stem}_seg.png below {root.parent / 'ADE20K_2016_07_26' / 'images'} "
                "(the full ADE20K release is needed for relabeling)"
            )
        return MaskJob("ade20k", path)
    if family == "coco-panoptic-133":
        return MaskJob("coco", root / "annotations" / f"panoptic_{split}2017" / f"{stem}.png")
    if family == "bdd":
        return MaskJob("class", root / "seg" / "labels" / split / f"{stem}_train_id.png")
    if family == "sunrgbd-37":
        return MaskJob("class", None)  # the prepared semseg-label37 file is the relabel input itself
    if family in ("cityscapes-19", "cityscapes-34", "idd-39"):
        name = stem.removesuffix("_leftImg8bit")
        return MaskJob("polygon", root / "gtFine" / split / parent / f"{name}_gtFine_polygons.json")
    if family == "mapillary-public65":
        folder = "training" if split == "train" else "validation"
        return MaskJob("instance", root / folder / "instances" / f"{stem}.png")
    raise InputError(f"no mask source for {task!r}")


def ade_instance_paths(root: Path) -> dict[str, Path]:
    """Image stem -> ``*_seg.png`` of the full ADE20K release (``ADE20K/ADE20K_2016_07_26/images/**``)."""
    base = root.parent / "ADE20K_2016_07_26" / "images"
    paths: dict[str, Path] = {}
    if base.is_dir():
        for path in sorted(base.rglob("*_seg.png")):
            paths.setdefault(path.name.removesuffix("_seg.png"), path)
    return paths


class MaskReader:
    """Reads one image's mask source once and cuts segments from it."""

    def __init__(self, job: MaskJob, label: np.ndarray, input_label: np.ndarray) -> None:
        self.job = job
        self.shape = label.shape
        self._input = input_label
        self._data = None

    def _load(self):
        if self._data is None:
            kind, path = self.job.kind, self.job.path
            if kind == "ade20k":
                bgr = read_label(path)
                if bgr.ndim != 3:
                    raise InputError(f"{path}: expected an RGB instance mask")
                blue = np.ascontiguousarray(bgr[..., 2])  # read_label gives RGB: B is the last channel
                h, w = self.shape
                self._data = cv2.resize(blue, (w, h), interpolation=cv2.INTER_NEAREST)
            elif kind == "coco":
                self._data = panoptic_ids(path)
            elif kind == "class":
                self._data = self._input if path is None else read_grey(path)
            elif kind == "instance":
                self._data = read_grey(path)
            elif kind == "polygon":
                self._data = read_json(path)
            else:  # pragma: no cover - kinds are fixed above
                raise AssertionError(kind)
            if kind != "polygon" and self._data.shape[:2] != self.shape:
                raise InputError(f"{path}: size {self._data.shape[1]}x{self._data.shape[0]} differs from the label's")
        return self._data

    def mask(self, segment: int) -> np.ndarray:
        """Boolean mask of ``segment``; :class:`RecordMismatch` when the image has no such (usable) segment."""
        data = self._load()
        kind = self.job.kind
        if kind == "polygon":
            mask = _polygon_mask(data, segment, self.job.path)
        elif kind == "coco" and segment not in self.job.segments:
            mask = None
        else:
            mask = data == segment
        if mask is None or not mask.any():
            raise RecordMismatch(f"image has no segment {segment}")
        if kind == "ade20k" and int(mask.sum()) < MIN_ADE_PIXELS:
            raise RecordMismatch(f"segment {segment} has {int(mask.sum())} pixels, fewer than {MIN_ADE_PIXELS}")
        return mask


def _polygon_mask(data: dict, segment: int, path: Path | None) -> np.ndarray | None:
    from PIL import Image, ImageDraw

    try:
        size = (int(data["imgWidth"]), int(data["imgHeight"]))
        objects = data["objects"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: not a polygon annotation (missing {exc})") from None
    for position, obj in enumerate(objects):
        if obj.get("id", position) != segment:
            continue
        points = [(p[0], p[1]) for p in obj.get("polygon") or []]
        if not points:
            return None
        image = Image.new("L", size, 0)
        draw = ImageDraw.Draw(image)
        if len({y for _, y in points}) == 1:
            draw.line(points, fill=1)  # a flat polygon: Pillow draws nothing for it (the original's workaround)
        else:
            draw.polygon(points, outline=1, fill=1)
        mask = np.asarray(image, dtype=np.uint8) == 1
        return mask if mask.any() else None
    return None
