"""The training loop: the MSeg recipe in one process or under torchrun, resumable to the bit.

One step (:meth:`Trainer.step`): poly LR from the steps done so far; forward under autocast (bf16/fp16 when
asked); cross-entropy in fp32 over the non-ignored pixels of this process's batch (plus 0.4 x the aux loss for
PSPNet); backward; SGD step (DDP averages gradients over processes). After each step, the periodic events that are
due (:meth:`Trainer.run`): rank 0 logs, validates with the others, and checkpoints.

The paper's baselines change the middle of the step: with ``optim.multi_objective: mgda`` the gradient is MGDA's
min-norm combination of the datasets' gradients (:mod:`~mseg_semantic.training.mgda`; forward and backward under
DDP's ``no_sync``, the combination is reduced by hand), with ``loss.ccsa.weight > 0`` the contrastive alignment loss
of the step's embeddings joins the cross-entropy (:mod:`~mseg_semantic.training.ccsa`).

Exact resume: the data of step ``s`` (which samples, their augmentation) is a function of ``(seed, s)`` (see
:mod:`mseg_semantic.data.sampling`), torch's generator is reseeded from ``(seed, s, rank)`` before every step
(dropout), and the LR is a function of ``s``; so model, optimizer (and fp16 scaler) state at a checkpoint is all a
resumed run needs to continue as if it had never stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mseg_semantic.data import BalancedBatchSampler
from mseg_semantic.distributed import (
    ProcessContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    close_process,
    init_process,
)
from mseg_semantic.errors import CheckpointError, InputError
from mseg_semantic.fileio import atomic_path
from mseg_semantic.models import build_model, load_checkpoint, save_checkpoint
from mseg_semantic.models.weights import load_state_dict_strictly
from mseg_semantic.precision import autocast, cpu_has_native_bf16
from mseg_semantic.taxonomy import IGNORE_LABEL, class_names
from mseg_semantic.training.ccsa import EmbeddingTap, ccsa_loss
from mseg_semantic.training.checkpoints import (
    CHECKPOINT_FOLDER,
    find_last_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from mseg_semantic.training.class_weights import enet_weights, label_counts
from mseg_semantic.training.config import OHEMConfig, TrainConfig, config_to_dict
from mseg_semantic.training.data import (
    PreparedDataset,
    build_train_loader,
    label_target,
    prepare_datasets,
    worker_error_message,
)
from mseg_semantic.training.logs import Progress, RunLog
from mseg_semantic.training.mgda import mgda_gradients
from mseg_semantic.training.ohem import hard_pixels
from mseg_semantic.training.optim import build_optimizer, poly_lr, set_lr
from mseg_semantic.training.validation import validate
from mseg_semantic.zoo import load_model

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


def _step_seed(seed: int, iteration: int, rank: int, stream: int = 0xD0) -> int:
    """A seed of step ``iteration`` on process ``rank``; ``stream`` tells apart the draws of one step."""
    return int(np.random.SeedSequence([seed, iteration, rank, stream]).generate_state(1)[0])


#: The seed stream of CCSA's pair sampling (the default stream is dropout's).
_CCSA_STREAM = 0xCC5A


def _train(
    config: TrainConfig, out_dir: Path, ctx: ProcessContext, resume: bool, progress: bool, log: Callable[[str], None]
) -> TrainResult:
    _check_batch_size(config, ctx)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not config.deterministic
    datasets = prepare_datasets(config)
    max_iters = config.total_iters()
    previous, state = _resume_point(out_dir, resume, max_iters, log)
    start_iter = int(state["current_iter"]) if state else 0
    _check_same_start(start_iter, ctx)
    if start_iter >= max_iters:
        return _already_finished(config, out_dir, ctx, previous, start_iter, max_iters, log)
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
    loader: DataLoader
    sampler: BalancedBatchSampler
    iteration: int  # steps done, over all sessions of the run
    max_iters: int
    run_log: RunLog | None  # rank 0 only
    bar: Progress
    stats: _WindowStats
    log: Callable[[str], None]
    last_checkpoint: Path | None  # the newest checkpoint written or resumed from
    last_loss: float | None = None  # the loss of the newest logged row
    lr: float = 0.0  # the LR of the newest step
    tap: EmbeddingTap | None = None  # CCSA: where the step's embedding is read
    class_weights: torch.Tensor | None = None  # loss.class_weighting: the cross-entropy's weight per class
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
        """Model and optimizer (resumed from ``state``, the contents of ``previous``), data, logs, progress."""
        start_iter, max_iters = int(state["current_iter"]) if state else 0, config.total_iters()
        model, network, optimizer, scaler = _model_and_optimizer(config, ctx, state)
        if state:
            log(f"resumed from {previous} at iteration {start_iter} of {max_iters}")
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
        if ctx.device.type == "cpu" and config.precision == "bf16" and not cpu_has_native_bf16():
            log(
                "warning: precision bf16, but this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX): torch emulates "
                "it, several times slower than fp32 here; --set precision=fp32 trains the same recipe faster"
            )
        if run_log is not None:
            log(_log_location(run_log, out_dir))
        bar = Progress(start_iter, max_iters, progress and ctx.is_main, log)
        stats = _WindowStats(len(datasets), ctx, len(baseline_columns(config, names)))
        tap = EmbeddingTap(model, model.arch) if config.loss.ccsa.weight > 0 else None
        class_weights = _class_weights(config, datasets, ctx, log)
        return cls(
            config=config, ctx=ctx, out_dir=out_dir, datasets=datasets, model=model, network=network,
            optimizer=optimizer, scaler=scaler, loader=loader, sampler=sampler, iteration=start_iter,
            max_iters=max_iters, run_log=run_log, bar=bar, stats=stats, log=log, last_checkpoint=previous, tap=tap,
            class_weights=class_weights,
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
        """One iteration: the next batch, the poly LR of the steps done so far, forward, loss, backward, SGD."""
        images, labels, dataset_ids = self._next_batch()
        self.lr = poly_lr(self.config.optim.base_lr, self.iteration, self.max_iters, self.config.optim.power)
        set_lr(self.optimizer, self.lr)
        images = images.to(self.ctx.device, non_blocking=True)
        labels = labels.to(self.ctx.device, non_blocking=True)
        dataset_ids = dataset_ids.to(self.ctx.device)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(_step_seed(self.config.seed, self.iteration, self.ctx.rank))  # dropout: the step's own
        mgda = self.config.optim.multi_objective == "mgda"
        # MGDA, as the original: no DDP gradient all-reduce; mgda_gradients reduces per dataset itself.
        ddp = isinstance(self.network, DistributedDataParallel)
        with self.network.no_sync() if mgda and ddp else nullcontext():
            with autocast(self.ctx.device, self.config.precision), self.tap.capture() if self.tap else nullcontext():
                output = self.network(images)
            loss, total, pixel_loss, valid = _losses(
                output, labels, self.config.optim.aux_weight, self.class_weights, self.config.loss.ohem
            )
            self.optimizer.zero_grad(set_to_none=True)
            if mgda:
                extras = self._mgda_backward(output, pixel_loss, valid, labels, dataset_ids)
            else:
                extras = None
                if self.tap is not None:
                    total, extras = self._with_ccsa(total, labels, dataset_ids)
                self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.stats.add(loss.detach(), pixel_loss.detach(), valid, dataset_ids, images.shape[0], extras)
        self.iteration += 1
        self.bar.step()

    def _mgda_backward(
        self,
        output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        pixel_loss: torch.Tensor,
        valid: torch.Tensor,
        labels: torch.Tensor,
        dataset_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Gradients set to MGDA's combination of the datasets' gradients; returns the datasets' weights."""
        losses = _dataset_losses(
            output, pixel_loss, valid, labels, dataset_ids, self.config.optim.aux_weight, self.class_weights
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        sync_bn = any(isinstance(m, nn.SyncBatchNorm) for m in self.model.modules())
        result = mgda_gradients(
            losses, params, len(self.datasets), self.config.optim.mgda_normalization, same_passes=sync_bn
        )
        return torch.as_tensor(result.weights, dtype=torch.float64, device=self.ctx.device)

    def _with_ccsa(
        self, total: torch.Tensor, labels: torch.Tensor, dataset_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The original's mix ``weight * ccsa + (1 - weight) * (CE + aux)`` and the CCSA term (for the log)."""
        assert self.tap is not None
        ccsa = self.config.loss.ccsa
        generator = torch.Generator().manual_seed(
            _step_seed(self.config.seed, self.iteration, self.ctx.rank, _CCSA_STREAM)
        )
        term, _ = ccsa_loss(
            self.tap.take(), labels, dataset_ids, positives=ccsa.positive_pairs, negative_ratio=ccsa.negative_ratio,
            margin=ccsa.margin, generator=generator,
        )  # fmt: skip
        return ccsa.weight * term + (1.0 - ccsa.weight) * total, term.detach().double().reshape(1)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self._batches is not None, "step() runs inside run()"
        wait_start = time.perf_counter()
        try:
            batch = next(self._batches)
        except InputError as exc:
            raise InputError(worker_error_message(exc)) from None
        self.stats.data_wait += time.perf_counter() - wait_start
        return batch

    def due(self, every: int) -> bool:
        """Whether an event run every ``every`` steps happens now (it always happens after the last step)."""
        return self.iteration % every == 0 or self.iteration == self.max_iters

    def log_window(self) -> dict[str, Any]:
        """Loss and speed columns of the steps since the last logged row (every process takes part)."""
        first_size = len(self.datasets[0].train)
        row = self.stats.flush(self.iteration, self.lr, self.sampler.per_dataset, first_size, self.names)
        row.update(zip(baseline_columns(self.config, self.names), row.pop("extras"), strict=True))
        self.last_loss = row["loss"]
        return row

    def validate(self) -> dict[str, float]:
        """Validation mIoU columns; every process validates its share of each val list."""
        return _validation_columns(validate(self.model, self.config, self.datasets, self.ctx), self.names)

    def report(self, row: dict[str, Any]) -> None:
        """Write the row to the run log (rank 0) and show it on the progress bar or as a line."""
        if row and self.run_log is not None:
            self.run_log.write({"iter": self.iteration, **row})
        if "loss" in row:
            val_text = "".join(f"  {k} {v:.4f}" for k, v in row.items() if k.startswith("val_miou"))
            self.bar.report(self.iteration, row["loss"], self.lr, row["images_per_s"], val_text)
        elif any(k.startswith("val_miou") for k in row):
            self.bar.write(f"iter {self.iteration}: " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))

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


def _losses(
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    aux_weight: float,
    class_weights: torch.Tensor | None = None,
    ohem: OHEMConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, total, pixel_loss, valid)``: cross-entropy in fp32 over the labelled pixels, what is backpropagated
    (plus ``aux_weight`` x PSPNet's aux loss), the per-pixel loss and the labelled-pixel mask. ``class_weights``
    scale each pixel's loss by its class's weight (the mean is still over labelled pixels). With ``ohem`` (its
    ``thresh`` set), ``valid`` is the hard pixels it keeps, the only ones counted (0 loss elsewhere)."""
    logits, aux = output if isinstance(output, tuple) else (output, None)
    pixel_loss = F.cross_entropy(
        logits.float(), labels, weight=class_weights, ignore_index=IGNORE_LABEL, reduction="none"
    )
    valid = labels != IGNORE_LABEL
    mined = ohem is not None and ohem.thresh is not None
    if mined:
        valid = hard_pixels(logits, labels, valid, ohem.thresh, ohem.min_kept)
        pixel_loss = pixel_loss * valid
    loss = pixel_loss.sum() / valid.sum().clamp(min=1)  # mean over labelled pixels; 0 for an all-void batch
    total = loss
    if aux is not None:
        if class_weights is None and not mined:  # as the original
            aux_loss = torch.nan_to_num(F.cross_entropy(aux.float(), labels, ignore_index=IGNORE_LABEL))
        else:
            aux_pixel = F.cross_entropy(
                aux.float(), labels, weight=class_weights, ignore_index=IGNORE_LABEL, reduction="none"
            )
            aux_loss = (aux_pixel * valid).sum() / valid.sum().clamp(min=1)
        total = loss + aux_weight * aux_loss
    return loss, total, pixel_loss, valid


def _dataset_losses(
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    pixel_loss: torch.Tensor,
    valid: torch.Tensor,
    labels: torch.Tensor,
    dataset_ids: torch.Tensor,
    aux_weight: float,
    class_weights: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Each dataset's loss over its crops in this batch: the cross-entropy mean over its labelled pixels (plus
    ``aux_weight`` x the aux loss), what the original's process of that dataset backpropagates."""
    aux = output[1] if isinstance(output, tuple) else None
    aux_pixel = None
    if aux is not None:
        aux_pixel = (
            F.cross_entropy(aux.float(), labels, weight=class_weights, ignore_index=IGNORE_LABEL, reduction="none")
            * valid
        )  # OHEM's kept pixels only (labelled ones have their loss, the rest 0, either way)
    losses = {}
    for d in torch.unique(dataset_ids).tolist():
        crops = dataset_ids == d
        pixels = valid[crops].sum().clamp(min=1)
        loss = pixel_loss[crops].sum() / pixels
        if aux_pixel is not None:
            loss = loss + aux_weight * aux_pixel[crops].sum() / pixels
        losses[int(d)] = loss
    return losses


def _class_weights(
    config: TrainConfig, datasets: list[PreparedDataset], ctx: ProcessContext, log: Callable[[str], None]
) -> torch.Tensor | None:
    """``loss.class_weighting``'s weights on the device (None when off), from every training label map."""
    if config.loss.class_weighting == "none":
        return None
    counts = label_counts(datasets, label_target(config), config.num_classes, rank=ctx.rank, world_size=ctx.world_size)
    weights = enet_weights(counts)
    names = class_names(config.model_taxonomy)
    log("class weights (enet): " + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights, strict=True)))
    return torch.tensor(weights, dtype=torch.float32, device=ctx.device)


