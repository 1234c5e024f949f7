"""The training loop: the MSeg recipe in one process or under torchrun, resumable to the bit.

One step: poly LR from the steps done so far; forward under autocast (bf16/fp16 when asked); cross-entropy in
fp32 over the non-ignored pixels of this process's batch (plus 0.4 x the aux loss for PSPNet); backward; SGD
step (DDP averages gradients over processes). Rank 0 logs, validates with the others, and checkpoints.

Exact resume: the data of step ``s`` (which samples, their augmentation) is a function of ``(seed, s)`` (see
:mod:`mseg_semantic.data.sampling`), torch's generator is reseeded from ``(seed, s, rank)`` before every step
(dropout), and the LR is a function of ``s``; so model, optimizer (and fp16 scaler) state at a checkpoint is all a
resumed run needs to continue as if it had never stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mseg_semantic.distributed import (
    ProcessContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    close_process,
    init_process,
)
from mseg_semantic.errors import InputError
from mseg_semantic.fileio import atomic_path
from mseg_semantic.models import build_model, load_checkpoint, load_model, save_checkpoint
from mseg_semantic.models.weights import load_state_dict_strictly
from mseg_semantic.precision import autocast
from mseg_semantic.taxonomy import IGNORE_LABEL
from mseg_semantic.training.checkpoints import (
    CHECKPOINT_FOLDER,
    find_last_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from mseg_semantic.training.config import TrainConfig, config_to_dict
from mseg_semantic.training.data import PreparedDataset, build_train_loader, prepare_datasets, worker_error_message
from mseg_semantic.training.logs import Progress, RunLog
from mseg_semantic.training.optim import build_optimizer, poly_lr, set_lr
from mseg_semantic.training.validation import validate

CONFIG_FILE = "config.yaml"
FINAL_MODEL = "model.safetensors"


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already finished) run left in its output folder."""

    out_dir: Path
    iterations: int  # iterations done, over all sessions of the run
    max_iters: int
    last_loss: float | None  # the last logged loss of this session (None when nothing ran)
    checkpoint: Path | None  # the newest .pth
    model_file: Path | None  # the final slim export, once the run is complete


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train as ``config`` says, writing checkpoints and logs to ``out_dir``.

    Under torchrun every process calls this; only rank 0 writes. ``resume``: continue from the newest checkpoint
    in ``out_dir`` (a fresh start when there is none); without it an ``out_dir`` holding checkpoints is refused.
    Raises :class:`InputError` for data or config problems and :class:`CheckpointError` for unusable checkpoints.
    """
    ctx = init_process(config.device)
    previous_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        return _train(config, Path(out_dir), ctx, resume, progress, log if ctx.is_main else _silent)
    finally:
        torch.use_deterministic_algorithms(previous_flags[0], warn_only=previous_flags[1])
        close_process(ctx)


def _silent(message: str) -> None:
    pass


def _step_seed(seed: int, iteration: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, rank, 0xD0]).generate_state(1)[0])


def _train(
    config: TrainConfig, out_dir: Path, ctx: ProcessContext, resume: bool, progress: bool, log: Callable[[str], None]
) -> TrainResult:
    if config.batch_size % ctx.world_size:
        raise InputError(
            f"batch_size {config.batch_size} (crops per step over all processes) is not a multiple of the "
            f"{ctx.world_size} processes; use --set batch_size=N with N a multiple of both {ctx.world_size} and "
            f"the {len(config.datasets)} dataset(s)"
        )
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not config.deterministic
    datasets = prepare_datasets(config)
    max_iters = config.total_iters()
    previous, state = _resume_point(out_dir, resume, max_iters, log)
    start_iter = int(state["current_iter"]) if state else 0
    _check_same_start(start_iter, ctx)
    if start_iter >= max_iters:
        log(f"training already finished: {previous} is at iteration {start_iter} of {max_iters}")
        final = out_dir / FINAL_MODEL
        if ctx.is_main and not final.is_file():  # killed between the last checkpoint and the export
            save_checkpoint(load_model(previous), final, taxonomy=config.model_taxonomy, current_iter=start_iter)
        barrier()
        return TrainResult(out_dir, start_iter, max_iters, None, previous, final)

    model = _build_model(config, ctx, state)
    optimizer = build_optimizer(
        model, config.optim.base_lr, config.optim.momentum, config.optim.weight_decay, config.optim.head_lr_mult
    )
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16")
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        log(f"resumed from {previous} at iteration {start_iter} of {max_iters}")
    del state
    network: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        network = DistributedDataParallel(model, device_ids=device_ids)

    loader, sampler = build_train_loader(
        config,
        datasets,
        rank=ctx.rank,
        world_size=ctx.world_size,
        start_iter=start_iter,
        max_iters=max_iters,
        pin_memory=ctx.device.type == "cuda",
    )
    names = [d.config.name for d in datasets]
    run_log = _open_run_log(config, out_dir, names, start_iter, log) if ctx.is_main else None
    if start_iter == 0:
        log(_plan_summary(config, datasets, model, ctx, max_iters, out_dir))
    if run_log is not None:
        if run_log.tensorboard is not None:
            log(f"log: {run_log.path}, TensorBoard events in {out_dir / 'tensorboard'}")
        else:
            log(f"log: {run_log.path} (TensorBoard event files too once the tensorboard package is installed)")
    bar = Progress(start_iter, max_iters, progress and ctx.is_main, log)
    stats = _WindowStats(len(datasets), ctx)
    last_loss = None
    checkpoint = previous
    iteration = start_iter
    try:
        batches = iter(loader)
        while iteration < max_iters:
            wait_start = time.perf_counter()
            try:
                images, labels, dataset_ids = next(batches)
            except InputError as exc:
                raise InputError(worker_error_message(exc)) from None
            stats.data_wait += time.perf_counter() - wait_start
            lr = poly_lr(config.optim.base_lr, iteration, max_iters, config.optim.power)
            set_lr(optimizer, lr)
            _train_step(network, optimizer, scaler, config, ctx, images, labels, dataset_ids, iteration, stats)
            iteration += 1
            bar.step()
            row: dict[str, Any] = {}
            if iteration % config.log_every == 0 or iteration == max_iters:
                row.update(stats.flush(iteration, lr, config, sampler.per_dataset, len(datasets[0].train), names))
                last_loss = row["loss"]
            if config.val.every and (iteration % config.val.every == 0 or iteration == max_iters):
                row.update(_validation_columns(validate(model, config, datasets, ctx), names))
            if row and run_log is not None:
                run_log.write({"iter": iteration, **row})
            if "loss" in row:
                val_text = "".join(f"  {k} {v:.4f}" for k, v in row.items() if k.startswith("val_miou"))
                bar.report(iteration, row["loss"], lr, row["images_per_s"], val_text)
            elif any(k.startswith("val_miou") for k in row):
                bar.write(f"iter {iteration}: " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
            checkpoint_due = iteration % config.checkpoint.every == 0 or iteration == max_iters
            if checkpoint_due and ctx.is_main:
                checkpoint = save_training_checkpoint(
                    out_dir / CHECKPOINT_FOLDER,
                    model,
                    optimizer,
                    scaler,
                    iteration=iteration,
                    max_iters=max_iters,
                    epoch=iteration * sampler.per_dataset // len(datasets[0].train),
                    taxonomy=config.model_taxonomy,
                    train_config=config_to_dict(config),
                    keep=config.checkpoint.keep,
                )
    finally:
        bar.close()
        if run_log is not None:
            run_log.close()
    model_file = None
    if ctx.is_main:
        assert checkpoint is not None
        model_file = out_dir / FINAL_MODEL
        with atomic_path(model_file) as tmp:
            shutil.copyfile(checkpoint.with_suffix(".safetensors"), tmp)
        log(f"done: {max_iters} iterations; weights for inference in {model_file}, last checkpoint {checkpoint}")
    barrier()
    return TrainResult(out_dir, iteration, max_iters, last_loss, checkpoint, model_file)


def _resume_point(
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


def _check_same_start(start_iter: int, ctx: ProcessContext) -> None:
    """Every process must resume from the same iteration (a folder not shared between machines would not)."""
    if not ctx.distributed:
        return
    starts = all_gather_objects(start_iter)
    if len(set(starts)) > 1:
        raise InputError(
            f"the processes found different checkpoints (iterations {min(starts)} to {max(starts)}): "
            "--out must be a folder that every machine of the run sees"
        )


def _build_model(config: TrainConfig, ctx: ProcessContext, state: dict | None) -> nn.Module:
    """The model on its device; same initial weights on every rank (seeded), resumed or fine-tuned weights loaded."""
    torch.manual_seed(config.seed)
    options = {"config": config.model.hrnet} if config.model.arch == "hrnet" else {}
    backbone = None if state else config.model.backbone_weights
    model = build_model(config.model.arch, config.num_classes, backbone_weights=backbone, **options)
    if state:
        weights = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
        load_state_dict_strictly(model, weights, source="the checkpoint")
    elif config.model.weights:
        from mseg_semantic import zoo

        # A checkpoint path, or a zoo name (downloaded and cached on first use) for fine-tuning a released model.
        load_checkpoint(model, zoo.resolve(config.model.weights)[0])
    if ctx.distributed and ctx.device.type == "cuda" and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def _train_step(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    ctx: ProcessContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset_ids: torch.Tensor,
    iteration: int,
    stats: _WindowStats,
) -> None:
    images = images.to(ctx.device, non_blocking=True)
    labels = labels.to(ctx.device, non_blocking=True)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(_step_seed(config.seed, iteration, ctx.rank))  # dropout draws depend on the step only
    with autocast(ctx.device, config.precision):
        output = network(images)
    logits, aux = output if isinstance(output, tuple) else (output, None)
    pixel_loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="none")
    valid = labels != IGNORE_LABEL
    loss = pixel_loss.sum() / valid.sum().clamp(min=1)  # mean over labelled pixels; 0 for an all-void batch
    total = loss
    if aux is not None:
        aux_loss = F.cross_entropy(aux.float(), labels, ignore_index=IGNORE_LABEL)
        total = loss + config.optim.aux_weight * torch.nan_to_num(aux_loss)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    stats.add(loss.detach(), pixel_loss.detach(), valid, dataset_ids.to(ctx.device), images.shape[0])


class _WindowStats:
    """Loss sums since the last logged row, kept on the device (no sync per step), summed over processes."""

    def __init__(self, num_datasets: int, ctx: ProcessContext) -> None:
        self.ctx, self.num_datasets = ctx, num_datasets
        self._reset()

    def _reset(self) -> None:
        d = self.num_datasets
        # [sum of step losses, steps, crops, per-dataset CE sums (d), per-dataset labelled pixels (d)]
        self.sums = torch.zeros(3 + 2 * d, dtype=torch.float64, device=self.ctx.device)
        self.data_wait = 0.0
        self.clock = time.perf_counter()

    def add(self, loss, pixel_loss, valid, dataset_ids, crops: int) -> None:
        d = self.num_datasets
        self.sums[0] += loss.double()
        self.sums[1] += 1
        self.sums[2] += crops
        per_image_loss = pixel_loss.sum(dim=(1, 2)).double()
        per_image_pixels = valid.sum(dim=(1, 2)).double()
        self.sums[3 : 3 + d].index_add_(0, dataset_ids, per_image_loss)
        self.sums[3 + d :].index_add_(0, dataset_ids, per_image_pixels)

    def flush(
        self, iteration: int, lr: float, config: TrainConfig, per_dataset: int, first_size: int, names: list[str]
    ) -> dict[str, Any]:
        d = self.num_datasets
        sums = all_reduce_sum(self.sums.clone()).cpu().numpy()
        seconds = time.perf_counter() - self.clock
        steps = sums[1] / self.ctx.world_size
        row: dict[str, Any] = {
            "epoch": iteration * per_dataset / first_size,
            "loss": float(sums[0] / max(sums[1], 1)),
            "lr": lr,
            "images_per_s": float(sums[2] / seconds) if seconds > 0 else 0.0,
            "data_wait_s": self.data_wait / max(steps, 1),
        }
        if d > 1:
            for i, name in enumerate(names):
                pixels = sums[3 + d + i]
                row[f"loss/{name}"] = float(sums[3 + i] / pixels) if pixels else float("nan")
        self._reset()
        return row


def _validation_columns(results: dict[str, float], names: list[str]) -> dict[str, float]:
    if len(names) == 1:
        return {"val_miou": results[names[0]]}
    return {f"val_miou/{name}": value for name, value in results.items()}


def log_columns(config: TrainConfig, names: list[str]) -> list[str]:
    """The CSV columns of a run of ``config``."""
    columns = ["iter", "epoch", "loss", "lr", "images_per_s", "data_wait_s"]
    if len(names) > 1:
        columns += [f"loss/{n}" for n in names]
    if config.val.every:
        with_val = [d.name for d in config.datasets if d.val_list]
        columns += ["val_miou"] if len(names) == 1 else [f"val_miou/{n}" for n in with_val]
    return columns


def _open_run_log(
    config: TrainConfig, out_dir: Path, names: list[str], start_iter: int, log: Callable[[str], None]
) -> RunLog:
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = config_to_dict(config)
    config_path = out_dir / CONFIG_FILE
    if start_iter > 0 and config_path.is_file():
        earlier = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        changed = sorted(_changed_keys(earlier, resolved))
        if changed:
            log(f"note: resuming with changed settings: {', '.join(changed)}")
    config_path.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return RunLog(out_dir, log_columns(config, names), start_iter)


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _plan_summary(
    config: TrainConfig,
    datasets: list[PreparedDataset],
    model: nn.Module,
    ctx: ProcessContext,
    max_iters: int,
    out_dir: Path,
) -> str:
    sizes = ", ".join(f"{d.config.name} ({len(d.train)} images)" for d in datasets)
    params = sum(p.numel() for p in model.parameters())
    per_dataset = config.batch_size // len(datasets)
    return (
        f"training {model.arch} ({params / 1e6:.2f}M parameters, {config.num_classes} classes, "
        f"{config.model_taxonomy} taxonomy) on {sizes}\n"
        f"{max_iters} iterations of {config.batch_size} crops {config.transform.crop[0]}x{config.transform.crop[1]} "
        f"({per_dataset} per dataset per step, {config.batch_size // ctx.world_size} per process x "
        f"{ctx.world_size} process(es) on {ctx.device}, {config.precision}); output in {out_dir}"
    )


__all__ = ["TrainResult", "log_columns", "train"]
