"""Online hard example mining (``loss.ohem``): the cross-entropy of a step counts only its hard pixels.

Most labelled pixels of a street scene are road, sky and building that the model already gets right; their small
losses still outweigh the few thin, hard ones (poles, signs, object borders). OHEM (Shrivastava et al. 2016, in the
per-pixel form of the HRNet and PSPNet code bases) keeps, in each process's batch, the labelled pixels whose
predicted probability of their own label is at most ``thresh``, and at least the ``min_kept`` share of them with the
lowest probabilities, so a step the model finds easy still learns from its hardest pixels. The loss is the mean over
the kept pixels. Off (``thresh: null``) by default: the original trained without it.

As in mmseg, OHEM is a pixel sampler (:class:`HardPixelSampler`): it only chooses which pixels the loss counts, so
it combines with any pixel loss (:class:`~mseg_semantic.training.objectives.CrossEntropy` takes one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def hard_pixels(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, thresh: float, min_kept: float
) -> torch.Tensor:
    """The pixels of ``valid`` (N, H, W) that OHEM keeps, given ``logits`` (N, C, H, W) and ``labels`` (N, H, W).

    Kept: probability of the label <= max(``thresh``, the ``ceil(min_kept * labelled)``-th lowest probability).
    """
    count = int(valid.sum())
    if count == 0:
        return valid
    with torch.no_grad():
        probs = torch.softmax(logits.detach().float(), dim=1)
        target = torch.where(valid, labels, torch.zeros_like(labels))
        prob = probs.gather(1, target[:, None])[:, 0]
        prob = torch.where(valid, prob, torch.full_like(prob, math.inf))  # unlabelled: never among the lowest
        k = min(count, max(1, math.ceil(min_kept * count)))
        cutoff = max(float(torch.kthvalue(prob.flatten(), k).values), thresh)
        return valid & (prob <= cutoff)


@dataclass(frozen=True)
class HardPixelSampler:
    """``loss.ohem`` as a sampler: called with ``(logits, labels, labelled)``, returns the pixels a loss counts."""

    thresh: float  # keep the pixels whose probability of their label is at most this
    min_kept: float  # and at least this share of the labelled pixels, the hardest ones

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """:func:`hard_pixels` of the batch: a (N, H, W) bool mask inside ``valid``."""
        return hard_pixels(logits, labels, valid, self.thresh, self.min_kept)
