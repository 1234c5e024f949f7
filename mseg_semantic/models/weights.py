"""Reading and writing weight files safely, and fitting their tensors into a model strictly.

Two readers only: ``torch.load(..., weights_only=True)`` (tensors and plain containers, never code) for the
original ``.pth`` files and training checkpoints (:func:`read_torch_file`), and safetensors. A file is recognised
by its first bytes, not by its name, so an HTML page saved by a failed download, an empty or a truncated file each
get a message that says so instead of a pickle traceback. Every error is a
:class:`~mseg_semantic.errors.CheckpointError` naming the file.

This module knows nothing of the model registry (the registry uses it for ``backbone_weights=``).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from mseg_semantic.errors import CheckpointError

logger = logging.getLogger(__name__)

#: DataParallel / DistributedDataParallel prefix of every key in the original checkpoints.
WRAPPER_PREFIX = "module."
#: The classifier weight of each model family; its first dimension is the class count.
HEAD_KEYS = ("last_layer.3.weight", "cls.4.weight")
#: The modules whose shapes depend on the class count.
_HEAD_PREFIXES = ("last_layer.3.", "cls.4.", "aux.4.")
#: How many key names an error message lists before "... and N more".
_LIST_LIMIT = 6
# safetensors refuses headers above 100 MB; anything claiming more is not a safetensors file.
_MAX_SAFETENSORS_HEADER = 100_000_000


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else "")


def _sniff(path: Path) -> str:
    """``'safetensors'``, ``'zip'`` (torch >= 1.6), ``'pickle'`` (legacy torch.save), or raise with the reason."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"checkpoint {path} is a folder, not a file") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted download? Download it again")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise CheckpointError(
            f"checkpoint {path} is an HTML/XML page, not weights: the download saved a web page (Google Drive "
            "shows a confirmation page for large files). Download the file itself again"
        )
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    # Before the pickle test: a safetensors header length can start with the byte 0x80 too.
    if len(head) > 8 and head[8:9] == b"{":
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size <= min(_MAX_SAFETENSORS_HEADER, size - 8):
            return "safetensors"
    if head.startswith(b"\x80"):
        return "pickle"
    raise CheckpointError(
        f"{path} is not a PyTorch or safetensors checkpoint (it starts with {head[:16]!r}); "
        "is it the right file, completely downloaded?"
    )


def read_torch_file(path: str | os.PathLike[str], *, mmap: bool = True) -> object:
    """What a ``torch.save`` file holds (a training checkpoint, an original ``.pth``), read safely.

    The one place a checkpoint is unpickled: ``torch.load(weights_only=True)`` on the CPU, so tensors and plain
    containers only, never code. A missing, empty, HTML, truncated or corrupt file, one that asks to import code,
    and a ``.safetensors`` file (weights only) each raise :class:`CheckpointError` naming the file and the cause.
    ``mmap=True`` maps the tensors of a zip-format file instead of reading them (legacy files are read).
    """
    path = Path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        raise CheckpointError(f"{path} is a safetensors file: it holds weights only, not what torch.save wrote")
    return _torch_load(path, kind, mmap=mmap)


def _torch_load(path: Path, kind: str, *, mmap: bool = True) -> object:
    try:
        # mmap keeps the optimizer state of the original 528 MB files out of memory; legacy files cannot mmap.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and kind == "zip")
    except pickle.UnpicklingError as exc:
        message = str(exc)
        found = re.search(r"GLOBAL (\S+?)(?: was| whose|\s|$)", message)
        if found:
            raise CheckpointError(
                f"refused to load {path}: it asks to import {found.group(1)}, which a weights file never "
                "needs. Checkpoints are read with torch.load(weights_only=True), which does not run code from "
                "the file; this file is corrupt, truncated or was crafted to run code"
            ) from exc
        raise CheckpointError(f"{path} is corrupt or truncated: it is not a readable PyTorch checkpoint") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        # torch's first sentence says what failed; the rest is generic advice.
        reason = str(exc).split(". ")[0].strip() or type(exc).__name__
        raise CheckpointError(
            f"{path} is corrupt or truncated (an interrupted download?): torch could not read it ({reason})"
        ) from exc


