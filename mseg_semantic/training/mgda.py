"""MGDA over datasets: each dataset is a task; a step follows the min-norm convex combination of their gradients.

The MSeg release (``training:mseg_semantic/multiobjective_opt/dist_mgda_utils.py``, SPEC 4.9) runs one process per
dataset under ``DistributedDataParallel.no_sync()``: every process backpropagates its own loss; the losses and
every parameter's gradient are all-gathered and averaged per dataset (over the processes of that dataset); the
per-dataset gradients are flattened and the min-norm weights ``c`` solved; every process then sets each gradient to
``sum_d c_d g_d`` (and the loss to ``sum_d c_d L_d``) before the usual SGD step.

:func:`mgda_gradients` computes the same thing for any split of a step's crops over processes:

- each process backpropagates, separately, the loss of every dataset present in its batch (one backward pass per
  process in the original's layout, one per dataset on a CPU with ``dataset_layout: mixed``); a dataset's loss
  is the cross-entropy mean over its labelled pixels in that process's batch, as the original's per-process loss.
  With SyncBatchNorm (GPUs) a backward pass is a collective, so every process runs as many as the busiest one, in
  dataset order, padding with passes of a zero loss: in the original's layout that is its one pass per process
  (whose SyncBatchNorm backward mixes the datasets' gradients, as the original's did); when every process holds
  every dataset, pass k is dataset k everywhere and each dataset's gradient is exact;
- the dataset gradient ``g_d`` is the mean over the processes holding dataset ``d`` of their gradients, as the
  original; rather than all-gathering every process's gradients (the original's memory problem, SPEC 6.13), the
  processes all-reduce ``g_{p,d} / n_d`` bucket by bucket and keep only the Gram matrix ``<g_d, g_e>``;
- after the solve, ``sum_d c_d g_d`` is one more all-reduce of each process's ``sum_d c_d g_{p,d} / n_d``.

The result is identical on every process (same Gram matrix, same solve), so the parameters stay in step without
DDP's own all-reduce.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mseg_semantic.distributed import all_reduce_sum, rank, world_size
from mseg_semantic.training.min_norm import min_norm_weights, normalized_gram

#: Gradient elements per dataset that travel in one all-reduce (bounds the extra memory of the reduction).
BUCKET_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class MGDAResult:
    """The weights of one step and what they were solved from (identical on every process)."""

    weights: np.ndarray  # (D,) simplex weights of the datasets
    losses: np.ndarray  # (D,) each dataset's loss, averaged over the processes holding it
    gram: np.ndarray  # (D, D) inner products of the (unnormalised) dataset gradients
    min_norm: float  # |sum_d c_d g_d|^2 of the (normalised) problem solved


def mgda_gradients(
    dataset_losses: dict[int, torch.Tensor],
    params: Sequence[nn.Parameter],
    num_datasets: int,
    normalization: str = "none",
    *,
    same_passes: bool = False,
) -> MGDAResult:
    """Set every parameter's ``.grad`` to ``sum_d c_d g_d`` with MGDA's min-norm weights ``c``.

    ``dataset_losses``: this process's loss of each dataset in its batch (``{dataset index: scalar}``, with their
    graph; a process may hold any subset, every dataset must be held by some process). ``params``: the shared
    parameters (here every trainable parameter: one network serves all datasets). Every process must call this
    with the same ``params`` in the same order. ``same_passes``: every process runs as many backward passes as the
    busiest (needed when the backward pass holds collectives: SyncBatchNorm). Returns the weights and the
    per-dataset losses and Gram matrix.
    """
    device = params[0].device
    present = torch.zeros(num_datasets, dtype=torch.float64, device=device)
    loss_values = torch.zeros(num_datasets, dtype=torch.float64, device=device)
    for d, loss in dataset_losses.items():
        present[d] = 1.0
        loss_values[d] = loss.detach().double()
    totals = all_reduce_sum(torch.cat([present, loss_values])).cpu().numpy()
    holders = totals[:num_datasets]
    if (holders == 0).any():
        missing = [d for d in range(num_datasets) if holders[d] == 0]
        raise RuntimeError(f"datasets {missing} have no crops in this step on any process")
    losses = totals[num_datasets:] / holders
    passes = len(dataset_losses)
    if same_passes:
        counts = torch.zeros(world_size(), dtype=torch.float64, device=device)
        counts[rank()] = passes
        passes = int(all_reduce_sum(counts).max())
    local = _local_gradients(dataset_losses, params, passes)
    gram = _dataset_gram(local, params, holders)
    weights, min_norm = min_norm_weights(normalized_gram(gram, losses, normalization))
    _set_combined_gradients(local, params, holders, weights)
    return MGDAResult(weights, losses, gram, min_norm)


def _local_gradients(
    dataset_losses: dict[int, torch.Tensor], params: Sequence[nn.Parameter], passes: int
) -> dict[int, list[torch.Tensor]]:
    """This process's gradient of each of its datasets' losses, one backward pass each in dataset order, then
    passes of a zero loss up to ``passes`` (parameters a loss does not reach get zeros)."""
    order = sorted(dataset_losses)
    zero = 0.0 * dataset_losses[order[0]]  # reaches every layer the losses do, with zero gradients
    local = {}
    for i in range(passes):
        loss = dataset_losses[order[i]] if i < len(order) else zero
        grads = torch.autograd.grad(loss, list(params), retain_graph=i < passes - 1, allow_unused=True)
        if i < len(order):
            local[order[i]] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    return local


def _buckets(params: Sequence[nn.Parameter]) -> Iterator[list[int]]:
    """Indices of consecutive parameters, about ``BUCKET_ELEMENTS`` elements at a time (same on every process)."""
    bucket: list[int] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(i)
        size += p.numel()
        if size >= BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def _dataset_gram(
    local: dict[int, list[torch.Tensor]], params: Sequence[nn.Parameter], holders: np.ndarray
) -> np.ndarray:
    """``<g_d, g_e>`` of the dataset gradients ``g_d = sum_p g_{p,d} / n_d``, reduced bucket by bucket."""
    num_datasets = len(holders)
    device = params[0].device
    gram = torch.zeros(num_datasets, num_datasets, dtype=torch.float64, device=device)
    for bucket in _buckets(params):
        width = sum(params[i].numel() for i in bucket)
        rows = torch.zeros(num_datasets, width, dtype=torch.float32, device=device)
        for d, grads in local.items():
            rows[d] = torch.cat([grads[i].reshape(-1).float() for i in bucket]) / float(holders[d])
        rows = all_reduce_sum(rows).double()
        gram += rows @ rows.T
    return gram.cpu().numpy()


def _set_combined_gradients(
    local: dict[int, list[torch.Tensor]], params: Sequence[nn.Parameter], holders: np.ndarray, weights: np.ndarray
) -> None:
    """``p.grad = sum_d c_d g_d`` for every parameter: each process's share, summed over processes."""
    for bucket in _buckets(params):
        shares = []
        for i in bucket:
            share = torch.zeros_like(params[i], dtype=torch.float32)
            for d, grads in local.items():
                share += grads[i].float() * float(weights[d] / holders[d])
            shares.append(share.reshape(-1))
        combined = all_reduce_sum(torch.cat(shares))
        offset = 0
        for i in bucket:
            p = params[i]
            p.grad = torch.empty_like(p).copy_(combined[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()


__all__ = ["BUCKET_ELEMENTS", "MGDAResult", "mgda_gradients"]
