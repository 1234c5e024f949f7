"""The released MSeg checkpoints by name: download, verify, cache, and load them.

``load_model("mseg-3m")`` downloads the original checkpoint once into the cache (``$MSEG_HOME``, default
``~/.cache/mseg``), checks that it is a real checkpoint of the expected architecture and class count (an HTML page
saved by Google Drive, a truncated or a foreign file is refused and not cached), records its sha256, writes a slim
safetensors copy next to it, and loads that copy. Later loads check the recorded sha256 and need no network.

Downloads resume from a partial ``.part`` file. Google Drive is handled by the ``gdown`` library;
``MSEG_MODEL_MIRROR=URL`` (or ``mirror=``) fetches ``URL/<filename>`` instead, for air-gapped sites and tests.
"""

from __future__ import annotations

import functools
import os
import shutil
import urllib.error
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from mseg_semantic.downloads import file_digest, http_download
from mseg_semantic.errors import CheckpointError, DownloadError, InputError
from mseg_semantic.taxonomy import get_taxonomy

ARCH = "hrnet_w48"  # every released model
DEFAULT_MODEL = "camvid11-compact"  # shipped inside the package: what `mseg demo` uses without --model
DRIVE_URL = "https://drive.google.com/file/d/{}/view?usp=sharing"


@dataclass(frozen=True)
class ZooModel:
    """One released checkpoint and the facts a user needs to pick it."""

    name: str
    title: str
    taxonomy: str
    train_resolution: str
    drive_id: str | None
    aliases: tuple[str, ...] = ()
    arch: str = ARCH
    preset: str = "360_ms"
    filename: str = ""
    published: dict[str, float] = field(default_factory=dict)
    published_training: dict[str, float] = field(default_factory=dict)
    bundled: str | None = None  # file shipped inside the package (no download)
    notes: str = ""

    @property
    def num_classes(self) -> int:
        return get_taxonomy(self.taxonomy).num_classes

    @property
    def url(self) -> str | None:
        return DRIVE_URL.format(self.drive_id) if self.drive_id else None

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name, "aliases": list(self.aliases), "title": self.title, "arch": self.arch,
            "num_classes": self.num_classes, "taxonomy": self.taxonomy, "train_resolution": self.train_resolution,
            "preset": self.preset, "filename": self.filename, "source": self.url or "bundled with the package",
            "notes": self.notes,
            "published_miou": self.published, "published_miou_training_datasets": self.published_training,
        }  # fmt: skip


@functools.cache
def _registry() -> dict[str, ZooModel]:
    data = yaml.safe_load(resources.files("mseg_semantic").joinpath("config", "zoo.yaml").read_text())
    models = {}
    for entry in data["models"]:
        entry = dict(entry)
        entry["aliases"] = tuple(entry.get("aliases", ()))
        entry.setdefault("filename", f"{entry['name']}.pth")
        models[entry["name"]] = ZooModel(**entry)
    return models


def model_names() -> list[str]:
    """Names of every model in the zoo (aliases not included)."""
    return list(_registry())


def get_model_info(name: str) -> ZooModel:
    """The zoo entry called ``name`` (or one of its aliases); the error lists the known names."""
    for model in _registry().values():
        if name == model.name or name in model.aliases:
            return model
    import difflib

    close = difflib.get_close_matches(name, [*_registry(), *(a for m in _registry().values() for a in m.aliases)])
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InputError(f"unknown model {name!r}.{hint} Known models: {', '.join(model_names())} (or a checkpoint path)")


def cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$MSEG_HOME`` or ``$XDG_CACHE_HOME/mseg`` (default ``~/.cache/mseg``)."""
    if os.environ.get("MSEG_HOME"):
        return Path(os.environ["MSEG_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mseg"


def model_dir(model: ZooModel) -> Path:
    return cache_dir() / "models" / model.name


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified(path: Path) -> bool:
    """True when ``path`` exists and matches its recorded sha256; a mismatch is an error (the file changed)."""
    record = _record(path)
    if not path.exists() or not record.exists():
        return False
    expected = record.read_text().split()[0]
    actual = file_digest(path)
    if actual != expected:
        raise CheckpointError(
            f"{path} does not match the sha256 recorded when it was downloaded ({expected[:12]}... vs "
            f"{actual[:12]}...): the file was changed or damaged. Delete it and download again."
        )
    return True


def fetch(name: str, *, mirror: str | None = None, progress: bool = True) -> Path:
    """The verified slim ``.safetensors`` of zoo model ``name``, downloading and converting on first use."""
    from mseg_semantic.models import convert_checkpoint

    model = get_model_info(name)
    if model.bundled:
        path = Path(str(resources.files("mseg_semantic").joinpath(model.bundled)))
        if not path.is_file():
            raise CheckpointError(f"{model.name} should ship with the package at {path} but is missing: reinstall")
        return path
    folder = model_dir(model)
    slim = folder / f"{model.name}.safetensors"
    if _verified(slim):
        return slim
    original = folder / model.filename
    if not _verified(original):
        download(model, original, mirror=mirror, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    convert_checkpoint(original, slim, model.arch, model.num_classes, overwrite=True, taxonomy=model.taxonomy,
                       zoo_name=model.name, source_sha256=_record(original).read_text().split()[0])  # fmt: skip
    _record(slim).write_text(f"{file_digest(slim)}  {slim.name}\n")
    return slim


def download(model: ZooModel, target: Path, *, mirror: str | None = None, progress: bool = True) -> Path:
    """Download the original checkpoint of ``model`` to ``target`` (resumable), verify it, record its sha256."""
    mirror = mirror or os.environ.get("MSEG_MODEL_MIRROR")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    source = f"{mirror.rstrip('/')}/{model.filename}" if mirror else model.url
    try:
        if mirror:
            http_download(source, part, progress=progress)
        else:
            _drive_download(model, part, progress)
    except (DownloadError, OSError, urllib.error.URLError, RuntimeError, ValueError) as exc:
        raise DownloadError(_manual_steps(model, target, f"downloading {source} failed ({exc})")) from None
    try:
        _check_checkpoint(model, part)
    except CheckpointError as exc:
        part.unlink(missing_ok=True)  # a bad file must not be resumed or cached
        raise DownloadError(f"{source} did not give a valid {model.name} checkpoint: {exc}") from None
    os.replace(part, target)
    _record(target).write_text(f"{file_digest(target)}  {target.name}\n")
    return target


def _manual_steps(model: ZooModel, target: Path, reason: str) -> str:
    where = model.url or "(no public source)"
    return (
        f"{reason}. To install {model.name} by hand: download {where} and save it as {target}, then run "
        f"'mseg zoo download {model.name}' to verify it (or set MSEG_MODEL_MIRROR=URL to a server holding "
        f"{model.filename})"
    )


def _drive_download(model: ZooModel, part: Path, progress: bool) -> None:
    import gdown

    if not model.drive_id:
        raise ValueError(f"{model.name} has no download source")
    result = gdown.download(id=model.drive_id, output=str(part), quiet=not progress, resume=True)
    if result is None:
        raise OSError("Google Drive refused the download (quota exceeded or access denied)")


def _check_checkpoint(model: ZooModel, path: Path) -> None:
    """A real checkpoint whose keys and class count fit ``model`` (the file is read with weights_only)."""
    from mseg_semantic.models import build_model
    from mseg_semantic.models.weights import load_state_dict_strictly, read_weights

    state_dict, _ = read_weights(path)
    load_state_dict_strictly(build_model(model.arch, model.num_classes), state_dict, source=str(path))


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    arch: str | None = None,
    num_classes: int | None = None,
    device: str = "cpu",
    *,
    mirror: str | None = None,
    **options: Any,
) -> nn.Module:
    """A ready model (eval mode) from a checkpoint path or a zoo name (downloaded and cached on first use).

    Without a name: the compact CamVid-11 model that ships with the package (``camvid11-compact``)."""
    from mseg_semantic.models import load_model as load_file

    path, entry = resolve(name_or_path, mirror=mirror)
    if entry is None:
        return load_file(path, arch=arch, num_classes=num_classes, device=device, **options)
    return load_file(path, device=device)


def lookup(name_or_path: str | os.PathLike) -> ZooModel | None:
    """The zoo entry ``name_or_path`` names, or None for an existing checkpoint file (no download, no loading).

    A path-like value that is not a file, or an unknown name, is an :class:`InputError`."""
    path = Path(name_or_path)
    if path.is_file():
        return None
    if str(name_or_path).endswith((".pth", ".pt", ".safetensors", ".tar")) or os.sep in str(name_or_path):
        raise InputError(f"{path}: checkpoint file does not exist")
    return get_model_info(str(name_or_path))


def resolve(name_or_path: str | os.PathLike, *, mirror: str | None = None) -> tuple[Path, ZooModel | None]:
    """A checkpoint path for a path or zoo name, and the zoo entry when it is one."""
    model = lookup(name_or_path)
    if model is None:
        return Path(name_or_path), None
    return fetch(model.name, mirror=mirror), model


def remove(name: str) -> None:
    """Delete a model's cached files."""
    shutil.rmtree(model_dir(get_model_info(name)), ignore_errors=True)