def _read_safetensors(path: Path, tensors: bool = True) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            loaded = {key: f.get_tensor(key) for key in f.keys()} if tensors else {}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError, not importable by a stable name
        raise CheckpointError(f"{path} is a corrupt or truncated safetensors file ({exc})") from exc
    return loaded, metadata


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a checkpoint file: returns ``(state_dict, metadata)``.

    Accepts the original layout ``{'state_dict': {'module.' + name: tensor}, 'epoch', 'optimizer', ...}``, a bare
    state_dict with or without the ``module.`` prefix, and ``.safetensors`` files. The prefix is removed.
    ``metadata`` is the safetensors metadata, or the scalar top-level entries of a ``.pth`` (``epoch``, ...)
    as strings. Raises :class:`CheckpointError` for anything that is not such a file.
    """
    path = Path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        tensors, metadata = _read_safetensors(path)
    else:
        loaded = _torch_load(path, kind)
        if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
            tensors = dict(loaded["state_dict"])
            metadata = {k: str(v) for k, v in loaded.items() if isinstance(v, (int, float, str)) and k != "state_dict"}
        elif isinstance(loaded, Mapping) and loaded and all(isinstance(v, Tensor) for v in loaded.values()):
            tensors, metadata = dict(loaded), {}
        else:
            top = sorted(map(str, loaded)) if isinstance(loaded, Mapping) else type(loaded).__name__
            raise CheckpointError(f"{path} holds no state_dict (a mapping of names to tensors); it has {top}")
    not_tensors = sorted(k for k, v in tensors.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {_names(not_tensors)}")
    return {k.removeprefix(WRAPPER_PREFIX): v for k, v in tensors.items()}, metadata


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A checkpoint's metadata without loading its tensors when it is a ``.safetensors`` file.

    For an original ``.pth`` this is its scalar top-level entries (``epoch``, ``current_iter``, ...).
    """
    path = Path(path)
    if _sniff(path) != "safetensors":
        return read_weights(path)[1]
    return _read_safetensors(path, tensors=False)[1]


def write_safetensors(tensors: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str]) -> Path:
    """Write atomically: a temporary file in the same folder, then ``os.replace`` (no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # A unique hidden name in the same folder, so that os.replace is atomic.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb"):
            mode = tmp.stat().st_mode  # what the umask gives a new file
        save_file(contiguous, tmp, metadata=dict(metadata))
        os.chmod(tmp, mode)  # safetensors leaves its files readable by the owner only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def head_classes(state_dict: Mapping[str, Tensor]) -> int | None:
    """The class count of a state_dict's classifier, or None when it has none we know."""
    for key in HEAD_KEYS:
        if key in state_dict and state_dict[key].ndim >= 1:
            return int(state_dict[key].shape[0])
    return None


def guess_arch(state_dict: Mapping[str, Tensor]) -> str | None:
    """The registry name whose keys this state_dict has (``hrnet`` for HRNets of another width), or None."""
    if "last_layer.3.weight" in state_dict:
        transition = state_dict.get("transition1.0.0.weight")
        is_w48 = (
            transition is not None and transition.shape[0] == 48 and "stage4.2.fuse_layers.0.1.0.weight" in state_dict
        )
        return "hrnet_w48" if is_w48 else "hrnet"
    if "cls.4.weight" in state_dict and "layer0.0.weight" in state_dict:
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"layer3\.(\d+)\.", k))}
        return {6: "pspnet50", 23: "pspnet101", 36: "pspnet152"}.get(len(blocks))
    return None


def _is_batch_counter(key: str) -> bool:
    # BN's batch counter: files written before PyTorch 0.4.1 lack it, and it only matters for momentum=None.
    return key.endswith(".num_batches_tracked")


