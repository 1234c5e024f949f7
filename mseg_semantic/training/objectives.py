"""What a training step minimises and how its gradient is made: one object per recipe, all called the same way.

The step of every recipe reads the same (:meth:`~mseg_semantic.training.loop.Trainer.step`): forward inside
:meth:`Objective.step_context`, then :meth:`Objective.backward` sets the gradients and returns what to log, then
the SGD step. What differs between the paper's recipes lives here, so a new loss option touches this module and
its config section only:

- :class:`CrossEntropy`: the pixel loss every recipe logs. Cross-entropy in fp32, mean over the labelled pixels of
  this process's batch, plus ``aux_weight`` x the aux head's loss (PSPNet). Options: ``class_weights``
  (``loss.class_weighting``, see :mod:`~mseg_semantic.training.class_weights`) and a pixel ``sampler`` that
  chooses the pixels counted (``loss.ohem``: :class:`~mseg_semantic.training.ohem.HardPixelSampler`).
- :class:`CrossEntropyObjective`: the original recipe, ``CE + aux_weight * aux`` backpropagated.
- :class:`MGDAObjective` (``optim.multi_objective: mgda``): each dataset's loss is a task; the gradient is MGDA's
  min-norm combination of theirs (:mod:`~mseg_semantic.training.mgda`), under DDP's ``no_sync`` since the
  combination is reduced by hand.
- :class:`CCSAObjective` (``loss.ccsa.weight > 0``): the contrastive alignment loss of the step's embeddings
  (:mod:`~mseg_semantic.training.ccsa`) mixed with the cross-entropy.

:func:`build_objective` picks one from a config; :func:`objective_columns` and :func:`objective_summary` are the
log columns and start-up lines it adds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mseg_semantic.distributed import ProcessContext
from mseg_semantic.errors import InputError
from mseg_semantic.taxonomy import IGNORE_LABEL, class_names
from mseg_semantic.training.ccsa import EmbeddingTap, ccsa_loss
from mseg_semantic.training.class_weights import enet_weights, label_counts
from mseg_semantic.training.config import CCSAConfig, OHEMConfig, TrainConfig
from mseg_semantic.training.data import PreparedDataset, label_target
from mseg_semantic.training.mgda import mgda_gradients
from mseg_semantic.training.ohem import HardPixelSampler

#: A network's output: the logits (N, C, H, W), or PSPNet's ``(logits, aux logits)`` in training mode.
Output = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

#: The seed stream of CCSA's pair sampling (the default stream of :func:`step_seed` is dropout's).
CCSA_STREAM = 0xCC5A


def step_seed(seed: int, iteration: int, rank: int, stream: int = 0xD0) -> int:
    """A seed of step ``iteration`` on process ``rank``; ``stream`` tells apart the draws of one step.

    A function of the step, not of the draws before it, so a resumed run draws what an unbroken one would.
    """
    return int(np.random.SeedSequence([seed, iteration, rank, stream]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- the pixel loss
@dataclass(frozen=True)
class PixelLoss:
    """The cross-entropy of one batch, as :class:`CrossEntropy` returns it."""

    loss: torch.Tensor  # () fp32: the mean over the counted pixels (what is logged; 0 for an all-void batch)
    total: torch.Tensor  # () what the original backpropagates: loss + aux_weight x the aux loss
    pixel: torch.Tensor  # (N, H, W) fp32: each pixel's loss, 0 where not counted
    counted: torch.Tensor  # (N, H, W) bool: the labelled pixels (with a sampler: those it keeps)


@dataclass(frozen=True, eq=False)
class CrossEntropy:
    """Per-pixel cross-entropy in fp32 over the labelled pixels, plus ``aux_weight`` x the aux head's.

    ``class_weights``: (C,) scale each pixel's loss by its class's weight (the mean stays over the counted pixels).
    ``sampler``: ``(logits, labels, labelled) -> counted``, the pixels the loss counts (OHEM); None: all labelled.
    """

    aux_weight: float = 0.4
    class_weights: torch.Tensor | None = None
    sampler: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __call__(self, output: Output, labels: torch.Tensor) -> PixelLoss:
        """The loss of ``output`` against ``labels`` (N, H, W) int64 (255: void)."""
        logits, aux = output if isinstance(output, tuple) else (output, None)
        pixel = self._pixel_loss(logits, labels)
        counted = labels != IGNORE_LABEL
        if self.sampler is not None:
            counted = self.sampler(logits, labels, counted)
            pixel = pixel * counted
        loss = pixel.sum() / counted.sum().clamp(min=1)  # mean over labelled pixels; 0 for an all-void batch
        total = loss
        if aux is not None:
            total = loss + self.aux_weight * self._aux_loss(aux, labels, counted)
        return PixelLoss(loss, total, pixel, counted)

    def per_dataset(
        self, output: Output, labels: torch.Tensor, dataset_ids: torch.Tensor, ce: PixelLoss
    ) -> dict[int, torch.Tensor]:
        """Each dataset's loss over its crops of the batch (``ce`` is this batch's :meth:`__call__`): the mean over
        its counted pixels (plus ``aux_weight`` x the aux loss), what the original's process of that dataset
        backpropagates. ``dataset_ids``: (N,) the dataset of each crop."""
        aux = output[1] if isinstance(output, tuple) else None
        # The sampler's kept pixels only (labelled ones have their loss, the rest 0, either way).
        aux_pixel = None if aux is None else self._pixel_loss(aux, labels) * ce.counted
        losses = {}
        for d in torch.unique(dataset_ids).tolist():
            crops = dataset_ids == d
            pixels = ce.counted[crops].sum().clamp(min=1)
            loss = ce.pixel[crops].sum() / pixels
            if aux_pixel is not None:
                loss = loss + self.aux_weight * aux_pixel[crops].sum() / pixels
            losses[int(d)] = loss
        return losses

    def _pixel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), labels, weight=self.class_weights, ignore_index=IGNORE_LABEL, reduction="none"
        )

    def _aux_loss(self, aux: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
        if self.class_weights is None and self.sampler is None:  # as the original
            return torch.nan_to_num(F.cross_entropy(aux.float(), labels, ignore_index=IGNORE_LABEL))
        return (self._pixel_loss(aux, labels) * counted).sum() / counted.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------- the objectives
@dataclass(frozen=True)
class StepLoss:
    """What a step's :meth:`Objective.backward` reports."""

    ce: PixelLoss  # the batch's cross-entropy: the logged loss, and per dataset
    extras: torch.Tensor | None = None  # (k,) float64: the values of the objective's log columns, or None


