"""The released MSeg checkpoints by name, and :func:`load_model`, the one loader of names, paths and the default.

``load_model("mseg-3m")`` downloads the original checkpoint once into the cache (``$MSEG_HOME``, default
``~/.cache/mseg``), checks that it is a real checkpoint of the expected architecture and class count (an HTML page
saved by Google Drive, a truncated or a foreign file is refused and not cached), records its sha256, writes a slim
safetensors copy next to it, and loads that copy. Later loads check the recorded sha256 and need no network.
``load_model("file.safetensors")`` (or an original ``.pth`` with ``arch=``) loads a file, ``load_model()`` the model
that ships with the package. The model carries its taxonomy and recommended preset (``model.taxonomy``,
``model.preset``), which :class:`~mseg_semantic.inference.Segmenter` uses as its defaults.

Downloads resume from a partial ``.part`` file. Google Drive is handled by the ``gdown`` library;
``MSEG_MODEL_MIRROR=URL`` (or ``mirror=``) fetches ``URL/<filename>`` instead, for air-gapped sites and tests.

Public: :func:`load_model`, :func:`get_model_info` (a model's facts), :func:`model_names`, :func:`fetch` (the
verified local file of a model: download ahead of time), :func:`cache_dir` (defined in
:mod:`mseg_semantic.downloads`), :func:`remove`. :func:`lookup` and
:func:`resolve` (a name or a path to a zoo entry / a local file, without loading) serve the command line and
training.
"""

from __future__ import annotations

import functools
import os
import shutil
import urllib.error
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mseg_semantic.downloads import cache_dir, file_digest, http_download
from mseg_semantic.errors import CheckpointError, DownloadError, InputError, TaxonomyError
from mseg_semantic.presets import DEFAULT_PRESET
from mseg_semantic.taxonomy import get_taxonomy, taxonomy_names
from mseg_semantic.taxonomy.tables import NAIVE, NUM_NAIVE_CLASSES, NUM_UNIVERSAL_CLASSES, UNIVERSAL

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DEFAULT_MODEL", "ZooModel", "cache_dir", "fetch", "get_model_info", "load_model", "model_names", "remove"]

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
    preset: str = DEFAULT_PRESET
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


def _find(name: str | None) -> ZooModel | None:
    for model in _registry().values():
        if name == model.name or name in model.aliases:
            return model
    return None


def get_model_info(name: str) -> ZooModel:
    """The zoo entry called ``name`` (or one of its aliases); the error lists the known names."""
    model = _find(name)
    if model is not None:
        return model
    import difflib

    close = difflib.get_close_matches(name, [*_registry(), *(a for m in _registry().values() for a in m.aliases)])
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InputError(f"unknown model {name!r}.{hint} Known models: {', '.join(model_names())} (or a checkpoint path)")


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
        _download(model, original, mirror=mirror, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    convert_checkpoint(original, slim, model.arch, model.num_classes, overwrite=True, taxonomy=model.taxonomy,
                       zoo_name=model.name, source_sha256=_record(original).read_text().split()[0])  # fmt: skip
    _record(slim).write_text(f"{file_digest(slim)}  {slim.name}\n")
    return slim


def _download(model: ZooModel, target: Path, *, mirror: str | None = None, progress: bool = True) -> Path:
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
    name_or_path: str | os.PathLike | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    *,
    taxonomy: str | None = None,
    mirror: str | None = None,
    **options: Any,
) -> nn.Module:
    """A ready model (eval mode, on ``device``) from a zoo name, a checkpoint path, or nothing.

    - ``None``: the compact CamVid-11 model that ships with the package (``camvid11-compact``).
    - A zoo name (``mseg zoo list``): downloaded, verified and cached on first use (``mirror``: a server holding
      the original files, also ``$MSEG_MODEL_MIRROR``). The name fixes the model: an ``arch``, ``num_classes`` or
      ``taxonomy`` that contradicts it, and build ``options``, are an :class:`InputError`.
    - A checkpoint path: a ``.safetensors`` from :func:`~mseg_semantic.models.save_checkpoint` or ``mseg convert``
      records everything; an original ``.pth`` needs ``arch`` (``num_classes`` defaults to the class count of its
      head). ``options`` go to :func:`~mseg_semantic.models.build_model` (``config=`` for ``arch="hrnet"``).

    The model carries what it is as two plain attributes (kept by ``.to()``, ``.eval()`` and ``copy.deepcopy``,
    recorded again by ``save_checkpoint``), the defaults of :class:`~mseg_semantic.inference.Segmenter`:

    - ``model.taxonomy``: the taxonomy of its outputs: ``taxonomy`` when given (it must have the model's class
      count), else the zoo entry's or the one its file records, else ``universal`` for 194 classes, ``naive`` for
      316, the test taxonomy with that many classes (oracle models); ``None`` when the class count does not tell.
    - ``model.preset``: its recommended inference preset: the zoo entry's, or for a file the ``preset`` it records
      or that of the zoo model it was made from; ``None`` when there is none.
    """
    from mseg_semantic.models.checkpoint import build_from_checkpoint

    name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
    # A missing file is the CheckpointError of reading it; an unknown name an InputError listing the zoo.
    entry = None if _is_path(name_or_path) else get_model_info(name_or_path)
    if entry is not None:
        _refuse_contradictions(entry, arch, num_classes, taxonomy, options)
        model, _ = build_from_checkpoint(fetch(entry.name, mirror=mirror))
        model.taxonomy, model.preset = entry.taxonomy, entry.preset
    else:
        path = Path(name_or_path)
        model, metadata = build_from_checkpoint(path, arch, num_classes, **options)
        named = _output_taxonomy(path, model.num_classes, taxonomy, metadata)
        model.taxonomy = named or _default_taxonomy(model.num_classes)
        source = _find(metadata.get("zoo_name"))
        model.preset = metadata.get("preset") or (source.preset if source else None)
    return model.to(device).eval()


