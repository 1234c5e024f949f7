"""Checkpoints: load the original MSeg ``.pth`` files strictly, save and rebuild from ``.safetensors``.

Our own format is a safetensors file of ``model.state_dict()`` (names without ``module.``) whose metadata
holds everything needed to rebuild the model from the file alone::

    format="mseg-semantic"  format_version="1"  arch="hrnet_w48"  num_classes="194"
    config='{"FINAL_CONV_KERNEL": 1, "STAGE1": {...}, ...}'  plus any extra keys, e.g. taxonomy="universal"

Extra metadata values that are not strings are stored as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from mseg_semantic.errors import CheckpointError, InputError, TaxonomyError
from mseg_semantic.models.registry import build_model
from mseg_semantic.models.weights import (
    guess_arch,
    head_classes,
    load_state_dict_strictly,
    read_weights,
    write_safetensors,
)

if TYPE_CHECKING:
    from mseg_semantic.taxonomy import Taxonomy

FORMAT_NAME = "mseg-semantic"
FORMAT_VERSION = "1"
#: Metadata keys written by save_checkpoint itself.
RESERVED_METADATA = ("format", "format_version", "arch", "num_classes", "config")
#: What a model from :func:`mseg_semantic.load_model` carries as attributes, kept in the metadata of its checkpoint.
CARRIED = ("taxonomy", "preset")


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, str]:
    """Load a checkpoint file into ``model`` strictly; returns the file's metadata.

    Accepts the original layout (``{'state_dict': {'module.' + name: tensor}, 'epoch', 'optimizer', ...}``), a
    bare state_dict with or without ``module.``, and ``.safetensors``. Only ``torch.load(weights_only=True)`` or
    safetensors read the file. Raises :class:`CheckpointError` when the file is not a checkpoint, or when names
    or shapes differ from the model's (the message names them and the likely cause).
    """
    state_dict, metadata = read_weights(path)
    load_state_dict_strictly(model, state_dict, source=str(path))
    return metadata


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], **metadata: Any) -> Path:
    """Write ``model``'s weights to a ``.safetensors`` file (atomically) with its arch, config and class count.

    ``metadata``: extra entries such as ``taxonomy="camvid-11"``. The ``taxonomy`` and ``preset`` a model carries
    (one from :func:`mseg_semantic.load_model`) are recorded unless given. Returns the path written.
    """
    missing = [name for name in ("arch", "config", "num_classes") if not hasattr(model, name)]
    if missing:
        raise InputError(
            f"save_checkpoint needs a model from build_model (one with arch, config and num_classes); "
            f"this {type(model).__name__} lacks {missing}"
        )
    clashes = sorted(set(RESERVED_METADATA) & set(metadata))
    if clashes:
        raise InputError(f"metadata keys {clashes} are written by save_checkpoint itself; choose other names")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "num_classes": str(model.num_classes),
        "config": json.dumps(model.config.to_dict()),
    }
    for key in CARRIED:
        if key not in metadata and getattr(model, key, None) is not None:
            metadata[key] = getattr(model, key)
    if metadata.get("taxonomy") is not None:
        from mseg_semantic.taxonomy import get_taxonomy
        from mseg_semantic.taxonomy.master import checkpoint_record

        taxonomy = get_taxonomy(str(metadata["taxonomy"]))
        check_class_count(taxonomy, model.num_classes, path)
        metadata = {**checkpoint_record(taxonomy), **metadata}  # a taxonomy of the user's own travels with the model
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    return write_safetensors(model.state_dict(), path, header)


def check_class_count(taxonomy: Taxonomy, num_classes: int, path: str | os.PathLike[str]) -> None:
    """A model's file names the taxonomy of its outputs only if it has as many classes: checked when a file is
    written (:func:`save_checkpoint`) and when one is loaded (:func:`mseg_semantic.load_model`)."""
    if taxonomy.num_classes != num_classes:
        raise TaxonomyError(
            f"{path}: the model has {num_classes} output classes but taxonomy {taxonomy.name!r} has "
            f"{taxonomy.num_classes}; give the taxonomy of the model's outputs (or none)"
        )


def build_from_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    num_classes: int | None = None,
    **options: Any,
) -> tuple[nn.Module, dict[str, str]]:
    """Build the model a checkpoint file holds and load it strictly: ``(model in eval mode on the CPU, metadata)``.

    The step of :func:`mseg_semantic.load_model` that reads a file (that function adds zoo names, the device and
    what the model is: its taxonomy and preset). A file written by :func:`save_checkpoint` needs nothing else. An
    original ``.pth`` needs ``arch`` (e.g. ``"hrnet_w48"``); ``num_classes`` defaults to the class count of the
    file's head. ``options`` go to :func:`build_model` (``config=`` for ``arch="hrnet"`` from a ``.pth``).
    """
    state_dict, metadata = read_weights(path)
    saved_arch = metadata.get("arch")
    if arch is None:
        if saved_arch is None:
            guess = guess_arch(state_dict)
            hint = f" (its keys look like {guess!r})" if guess else ""
            raise CheckpointError(
                f"{path} does not record its architecture; pass arch=...{hint}", keywords={"arch": "arch=..."}
            )
        arch = saved_arch
    if arch == saved_arch and "config" in metadata and "config" not in options:
        try:
            options["config"] = json.loads(metadata["config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: its 'config' metadata is not valid JSON ({exc})") from exc
    if num_classes is None:
        num_classes = _saved_classes(path, metadata, state_dict)
    model = build_model(arch, num_classes, **options)
    load_state_dict_strictly(model, state_dict, source=str(path))
    return model.eval(), metadata


def _saved_classes(path: str | os.PathLike[str], metadata: dict[str, str], state_dict: dict) -> int:
    if "num_classes" in metadata:
        try:
            return int(metadata["num_classes"])
        except ValueError as exc:
            raise CheckpointError(
                f"{path}: its num_classes metadata {metadata['num_classes']!r} is not an integer"
            ) from exc
    classes = head_classes(state_dict)
    if classes is None:
        raise CheckpointError(
            f"{path}: no classifier head found to read the class count from; pass num_classes=",
            keywords={"num_classes": "num_classes="},
        )
    return classes


def convert_checkpoint(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    arch: str | None,
    num_classes: int | None = None,
    *,
    config: Any = None,
    overwrite: bool = False,
    **metadata: Any,
) -> Path:
    """Convert a checkpoint (typically an original 528 MB ``.pth``) to a weights-only ``.safetensors`` file.

    The weights are loaded strictly into ``build_model(arch, num_classes)`` first, so a file that does not fit
    the arch is refused rather than converted. ``metadata`` (e.g. ``taxonomy="universal"``) is stored with the
    source file's name. An existing ``out_path`` is replaced only with ``overwrite=True``. Returns ``out_path``.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists() and not overwrite:
        raise InputError(
            f"{out_path} already exists; pass overwrite=True to replace it", keywords={"overwrite": "overwrite=True"}
        )
    if out_path.exists() and out_path.resolve() == in_path.resolve():
        raise InputError(f"{out_path} is the input file; write the converted checkpoint elsewhere")
    options = {} if config is None else {"config": config}
    model, _ = build_from_checkpoint(in_path, arch=arch, num_classes=num_classes, **options)
    metadata.setdefault("source", in_path.name)
    return save_checkpoint(model, out_path, **metadata)
