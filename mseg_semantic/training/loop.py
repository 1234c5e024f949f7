"""The training loop: the MSeg recipe in one process or under torchrun, resumable to the bit.

One step (:meth:`Trainer.step`) is the recipe, the same for every objective: poly LR from the steps done so far;
forward under autocast (bf16/fp16 when asked); the objective's loss and backward; SGD step (DDP averages gradients
over processes). What the step minimises, and how its gradient is made (cross-entropy with PSPNet's aux loss,
class weights, OHEM, the paper's MGDA and CCSA baselines), is the objective's business
(:mod:`~mseg_semantic.training.objectives`). After each step, the periodic events that are due
(:meth:`Trainer.run`): rank 0 logs, validates with the others, and checkpoints. What runs once before the first
step is in :mod:`~mseg_semantic.training.startup`; the log's columns and messages in
:mod:`~mseg_semantic.training.logs`.

Exact resume: the data of step ``s`` (which samples, their augmentation) is a function of ``(seed, s)`` (see
:mod:`mseg_semantic.data.sampling`), torch's generator is reseeded from ``(seed, s, rank)`` before every step
(dropout; see :func:`~mseg_semantic.training.objectives.step_seed`), and the LR is a function of ``s``; so model,
optimizer (and fp16 scaler) state at a checkpoint is all a resumed run needs to continue as if it had never stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mseg_semantic.data import BalancedBatchSampler
from mseg_semantic.distributed import ProcessContext, barrier, close_process, init_process
from mseg_semantic.errors import InputError
from mseg_semantic.fileio import atomic_path
from mseg_semantic.precision import autocast
from mseg_semantic.training import startup
from mseg_semantic.training.checkpoints import CHECKPOINT_FOLDER, FINAL_MODEL, save_training_checkpoint
from mseg_semantic.training.config import TrainConfig, config_to_dict
from mseg_semantic.training.data import PreparedDataset, build_train_loader, prepare_datasets, worker_error_message
from mseg_semantic.training.logs import (
    Progress,
    RunLog,
    WindowStats,
    log_location,
    open_run_log,
    plan_summary,
    validation_columns,
)
from mseg_semantic.training.objectives import Objective, build_objective, objective_columns, step_seed
from mseg_semantic.training.optim import poly_lr, set_lr
from mseg_semantic.training.validation import validate


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


def _train(
    config: TrainConfig, out_dir: Path, ctx: ProcessContext, resume: bool, progress: bool, log: Callable[[str], None]
) -> TrainResult:
    startup.check_batch_size(config, ctx)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not config.deterministic
    datasets = prepare_datasets(config)
    max_iters = config.total_iters()
    previous, state = startup.resume_point(out_dir, resume, max_iters, log)
    start_iter = int(state["current_iter"]) if state else 0
    startup.check_same_start(start_iter, ctx)
    if start_iter >= max_iters:  # the newest checkpoint is the run's last
        final = startup.finished_run_model(config, out_dir, ctx, previous, start_iter, max_iters, log)
        return TrainResult(out_dir, start_iter, max_iters, None, previous, final)
    trainer = Trainer.start(config, out_dir, ctx, datasets, previous, state, progress=progress, log=log)
    del state  # copied into the model and optimizer; not kept for the whole run
    return trainer.run()


@dataclass(eq=False)
class Trainer:
    """One process's run: what trains, the data stream, the position in the run, and what reports on it.

    :meth:`run` is the loop: :meth:`step` after :meth:`step`, each followed by the events that are due
    (:meth:`log_window`, :meth:`validate`, :meth:`save_checkpoint`), then :meth:`finish`. Build it with
    :meth:`start`. Under DDP every process runs the same loop; only rank 0 writes (``run_log``, checkpoints).
    """

    config: TrainConfig
    ctx: ProcessContext
    out_dir: Path
    datasets: list[PreparedDataset]
    model: nn.Module  # unwrapped: what is validated and saved
    network: nn.Module  # what steps: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    objective: Objective  # what the step minimises, and how its gradient is made
    loader: DataLoader
    sampler: BalancedBatchSampler
    iteration: int  # steps done, over all sessions of the run
    max_iters: int
    run_log: RunLog | None  # rank 0 only
    bar: Progress
    stats: WindowStats
    log: Callable[[str], None]
    last_checkpoint: Path | None  # the newest checkpoint written or resumed from
    last_loss: float | None = None  # the loss of the newest logged row
    lr: float = 0.0  # the LR of the newest step
    _batches: Iterator | None = field(default=None, init=False, repr=False)

    @classmethod
    def start(
        cls,
        config: TrainConfig,
        out_dir: Path,
        ctx: ProcessContext,
        datasets: list[PreparedDataset],
        previous: Path | None,
        state: dict[str, Any] | None,
        *,
        progress: bool,
        log: Callable[[str], None],
    ) -> Trainer:
        """Model and optimizer (resumed from ``state``, the contents of ``previous``), data, logs, objective."""
        start_iter, max_iters = int(state["current_iter"]) if state else 0, config.total_iters()
        model, network, optimizer, scaler = startup.model_and_optimizer(config, ctx, state)
        if state:
            log(f"resumed from {previous} at iteration {start_iter} of {max_iters}")
        loader, sampler = build_train_loader(
            config, datasets, rank=ctx.rank, world_size=ctx.world_size, start_iter=start_iter, max_iters=max_iters,
            pin_memory=ctx.device.type == "cuda",
        )  # fmt: skip
        names = [d.config.name for d in datasets]
        run_log = open_run_log(config, out_dir, names, start_iter, log) if ctx.is_main else None
        if start_iter == 0:
            log(plan_summary(config, datasets, model, ctx, max_iters, out_dir))
        if warning := startup.precision_warning(config, ctx):
            log(warning)
        if run_log is not None:
            log(log_location(run_log, out_dir))
        bar = Progress(start_iter, max_iters, progress and ctx.is_main, log)
        stats = WindowStats(len(datasets), ctx, len(objective_columns(config, names)))
        objective = build_objective(config, datasets, model, ctx, log)
        return cls(
            config=config, ctx=ctx, out_dir=out_dir, datasets=datasets, model=model, network=network,
            optimizer=optimizer, scaler=scaler, objective=objective, loader=loader, sampler=sampler,
            iteration=start_iter, max_iters=max_iters, run_log=run_log, bar=bar, stats=stats, log=log,
            last_checkpoint=previous,
        )  # fmt: skip

    def run(self) -> TrainResult:
        """Step to ``max_iters``; after each step, the periodic events that are due."""
        try:
            self._batches = iter(self.loader)
            while self.iteration < self.max_iters:
                self.step()
                row: dict[str, Any] = {}
                if self.due(self.config.log_every):
                    row.update(self.log_window())
                if self.config.val.every and self.due(self.config.val.every):
                    row.update(self.validate())
                self.report(row)
                if self.due(self.config.checkpoint.every) and self.ctx.is_main:
                    self.save_checkpoint()
        finally:
            self.bar.close()
            if self.run_log is not None:
                self.run_log.close()
        return self.finish()

    def step(self) -> None:
        """One iteration: the next batch, the poly LR of the steps done so far, forward, loss and backward, SGD."""
        images, labels, dataset_ids = self._next_batch()
        self.lr = poly_lr(self.config.optim.base_lr, self.iteration, self.max_iters, self.config.optim.power)
        set_lr(self.optimizer, self.lr)
        torch.manual_seed(step_seed(self.config.seed, self.iteration, self.ctx.rank))  # dropout: the step's own
        with self.objective.step_context(self.network):
            with autocast(self.ctx.device, self.config.precision):
                output = self.network(images)
            self.optimizer.zero_grad(set_to_none=True)
            step_loss = self.objective.backward(output, labels, dataset_ids, self.iteration, self.scaler)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ce = step_loss.ce
        self.stats.add(ce.loss.detach(), ce.pixel.detach(), ce.counted, dataset_ids, images.shape[0], step_loss.extras)
        self.iteration += 1
        self.bar.step()

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, labels, dataset_ids)`` of the next step, on the device."""
        assert self._batches is not None, "step() runs inside run()"
        wait_start = time.perf_counter()
        try:
            images, labels, dataset_ids = next(self._batches)
        except InputError as exc:
            raise InputError(worker_error_message(exc)) from None
        self.stats.data_wait += time.perf_counter() - wait_start
        images = images.to(self.ctx.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.ctx.device, non_blocking=True), dataset_ids.to(self.ctx.device)

    def due(self, every: int) -> bool:
        """Whether an event run every ``every`` steps happens now (it always happens after the last step)."""
        return self.iteration % every == 0 or self.iteration == self.max_iters

    def log_window(self) -> dict[str, Any]:
        """Loss and speed columns of the steps since the last logged row (every process takes part)."""
        first_size = len(self.datasets[0].train)
        row = self.stats.flush(self.iteration, self.lr, self.sampler.per_dataset, first_size, self.names)
        row.update(zip(objective_columns(self.config, self.names), row.pop("extras"), strict=True))
        self.last_loss = row["loss"]
        return row

    def validate(self) -> dict[str, float]:
        """Validation mIoU columns; every process validates its share of each val list."""
        return validation_columns(validate(self.model, self.config, self.datasets, self.ctx), self.names)

    def report(self, row: dict[str, Any]) -> None:
        """Write the row to the run log (rank 0) and show it on the progress bar or as a line."""
        if row and self.run_log is not None:
            self.run_log.write({"iter": self.iteration, **row})
        self.bar.show_row(self.iteration, row, self.lr)

    def save_checkpoint(self) -> None:
        """Rank 0: ``iter_N.pth`` and ``.safetensors`` of the model, optimizer and scaler; old ones pruned."""
        self.last_checkpoint = save_training_checkpoint(
            self.out_dir / CHECKPOINT_FOLDER,
            self.model,
            self.optimizer,
            self.scaler,
            iteration=self.iteration,
            max_iters=self.max_iters,
            epoch=self.iteration * self.sampler.per_dataset // len(self.datasets[0].train),
            taxonomy=self.config.model_taxonomy,
            train_config=config_to_dict(self.config),
            keep=self.config.checkpoint.keep,
        )

    def finish(self) -> TrainResult:
        """Rank 0 copies the last checkpoint's weights to ``model.safetensors``; every process waits for it."""
        model_file = None
        if self.ctx.is_main:
            assert self.last_checkpoint is not None
            model_file = self.out_dir / FINAL_MODEL
            with atomic_path(model_file) as tmp:
                shutil.copyfile(self.last_checkpoint.with_suffix(".safetensors"), tmp)
            self.log(
                f"done: {self.max_iters} iterations; weights for inference in {model_file}, "
                f"last checkpoint {self.last_checkpoint}"
            )
        barrier()
        return TrainResult(
            self.out_dir, self.iteration, self.max_iters, self.last_loss, self.last_checkpoint, model_file
        )

    @property
    def names(self) -> list[str]:
        return [d.config.name for d in self.datasets]


__all__ = ["TrainResult", "Trainer", "train"]