def _refuse_contradictions(
    entry: ZooModel, arch: str | None, num_classes: int | None, taxonomy: str | None, options: dict[str, Any]
) -> None:
    """Options given with a zoo name must agree with it: the name alone says what model it is."""
    if arch is not None and arch != entry.arch:
        problem = f"{entry.name} is a {entry.arch} model; arch={arch!r} contradicts it"
    elif num_classes is not None and num_classes != entry.num_classes:
        problem = f"{entry.name} has {entry.num_classes} classes; num_classes={num_classes} contradicts it"
    elif taxonomy is not None and get_taxonomy(taxonomy).name != entry.taxonomy:
        problem = f"{entry.name} outputs taxonomy {entry.taxonomy!r}; taxonomy={taxonomy!r} contradicts it"
    elif options:
        given = ", ".join(f"{key}=" for key in sorted(options))
        problem = f"{given} applies to checkpoint files; {entry.name} records its own architecture"
    else:
        return
    raise InputError(f"{problem} (leave the option out, or load a checkpoint file instead of a zoo name)")


def _output_taxonomy(path: Path, num_classes: int, given: str | None, metadata: dict[str, str]) -> str | None:
    """The taxonomy given for a checkpoint, else the one it records (checked against its class count), or None.

    A taxonomy of the user's own that the file records (a master table's) becomes known by its name."""
    from mseg_semantic.taxonomy.master import recorded_taxonomy

    recorded = metadata.get("taxonomy")
    if given is not None:
        taxonomy = get_taxonomy(given)
    elif recorded is not None:
        try:
            taxonomy = recorded_taxonomy(recorded, metadata, str(path))
        except TaxonomyError as exc:
            raise TaxonomyError(f"{path} records the taxonomy of its outputs, but {exc}") from None
    else:
        return None
    from mseg_semantic.models.checkpoint import check_class_count

    check_class_count(taxonomy, num_classes, path)
    return taxonomy.name


def _default_taxonomy(num_classes: int) -> str | None:
    """The taxonomy of a model's outputs that nobody named: universal for 194 classes, naive for 316, the only test
    taxonomy with that many classes (the oracle models); None when the class count does not tell."""
    if num_classes == NUM_UNIVERSAL_CLASSES:
        return UNIVERSAL
    if num_classes == NUM_NAIVE_CLASSES:
        return NAIVE
    candidates = [name for name in taxonomy_names("test") if get_taxonomy(name).num_classes == num_classes]
    return candidates[0] if len(candidates) == 1 else None


def lookup(name_or_path: str | os.PathLike) -> ZooModel | None:
    """The zoo entry ``name_or_path`` names, or None for an existing checkpoint file (no download, no loading):
    what the command line checks before it loads anything.

    A path-like value that is not a file, or an unknown name, is an :class:`InputError`."""
    if _is_path(name_or_path):
        if not Path(name_or_path).is_file():
            raise InputError(f"{name_or_path}: checkpoint file does not exist")
        return None
    return get_model_info(str(name_or_path))


def _is_path(name_or_path: str | os.PathLike) -> bool:
    """A path rather than a zoo name: a Path object, an existing file, a checkpoint suffix or a folder separator."""
    text = str(name_or_path)
    return (
        not isinstance(name_or_path, str)
        or Path(text).is_file()
        or text.endswith((".pth", ".pt", ".safetensors", ".tar"))
        or os.sep in text
    )


def resolve(name_or_path: str | os.PathLike, *, mirror: str | None = None) -> tuple[Path, ZooModel | None]:
    """A checkpoint path for a path or zoo name (downloaded on first use), and the zoo entry when it is one: for
    those who read the weights themselves (``mseg train``'s ``model.weights``)."""
    model = lookup(name_or_path)
    if model is None:
        return Path(name_or_path), None
    return fetch(model.name, mirror=mirror), model


def remove(name: str) -> None:
    """Delete a model's cached files."""
    shutil.rmtree(model_dir(get_model_info(name)), ignore_errors=True)