def _check_batch_size(config: TrainConfig, ctx: ProcessContext) -> None:
    if config.batch_size % ctx.world_size:
        raise InputError(
            f"batch_size {config.batch_size} (crops per step over all processes) is not a multiple of the "
            f"{ctx.world_size} processes; use --set batch_size=N with N a multiple of both {ctx.world_size} and "
            f"the {len(config.datasets)} dataset(s)"
        )
    if config.loss.ccsa.weight > 0 and config.batch_size // ctx.world_size < 2:
        raise InputError(
            f"loss.ccsa pairs crops of different datasets within a process's batch, but batch_size "
            f"{config.batch_size} over {ctx.world_size} processes leaves {config.batch_size // ctx.world_size}; "
            "use a batch_size of at least 2 per process"
        )


def _already_finished(
    config: TrainConfig,
    out_dir: Path,
    ctx: ProcessContext,
    previous: Path | None,
    start_iter: int,
    max_iters: int,
    log: Callable[[str], None],
) -> TrainResult:
    """The result of a run whose newest checkpoint is its last; exports ``model.safetensors`` if it is missing."""
    log(f"training already finished: {previous} is at iteration {start_iter} of {max_iters}")
    final = out_dir / FINAL_MODEL
    if ctx.is_main and not final.is_file():  # killed between the last checkpoint and the export
        save_checkpoint(load_model(previous), final, taxonomy=config.model_taxonomy, current_iter=start_iter)
    barrier()
    return TrainResult(out_dir, start_iter, max_iters, None, previous, final)


