"""Process set-up: one process, or one per device under ``torchrun`` (NCCL on GPUs, gloo on CPUs).

``torchrun`` (``python -m torch.distributed.run``) starts the processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; several machines use its usual rendezvous options. Without
those variables training runs in a single process. Nothing here reads a config file or a port from a config, so
two runs on one machine only need torchrun's own ``--master-port`` (or ``--standalone``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mseg_semantic.errors import InputError


@dataclass(frozen=True)
class ProcessContext:
    """Where this process runs and how many train together."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this module created the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and progress."""
        return self.rank == 0


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``cuda`` means ``cuda:LOCAL_RANK``."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise InputError(f"device: {setting!r} is not a device name (cpu, cuda, cuda:1, ...): {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device: {setting!r} was asked for but CUDA is not available; use device=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise InputError(f"device: {device} does not exist ({torch.cuda.device_count()} GPU(s) visible)")
    return device


def init_process(device_setting: str) -> ProcessContext:
    """Read torchrun's environment, pick the device and join the process group when there are several ranks."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting, local_rank)
    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        owns_group = True
    return ProcessContext(rank, world_size, local_rank, device, owns_group)


def close_process(ctx: ProcessContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: ProcessContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (a no-op in a single process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: ProcessContext) -> None:
    if ctx.distributed:
        dist.barrier()