def _mismatch_hints(
    state_dict: Mapping[str, Tensor], arch: str, num_classes: int | None, only_head_differs: bool
) -> list[str]:
    """The likely causes of a mismatch, read from the file's own keys and head."""
    hints = []
    file_arch, file_classes = guess_arch(state_dict), head_classes(state_dict)
    if file_arch is not None and file_arch != arch:
        config = " with config= its stage configuration" if file_arch == "hrnet" else ""
        hints.append(f"hint: the file's keys are those of arch {file_arch!r}; use arch={file_arch!r}{config}")
    elif file_arch == arch == "hrnet" and not only_head_differs:
        hints.append("hint: the file holds an HRNet of another stage configuration; pass its config=")
    if file_classes is not None and num_classes is not None and file_classes != num_classes:
        hints.append(f"hint: the file's classifier has {file_classes} classes; use num_classes={file_classes}")
    return hints


def load_state_dict_strictly(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """``model.load_state_dict`` that first checks names and shapes and explains any mismatch.

    The explanation names the missing/unexpected keys and differing shapes, and hints at the cause: a head
    with another class count (and which), or a file of another architecture (and which).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not _is_batch_counter(k)]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        arch = getattr(model, "arch", type(model).__name__)
        num_classes = getattr(model, "num_classes", None)
        only_head_differs = not missing and not unexpected and all(k.startswith(_HEAD_PREFIXES) for k in mismatched)
        lines = [f"{source} does not fit the model {arch!r}" + (f" with {num_classes} classes" if num_classes else "")]
        lines += _mismatch_hints(state_dict, arch, num_classes, only_head_differs)
        if missing:
            lines.append(f"{len(missing)} key(s) of the model are missing from the file: {_names(missing)}")
        if unexpected:
            lines.append(f"{len(unexpected)} key(s) of the file are not in the model: {_names(unexpected)}")
        if mismatched:
            shapes = [
                f"{k} is {tuple(state_dict[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                for k in mismatched
            ]
            lines.append(f"{len(mismatched)} shape mismatch(es): {_names(shapes)}")
        raise CheckpointError("\n  ".join(lines))
    counters = {k: own[k] for k in own if _is_batch_counter(k) and k not in state_dict}
    model.load_state_dict({**state_dict, **counters}, strict=True)


@dataclass
class BackboneReport:
    """What :func:`load_backbone_weights` did: model keys set, file keys skipped, model keys left as they were."""

    path: Path
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"backbone weights {self.path}: loaded {len(self.loaded)} tensors"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} that the model has no place for ({_names(self.skipped)})"
        if self.not_in_file:
            text += f"; {len(self.not_in_file)} model tensors keep their initial values ({_names(self.not_in_file)})"
        return text


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> BackboneReport:
    """Initialise ``model`` from an ImageNet classification file (a plain state_dict in its authors' layout).

    ``model.backbone_key(file_key)`` maps each file key to the model's name for it. Entries without a place in the
    model (the classifier, HRNet's ``incre_modules``/``downsamp_modules``/``final_layer``, ResNet's ``fc``) are
    skipped and reported; the segmentation head keeps its initialisation. A tensor whose shape differs, or a
    file of which nothing fits, raises :class:`CheckpointError`. The report is logged and returned.
    """
    tensors, _ = read_weights(path)
    own = model.state_dict()
    renamed: dict[str, Tensor] = {}
    report = BackboneReport(Path(path))
    for file_key, tensor in tensors.items():
        key = model.backbone_key(file_key)
        if key not in own:
            report.skipped.append(file_key)
        elif tensor.shape != own[key].shape:
            raise CheckpointError(
                f"backbone weights {path}: {file_key} is {tuple(tensor.shape)} in the file but {key} is "
                f"{tuple(own[key].shape)} in the model: a backbone of another width or depth?"
            )
        else:
            renamed[key] = tensor
    if not renamed:
        raise CheckpointError(
            f"backbone weights {path}: none of its {len(tensors)} tensors has a place in the model "
            f"(first keys: {_names(list(tensors))}); is it the ImageNet file for this architecture?"
        )
    model.load_state_dict(renamed, strict=False)
    report.loaded = list(renamed)
    report.not_in_file = [k for k in own if k not in renamed and not _is_batch_counter(k)]
    logger.info(report.summary())
    return report
