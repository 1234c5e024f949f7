"""The converters of the original data preparation, pixel for pixel.

- COCO panoptic (PNG of segment ids + ``segments_info`` of the JSON) -> semantic ids, the raw category id per
  segment (crowd segments included), 255 elsewhere (``dump_coco_semantic_labels.py``).
- IDD polygon JSON -> idd-40 ids: objects painted in file order with PIL's polygon fill, background
  ``unlabeled`` (``dump_idd_semantic_labels.py``).
- PASCAL-Context ``trainval/<name>.mat`` (``LabelMap``) -> 460-class ids, 16-bit (``mseg_dump_pascalcontext_pngs.py``).
- Colour-coded CamVid / Mapillary labels -> class ids by exact colour match, unmatched colours -> class 0 (as the
  original ``remap_dataset.py --convert_label_from_rgb``).

The COCO annotation files are large (the train JSON is ~400 MB): :func:`panoptic_index` streams the
``annotations`` array and keeps only each image's segment ids and categories as two small arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mseg_semantic.errors import InputError
from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.taxonomy.remap import rgb_to_ids
from mseg_semantic.taxonomy.tables import IGNORE_LABEL, UNLABELED

Segments = tuple[np.ndarray, np.ndarray]  # (segment ids int64, category ids int64) of one image


# ---------------------------------------------------------------------- label files
def read_grey(path: Path) -> np.ndarray:
    """A single-channel label file (8 or 16 bit)."""
    label = read_label(path)
    if label.ndim != 2:
        raise InputError(f"{path}: expected a single-channel label image, got {label.shape[2]} channels")
    return label


def decode_rgb(path: Path, taxonomy: str) -> np.ndarray:
    """Colour-coded labels as the original read them (OpenCV colour decode), unmatched colours -> class 0."""
    return rgb_to_ids(read_image(path), taxonomy, strict=False, unmatched=0)


def panoptic_ids(path: Path) -> np.ndarray:
    """Segment id per pixel of a COCO panoptic PNG: R + 256 G + 65536 B (computed in 32 bits)."""
    rgb = read_label(path)
    if rgb.ndim != 3:
        raise InputError(f"{path}: expected an RGB panoptic PNG")
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)


def coco_semantic(path: Path, segments: Segments) -> np.ndarray:
    """coco-panoptic-201 labels: category id of each listed segment, 255 where no segment is."""
    ids = panoptic_ids(path)
    out = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for segment, category in zip(segments[0].tolist(), segments[1].tolist(), strict=True):
        if not 0 <= category < IGNORE_LABEL:
            raise InputError(f"{path}: segment {segment} has category id {category}, not a coco-panoptic-201 class")
        mask = ids == segment
        if not mask.any():
            raise InputError(f"{path}: segment {segment} of the annotation JSON has no pixels in the PNG")
        if (out[mask] != IGNORE_LABEL).any():
            raise InputError(f"{path}: segment {segment} overlaps an earlier segment")
        out[mask] = category
    return out


def idd_semantic(path: Path) -> np.ndarray:
    """idd-40 labels rasterised from a ``*_gtFine_polygons.json`` (as the original: PIL polygon fill, file order)."""
    from PIL import Image, ImageDraw

    data = read_json(path)
    classes = {name: i for i, name in enumerate(get_taxonomy("idd-40").classes)}
    try:
        size = (int(data["imgWidth"]), int(data["imgHeight"]))
        objects = data["objects"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: not a polygon annotation (missing {exc})") from None
    image = Image.new("L", size, classes[UNLABELED])
    draw = ImageDraw.Draw(image)
    for obj in objects:
        label = obj.get("label")
        polygon = obj.get("polygon") or []
        if obj.get("deleted") or len(polygon) < 3:
            continue
        if label not in classes and isinstance(label, str) and label.endswith("group"):
            label = label[: -len("group")]
        if label not in classes:
            continue  # the original reports and skips labels it does not know
        draw.polygon([(p[0], p[1]) for p in polygon], fill=classes[label])
    return np.asarray(image, dtype=np.uint8)


def pascal_context_mat(path: Path) -> np.ndarray:
    """pascal-context-460 labels (uint16) from a ``trainval/<name>.mat`` file's ``LabelMap``."""
    from scipy.io import loadmat

    try:
        label = loadmat(str(path))["LabelMap"]
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise InputError(f"{path}: not a PASCAL-Context label file ({exc.__class__.__name__}: {exc})") from None
    return np.asarray(label).astype(np.uint16)


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


# ---------------------------------------------------------------------- streaming the COCO panoptic JSON
_CHUNK = 1 << 22


class _Stream:
    """Reads JSON values one at a time from a file without loading it whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.decoder = json.JSONDecoder()

    def close(self) -> None:
        self.handle.close()

    def _more(self, size: int = 0) -> bool:
        if self.eof:
            return False
        chunk = self.handle.read(max(_CHUNK, size))
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        self.eof = not chunk
        return bool(chunk)

    def peek(self) -> str:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                raise self.error("unexpected end of file")

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def value(self):
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                # A value longer than the buffer: grow it geometrically, so a long value is re-scanned O(1) times.
                if self._more(len(self.buf) - self.pos):
                    continue
                raise self.error("malformed JSON") from None
            if end == len(self.buf) and not self.eof and self._more():
                continue  # a number (or literal) may go on in the next chunk
            self.pos = end
            return value

    def error(self, what: str) -> InputError:
        return InputError(f"{self.path}: {what} (not a COCO panoptic annotation file?)")


def iter_json_array(path: Path, key: str):
    """Yield the elements of the top-level ``key`` array of a JSON object file, one at a time."""
    stream = _Stream(path)
    try:
        stream.expect("{")
        if stream.peek() == "}":
            return
        while True:
            name = stream.value()
            stream.expect(":")
            if name == key:
                stream.expect("[")
                if stream.peek() == "]":
                    stream.pos += 1
                else:
                    while True:
                        yield stream.value()
                        if stream.peek() == ",":
                            stream.pos += 1
                            continue
                        stream.expect("]")
                        break
                return
            stream.value()  # another key: read and drop
            if stream.peek() == ",":
                stream.pos += 1
                continue
            stream.expect("}")
            raise stream.error(f"no {key!r} array")
    finally:
        stream.close()


def panoptic_index(path: Path) -> dict[str, Segments]:
    """Image stem -> (segment ids, category ids) of every annotation of a COCO panoptic JSON, in file order."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (the COCO panoptic annotations)")
    index: dict[str, Segments] = {}
    for number, ann in enumerate(iter_json_array(path, "annotations"), start=1):
        try:
            stem = Path(ann["file_name"]).stem
            infos = ann["segments_info"]
            ids = np.array([int(s["id"]) for s in infos], dtype=np.int64)
            cats = np.array([int(s["category_id"]) for s in infos], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: annotation {number} is malformed (missing or bad {exc})") from None
        if stem in index:
            raise InputError(f"{path}: image {stem} is annotated twice")
        index[stem] = (ids, cats)
    return index