class Objective(Protocol):
    """What the trainer calls, the same way for every recipe."""

    def step_context(self, network: nn.Module) -> AbstractContextManager[Any]:
        """What the step's forward pass and :meth:`backward` run inside."""

    def backward(
        self,
        output: Output,
        labels: torch.Tensor,
        dataset_ids: torch.Tensor,
        iteration: int,
        scaler: torch.amp.GradScaler,
    ) -> StepLoss:
        """Set every parameter's ``.grad`` (zeroed before) for the step after ``iteration`` steps."""


@dataclass(frozen=True, eq=False)
class CrossEntropyObjective:
    """The original recipe: backpropagate ``CE + aux_weight * aux`` (through the fp16 scaler)."""

    loss: CrossEntropy

    def step_context(self, network: nn.Module) -> AbstractContextManager[Any]:
        return nullcontext()

    def backward(
        self,
        output: Output,
        labels: torch.Tensor,
        dataset_ids: torch.Tensor,
        iteration: int,
        scaler: torch.amp.GradScaler,
    ) -> StepLoss:
        ce = self.loss(output, labels)
        scaler.scale(ce.total).backward()
        return StepLoss(ce)


@dataclass(frozen=True, eq=False)
class MGDAObjective:
    """Gradients set to MGDA's min-norm combination of the datasets' gradients; logs the datasets' weights."""

    loss: CrossEntropy
    params: list[nn.Parameter]  # every trainable parameter, in the same order on every process
    num_datasets: int
    normalization: str  # optim.mgda_normalization
    same_passes: bool  # SyncBatchNorm: every process runs as many backward passes as the busiest

    def step_context(self, network: nn.Module) -> AbstractContextManager[Any]:
        # As the original: no DDP gradient all-reduce; mgda_gradients reduces per dataset itself.
        return network.no_sync() if isinstance(network, DistributedDataParallel) else nullcontext()

    def backward(
        self,
        output: Output,
        labels: torch.Tensor,
        dataset_ids: torch.Tensor,
        iteration: int,
        scaler: torch.amp.GradScaler,
    ) -> StepLoss:
        ce = self.loss(output, labels)
        losses = self.loss.per_dataset(output, labels, dataset_ids, ce)
        result = mgda_gradients(
            losses, self.params, self.num_datasets, self.normalization, same_passes=self.same_passes
        )
        return StepLoss(ce, torch.as_tensor(result.weights, dtype=torch.float64, device=ce.loss.device))


