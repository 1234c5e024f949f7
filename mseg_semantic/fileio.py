"""Image and label-map file I/O (lossless, any path characters) and atomic writes.

Label maps are single-channel PNGs (uint8, or uint16 for taxonomies with more than 255 classes). Files are
decoded from bytes (``np.fromfile`` + ``cv2.imdecode``) so that paths with any characters work, and every
write goes to a temporary file in the destination folder that is renamed into place: an interrupted run
never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mseg_semantic.errors import InputError, TooLargeError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temporary files are created private (0600); finished files get the permissions a plain open() would give.
_FILE_MODE = 0o666 & ~_current_umask()


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG without any conversion: (H, W) uint8/uint16, or (H, W, 3) RGB for colour-coded labels."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputError(f"{path}: not a readable image file")
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[:, :, :3]
        image = np.ascontiguousarray(image[:, :, ::-1])  # OpenCV decodes to BGR
    return image


#: The names :func:`atomic_path` gives its temporary files: ".", the target's name, ".", mkstemp's 8 characters, ".tmp".
_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`atomic_path` (one left by a killed process)."""
    return _TEMPORARY_NAME.fullmatch(Path(path).name) is not None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write() names no file: name the target
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync'ed before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def encode_label(label: np.ndarray, *, bits: int | None = None, name: str = "label map") -> bytes:
    """A (H, W) label map as lossless PNG bytes, uint8 when every value fits, else uint16 (``bits=16``: always)."""
    if label.ndim != 2:
        raise InputError(f"{name}: a label map must be 2-D, got shape {label.shape}")
    if label.size and (int(label.min()) < 0 or int(label.max()) > 65535):
        raise InputError(f"{name}: label values must lie in 0..65535")
    dtype = np.uint8 if bits != 16 and (not label.size or int(label.max()) <= 255) else np.uint16
    ok, encoded = cv2.imencode(".png", label.astype(dtype, copy=False))
    if not ok:
        raise InputError(f"{name}: PNG encoding failed")
    return encoded.tobytes()


def write_label(path: str | os.PathLike, label: np.ndarray, *, bits: int | None = None) -> None:
    """Write a (H, W) label map as a lossless PNG (:func:`encode_label`), atomically."""
    write_bytes_atomic(path, encode_label(label, bits=bits, name=str(path)))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) RGB uint8 (grey and palette images are expanded, alpha dropped)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise InputError(f"{path}: empty file")
    return decode_image(data, str(path))


def image_size(data: bytes | np.ndarray, name: str) -> tuple[int, int]:
    """(width, height) of an encoded image, read from its header without decoding a pixel (a service checks it
    against its limit before the decoder allocates anything); ``name`` is for messages."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    if not raw:
        raise InputError(f"{name}: empty (0 bytes): no image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise TooLargeError(f"{name}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        raise InputError(f"{name}: not a readable image (corrupt, truncated, or not an image format)") from None
    if width < 1 or height < 1:
        raise InputError(f"{name}: image has no pixels ({width}x{height})")
    return width, height


def decode_image(data: np.ndarray, name: str, max_pixels: int | None = None) -> np.ndarray:
    """An encoded image (bytes as uint8) as (H, W, 3) RGB uint8: grey and palette expanded, alpha dropped, 16-bit
    samples scaled to 8 bits. The one conversion every image input goes through (``name`` is for messages).

    ``max_pixels``: refuse (:class:`~mseg_semantic.errors.TooLargeError`) an image with more pixels, as its header
    says (:func:`image_size`), before any pixel is decoded: a small file cannot expand into gigabytes."""
    if max_pixels is not None:
        width, height = image_size(data, name)
        if width * height > max_pixels:
            raise TooLargeError(
                f"{name}: image of {width}x{height} = {width * height:,} pixels is over the limit of "
                f"{max_pixels:,} pixels"
            )
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"{name}: not a readable image (corrupt, truncated, or not an image format)")
    return np.ascontiguousarray(image[:, :, ::-1])