def _model_and_optimizer(
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


def _log_location(run_log: RunLog, out_dir: Path) -> str:
    if run_log.tensorboard is not None:
        return f"log: {run_log.path}, TensorBoard events in {out_dir / 'tensorboard'}"
    return f"log: {run_log.path} (TensorBoard event files too once the tensorboard package is installed)"


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


class _WindowStats:
    """Loss sums since the last logged row, kept on the device (no sync per step), summed over processes.

    ``extras``: values of each step averaged like the loss (MGDA's weights, the CCSA loss), returned under the
    row's ``extras`` key in the order of :func:`baseline_columns`.
    """

    def __init__(self, num_datasets: int, ctx: ProcessContext, extras: int = 0) -> None:
        self.ctx, self.num_datasets, self.extras = ctx, num_datasets, extras
        self._reset()

    def _reset(self) -> None:
        d = self.num_datasets
        # [sum of step losses, steps, crops, per-dataset CE sums (d), per-dataset labelled pixels (d), extras]
        self.sums = torch.zeros(3 + 2 * d + self.extras, dtype=torch.float64, device=self.ctx.device)
        self.data_wait = 0.0
        self.clock = time.perf_counter()

    def add(self, loss, pixel_loss, valid, dataset_ids, crops: int, extras: torch.Tensor | None = None) -> None:
        d = self.num_datasets
        self.sums[0] += loss.double()
        self.sums[1] += 1
        self.sums[2] += crops
        per_image_loss = pixel_loss.sum(dim=(1, 2)).double()
        per_image_pixels = valid.sum(dim=(1, 2)).double()
        self.sums[3 : 3 + d].index_add_(0, dataset_ids, per_image_loss)
        self.sums[3 + d : 3 + 2 * d].index_add_(0, dataset_ids, per_image_pixels)
        if extras is not None:
            self.sums[3 + 2 * d :] += extras

    def flush(self, iteration: int, lr: float, per_dataset: int, first_size: int, names: list[str]) -> dict[str, Any]:
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
        row["extras"] = [float(v / max(sums[1], 1)) for v in sums[3 + 2 * d :]]
        self._reset()
        return row


def _validation_columns(results: dict[str, float], names: list[str]) -> dict[str, float]:
    if len(names) == 1:
        return {"val_miou": results[names[0]]}
    return {f"val_miou/{name}": value for name, value in results.items()}


def baseline_columns(config: TrainConfig, names: list[str]) -> list[str]:
    """The log columns of the paper's baselines: MGDA's weight of each dataset, or the CCSA loss (step means)."""
    if config.optim.multi_objective == "mgda":
        return [f"mgda_weight/{n}" for n in names]
    if config.loss.ccsa.weight > 0:
        return ["ccsa_loss"]
    return []


def log_columns(config: TrainConfig, names: list[str]) -> list[str]:
    """The CSV columns of a run of ``config``."""
    columns = ["iter", "epoch", "loss", "lr", "images_per_s", "data_wait_s"]
    if len(names) > 1:
        columns += [f"loss/{n}" for n in names]
    columns += baseline_columns(config, names)
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
    lines = ""
    if config.optim.multi_objective == "mgda":
        lines = (
            f"\nMGDA: the gradient is the min-norm combination of the {len(datasets)} datasets' gradients "
            f"(normalization {config.optim.mgda_normalization})"
        )
    elif config.loss.ccsa.weight > 0:
        ccsa = config.loss.ccsa
        lines = (
            f"\nCCSA: loss = {ccsa.weight:g} x contrastive alignment ({ccsa.positive_pairs} positive and "
            f"{ccsa.positive_pairs * ccsa.negative_ratio} negative cross-dataset pairs per process, margin "
            f"{ccsa.margin:g}) + {1 - ccsa.weight:g} x cross-entropy"
        )
    ohem = config.loss.ohem
    if ohem.thresh is not None:
        lines += (
            f"\nhard pixels (loss.ohem): the loss counts the labelled pixels with a probability of their label of at "
            f"most {ohem.thresh:g}, and never fewer than the hardest {ohem.min_kept:.0%} of each process's "
            "labelled pixels"
        )
    return (
        f"training {model.arch} ({params / 1e6:.2f}M parameters, {config.num_classes} classes, "
        f"{config.model_taxonomy} taxonomy) on {sizes}\n"
        f"{max_iters} iterations of {config.batch_size} crops {config.transform.crop[0]}x{config.transform.crop[1]} "
        f"({per_dataset} per dataset per step, {config.batch_size // ctx.world_size} per process x "
        f"{ctx.world_size} process(es) on {ctx.device}, {config.precision}); output in {out_dir}{lines}"
    )


__all__ = ["TrainResult", "Trainer", "baseline_columns", "log_columns", "train"]
