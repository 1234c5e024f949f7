"""Before the first step: the checks that need the processes, the resume point, the model and its optimizer
(or, for a run already complete, its exported model).

Kept apart from :mod:`~mseg_semantic.training.loop` so the loop reads as the loop; everything here runs once per
session, and everything that can refuse a run does so before a file is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mseg_semantic.distributed import ProcessContext, all_gather_objects, barrier
from mseg_semantic.errors import CheckpointError, InputError
from mseg_semantic.models import build_model, load_checkpoint, save_checkpoint
from mseg_semantic.models.weights import load_state_dict_strictly
from mseg_semantic.precision import cpu_has_native_bf16
from mseg_semantic.training.checkpoints import (
    CHECKPOINT_FOLDER,
    FINAL_MODEL,
    find_last_checkpoint,
    load_training_checkpoint,
)
from mseg_semantic.training.config import TrainConfig
from mseg_semantic.training.objectives import check_process_batch
from mseg_semantic.training.optim import build_optimizer
from mseg_semantic.zoo import load_model


def check_batch_size(config: TrainConfig, ctx: ProcessContext) -> None:
    """The batch must split evenly over the processes, and each share must suit the objective."""
    if config.batch_size % ctx.world_size:
        raise InputError(
            f"batch_size {config.batch_size} (crops per step over all processes) is not a multiple of the "
            f"{ctx.world_size} processes; use --set batch_size=N with N a multiple of both {ctx.world_size} and "
            f"the {len(config.datasets)} dataset(s)"
        )
    check_process_batch(config, ctx.world_size)


def resume_point(
    out_dir: Path, resume: bool, max_iters: int, log: Callable[[str], None]
) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint of ``out_dir`` and, when resuming, its contents; refuses to overwrite a run."""
    checkpoint_dir = out_dir / CHECKPOINT_FOLDER
    previous = find_last_checkpoint(checkpoint_dir)
    if previous is not None and not resume:
        raise InputError(
            f"{out_dir} holds checkpoints of an earlier run (newest: {previous.name}); pass --resume to continue "
            "it, or choose another --out"
        )
    if previous is None:
        if resume:
            log(f"no checkpoint in {checkpoint_dir}; starting from iteration 0")
        return None, None
    state = load_training_checkpoint(previous)
    if int(state.get("max_iter", max_iters)) != max_iters:
        log(
            f"note: the checkpoint's run was planned for {state['max_iter']} iterations, now {max_iters}: "
            "the LR schedule changes from here on"
        )
    return previous, state


def check_same_start(start_iter: int, ctx: ProcessContext) -> None:
    """Every process must resume from the same iteration (a folder not shared between machines would not)."""
    if not ctx.distributed:
        return
    starts = all_gather_objects(start_iter)
    if len(set(starts)) > 1:
        raise InputError(
            f"the processes found different checkpoints (iterations {min(starts)} to {max(starts)}): "
            "--out must be a folder that every machine of the run sees"
        )


def finished_run_model(
    config: TrainConfig,
    out_dir: Path,
    ctx: ProcessContext,
    previous: Path | None,
    start_iter: int,
    max_iters: int,
    log: Callable[[str], None],
) -> Path:
    """``model.safetensors`` of a run whose newest checkpoint ``previous`` is its last, exported if it is missing."""
    log(f"training already finished: {previous} is at iteration {start_iter} of {max_iters}")
    final = out_dir / FINAL_MODEL
    if ctx.is_main and not final.is_file():  # killed between the last checkpoint and the export
        save_checkpoint(load_model(previous), final, taxonomy=config.model_taxonomy, current_iter=start_iter)
    barrier()
    return final


def model_and_optimizer(
    config: TrainConfig, ctx: ProcessContext, state: dict[str, Any] | None
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The model, what steps it (DDP under torchrun), SGD and the fp16 gradient scaler, resumed from ``state``."""
    model = _build_model(config, ctx, state)
    optim = config.optim
    optimizer = build_optimizer(model, optim.base_lr, optim.momentum, optim.weight_decay, optim.head_lr_mult)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16")
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    network: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        network = DistributedDataParallel(model, device_ids=device_ids)
    return model, network, optimizer, scaler


def _build_model(config: TrainConfig, ctx: ProcessContext, state: dict | None) -> nn.Module:
    """The model on its device; same initial weights on every rank (seeded), resumed or fine-tuned weights loaded."""
    torch.manual_seed(config.seed)
    options = {"config": config.model.hrnet} if config.model.arch == "hrnet" else {}
    backbone = None if state else config.model.backbone_weights
    model = build_model(config.model.arch, config.num_classes, backbone_weights=backbone, **options)
    model.preset = implied_preset(config.transform.short_size, tuple(config.transform.crop))  # recorded in its files
    if state:
        weights = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
        load_state_dict_strictly(model, weights, source="the checkpoint")
    elif config.model.weights:
        from mseg_semantic import zoo

        # A checkpoint path, or a zoo name (downloaded and cached on first use) for fine-tuning a released model.
        try:
            load_checkpoint(model, zoo.resolve(config.model.weights)[0])
        except (InputError, CheckpointError) as exc:  # say which setting named the file, and how to change it
            raise type(exc)(f"model.weights (the weights to fine-tune; --set model.weights=PATH): {exc}") from None
    if ctx.distributed and ctx.device.type == "cuda" and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def precision_warning(config: TrainConfig, ctx: ProcessContext) -> str | None:
    """A warning when the precision asked for is emulated on this device (None when it is not)."""
    if ctx.device.type == "cpu" and config.precision == "bf16" and not cpu_has_native_bf16():
        return (
            "warning: precision bf16, but this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX): torch emulates "
            "it, several times slower than fp32 here; --set precision=fp32 trains the same recipe faster"
        )
    return None


__all__ = [
    "check_batch_size",
    "check_same_start",
    "finished_run_model",
    "model_and_optimizer",
    "precision_warning",
    "resume_point",
]


def implied_preset(short_size: int, crop: tuple[int, int]) -> str | None:
    """The inference preset a model trained at ``short_size`` with ``crop`` windows is meant for: the single-scale
    preset of that short side with windows of the crop's size, else the single-scale one of that short side, else
    None. Training records it in the model's files, as the released models carry theirs."""
    from mseg_semantic.inference.config import load_config
    from mseg_semantic.presets import preset_names

    single = {name: load_config(name) for name in preset_names()}
    single = {
        n: c for n, c in single.items() if not c.batched and tuple(c.scales) == (1.0,) and c.base_size == short_size
    }
    exact = [n for n, c in single.items() if (c.crop_h, c.crop_w) == tuple(crop)]
    return (exact or list(single) or [None])[0]
