"""Training checkpoints: the original ``.pth`` layout, a slim ``.safetensors`` twin, a ``last`` pointer, last-K kept.

``<out>/checkpoints/iter_00001000.pth`` holds what the original ``train.py`` saved, so its tools can read it::

    {'state_dict': {'module.' + name: tensor}, 'optimizer': ..., 'epoch': int, 'current_iter': int, 'max_iter': int}

plus what an exact resume and the loaders need: ``scaler`` (fp16 only), ``arch``, ``num_classes``, ``config``
(the model's stage config as JSON, so :func:`mseg_semantic.load_model` needs no arguments), ``taxonomy``
and ``train_config`` (the resolved training config as YAML). ``iter_00001000.safetensors`` holds the weights
only, with arch/config/class count/taxonomy metadata (what ``mseg demo`` and ``mseg eval`` take). ``last`` is
a text file naming the newest ``.pth``. Every file is written to a temporary name and renamed, so a kill at any
moment leaves the previous checkpoint intact. Nothing else about the run's position needs saving: the LR,
the data stream and the random draws all follow from ``current_iter`` and the seed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mseg_semantic.errors import CheckpointError
from mseg_semantic.fileio import atomic_path, write_bytes_atomic
from mseg_semantic.models import save_checkpoint
from mseg_semantic.models.weights import read_torch_file
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.taxonomy.master import checkpoint_record

CHECKPOINT_FOLDER = "checkpoints"
FINAL_MODEL = "model.safetensors"  # in the run's folder: the last checkpoint's weights, once the run is complete
LAST_POINTER = "last"
_NAME = re.compile(r"^iter_(\d+)\.pth$")


def checkpoint_stem(iteration: int) -> str:
    return f"iter_{iteration:08d}"


def save_training_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    *,
    iteration: int,
    max_iters: int,
    epoch: int,
    taxonomy: str,
    train_config: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``iter_N.pth`` and ``iter_N.safetensors`` for the unwrapped ``model``, move ``last``, prune old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = checkpoint_stem(iteration)
    payload: dict[str, Any] = {
        "epoch": epoch,
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "current_iter": iteration,
        "max_iter": max_iters,
        "arch": model.arch,
        "num_classes": model.num_classes,
        "config": json.dumps(model.config.to_dict()),
        "taxonomy": taxonomy,
        **checkpoint_record(get_taxonomy(taxonomy)),  # a master table of the user's own travels with the weights
        "train_config": yaml.safe_dump(train_config, sort_keys=False),
    }
    if scaler is not None and scaler.is_enabled():
        payload["scaler"] = scaler.state_dict()
    path = folder / f"{stem}.pth"
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    save_checkpoint(model, folder / f"{stem}.safetensors", taxonomy=taxonomy, current_iter=iteration)
    write_bytes_atomic(folder / LAST_POINTER, f"{path.name}\n".encode())
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """The ``iter_N.pth`` files of ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def find_last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint ``last`` names, or the newest ``iter_N.pth`` when the pointer is missing or stale."""
    pointer = folder / LAST_POINTER
    if pointer.is_file():
        named = folder / pointer.read_text(encoding="utf-8").strip()
        if _NAME.match(named.name) and named.is_file():
            return named
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only``); raises :class:`CheckpointError` for a bad file.

    Everything in it (weights, SGD momentum buffers, the fp16 scaler's numbers, strings) is what
    ``weights_only=True`` reads; nothing else is needed to resume exactly (see the module docstring).
    """
    try:
        state = read_torch_file(path, mmap=False)  # read, not mapped: the momentum buffers are updated in place
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume: {exc}") from exc
    missing = [k for k in ("state_dict", "optimizer", "current_iter") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)}); cannot resume from it")
    return state