@dataclass(frozen=True, eq=False)
class CCSAObjective:
    """The original's mix ``weight * ccsa + (1 - weight) * (CE + aux)``; logs the CCSA term."""

    loss: CrossEntropy
    tap: EmbeddingTap  # where the step's embedding is read
    settings: CCSAConfig
    seed: int  # the run's seed and this process's rank: the step's pair draws are its own
    rank: int

    def step_context(self, network: nn.Module) -> AbstractContextManager[Any]:
        return self.tap.capture()

    def backward(
        self,
        output: Output,
        labels: torch.Tensor,
        dataset_ids: torch.Tensor,
        iteration: int,
        scaler: torch.amp.GradScaler,
    ) -> StepLoss:
        ce = self.loss(output, labels)
        ccsa = self.settings
        generator = torch.Generator().manual_seed(step_seed(self.seed, iteration, self.rank, CCSA_STREAM))
        term, _ = ccsa_loss(
            self.tap.take(), labels, dataset_ids, positives=ccsa.positive_pairs, negative_ratio=ccsa.negative_ratio,
            margin=ccsa.margin, generator=generator,
        )  # fmt: skip
        scaler.scale(ccsa.weight * term + (1.0 - ccsa.weight) * ce.total).backward()
        return StepLoss(ce, term.detach().double().reshape(1))


# ---------------------------------------------------------------------------------------------- from a config
def build_objective(
    config: TrainConfig,
    datasets: list[PreparedDataset],
    model: nn.Module,
    ctx: ProcessContext,
    log: Callable[[str], None],
) -> Objective:
    """The objective of ``config`` for the unwrapped ``model`` on this process (logs the class weights, if any)."""
    tap = EmbeddingTap(model, model.arch) if config.loss.ccsa.weight > 0 else None
    sampler = pixel_sampler(config.loss.ohem)
    loss = CrossEntropy(config.optim.aux_weight, _class_weights(config, datasets, ctx, log), sampler)
    if config.optim.multi_objective == "mgda":
        params = [p for p in model.parameters() if p.requires_grad]
        sync_bn = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        return MGDAObjective(loss, params, len(datasets), config.optim.mgda_normalization, sync_bn)
    if tap is not None:
        return CCSAObjective(loss, tap, config.loss.ccsa, config.seed, ctx.rank)
    return CrossEntropyObjective(loss)


def pixel_sampler(ohem: OHEMConfig) -> HardPixelSampler | None:
    """The sampler of ``loss.ohem`` (None while its ``thresh`` is null: every labelled pixel counts)."""
    return None if ohem.thresh is None else HardPixelSampler(ohem.thresh, ohem.min_kept)


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


def check_process_batch(config: TrainConfig, world_size: int) -> None:
    """What the objective needs of each process's share of the batch (checked once the processes are known)."""
    if config.loss.ccsa.weight > 0 and config.batch_size // world_size < 2:
        raise InputError(
            f"loss.ccsa pairs crops of different datasets within a process's batch, but batch_size "
            f"{config.batch_size} over {world_size} processes leaves {config.batch_size // world_size}; "
            "use a batch_size of at least 2 per process"
        )


def objective_columns(config: TrainConfig, names: list[str]) -> list[str]:
    """The log columns of the paper's baselines: MGDA's weight of each dataset, or the CCSA loss (step means)."""
    if config.optim.multi_objective == "mgda":
        return [f"mgda_weight/{n}" for n in names]
    if config.loss.ccsa.weight > 0:
        return ["ccsa_loss"]
    return []


def objective_summary(config: TrainConfig, num_datasets: int) -> str:
    """The start-up lines (each after a newline) of what the step minimises beyond the plain cross-entropy."""
    lines = ""
    if config.optim.multi_objective == "mgda":
        lines = (
            f"\nMGDA: the gradient is the min-norm combination of the {num_datasets} datasets' gradients "
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
    return lines


__all__ = [
    "CCSAObjective",
    "CrossEntropy",
    "CrossEntropyObjective",
    "MGDAObjective",
    "Objective",
    "PixelLoss",
    "StepLoss",
    "build_objective",
    "check_process_batch",
    "objective_columns",
    "objective_summary",
    "pixel_sampler",
    "step_seed",
]
