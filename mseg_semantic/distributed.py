"""Processes and devices: one process, or one per device under ``torchrun``; used by demo, eval and train.

``torchrun`` (``python -m torch.distributed.run``) starts the processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; several machines use its usual rendezvous options. Without
those variables everything runs in one process and the collective helpers below do nothing, so the same code
serves both. The rules, in one place:

- device (:func:`resolve_device`): ``auto`` is CUDA when available, else the CPU; ``cuda`` is this process's GPU
  (``cuda:LOCAL_RANK``); ``cuda:N`` is GPU N. A device that is not there is an :class:`InputError` (one line and
  exit status 2 on the command line), never an assertion deep inside PyTorch.
- process group (:func:`init_process`): NCCL when this process runs on a GPU, gloo otherwise; joined from
  torchrun's environment only (no port or address from a config file).
- collectives (:func:`all_reduce_sum`, :func:`all_gather_objects`, :func:`barrier`): no-ops in one process; on
  NCCL a CPU tensor or numpy array travels through this process's GPU and comes back where it was.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from mseg_semantic.errors import InputError

_Reducible = TypeVar("_Reducible", torch.Tensor, np.ndarray)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 without torchrun)."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank in the group (0 without torchrun)."""
    return dist.get_rank() if _initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine, i.e. the GPU it uses (torchrun's ``LOCAL_RANK``; 0 without it)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that writes results, logs, checkpoints and progress."""
    return rank() == 0


def resolve_device(setting: str | torch.device, cuda_index: int | None = None) -> torch.device:
    """The device ``setting`` names (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked to exist.

    ``auto``: ``cuda`` when CUDA is available, else ``cpu``. ``cuda`` without an index means ``cuda:cuda_index``
    (default: torchrun's ``LOCAL_RANK``, 0 without torchrun). Raises :class:`InputError` for an unknown name or a
    missing device.
    """
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting.strip().lower() if isinstance(setting, str) else setting)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"device {str(setting)!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(f"device {str(setting)!r}: CUDA is not available on this machine (use cpu, or auto)")
    if device.index is None:
        device = torch.device("cuda", local_rank() if cuda_index is None else cuda_index)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise InputError(f"device {str(device)!r} does not exist ({count} GPU(s) visible)")
    return device


@dataclass(frozen=True)
class ProcessContext:
    """Where this process runs and how many run together (made by :func:`init_process`)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # init_process created the process group (and close_process destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes results, logs, checkpoints and progress."""
        return self.rank == 0


def init_process(device: str | torch.device, timeout: timedelta | None = None) -> ProcessContext:
    """Read torchrun's environment, resolve ``device`` and join the process group when there are several ranks.

    NCCL when the device is a GPU, gloo otherwise. A group that already exists (a caller made it) is used as it
    is and left to its owner. ``timeout``: how long a collective waits for the slowest process (default:
    PyTorch's, 10 to 30 minutes); a command whose processes meet only at the start and the end
    of hours of work needs more. Pair with :func:`close_process`.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    process_rank = int(os.environ.get("RANK", "0"))
    resolved = resolve_device(device)
    owns_group = False
    if size > 1 and not _initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        options = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", init_method="env://", **options)
        owns_group = True
    if _initialized():
        size, process_rank = dist.get_world_size(), dist.get_rank()
    return ProcessContext(process_rank, size, local_rank(), resolved, owns_group)


def close_process(ctx: ProcessContext) -> None:
    """Leave the process group if :func:`init_process` created it.

    What may still hold the group (a DistributedDataParallel wrapper left in a reference cycle) is collected first,
    so the group and its worker threads end here, in order, rather than in the interpreter's teardown at exit.
    """
    if ctx.owns_group and _initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in one process)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: _Reducible) -> _Reducible:
    """Element-wise sum over all processes of a tensor or numpy array (exact for integers), same type and device.

    Returns ``values`` itself in one process; otherwise a tensor on the group's device is summed in place, and
    anything else is summed in a copy.
    """
    if world_size() == 1:
        return values
    is_array = isinstance(values, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(values)) if is_array else values
    home = tensor.device
    if dist.get_backend() == "nccl" and home.type != "cuda":
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    elif is_array:
        tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    if is_array:
        return tensor.cpu().numpy()
    return tensor.to(home)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


__all__ = [
    "ProcessContext",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "close_process",
    "init_process",
    "is_main",
    "local_rank",
    "rank",
    "resolve_device",
    "world_size",
]
