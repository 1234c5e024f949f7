"""CCSA: contrastive semantic alignment of pixel embeddings across datasets (Motiian et al., ICCV 2017).

The MSeg paper's domain-generalisation baseline (``training:mseg_semantic/domain_generalization/``, SPEC 4.10)
adds no parameters to PSPNet: it reads the backbone's ``layer4`` feature map (2048-d embeddings at 1/8 of the
input), samples pairs of feature-map locations from crops of *different* datasets (domains), and adds a contrastive
loss on their Euclidean distance ``d``: same class, pull together (``d^2``); different classes, push apart beyond
a margin (``max(margin - d, 0)^2``). Labels are brought to the feature map's size with nearest-neighbour
downsampling. Per step it takes N positive and ``negative_ratio`` x N negative pairs (N = 100 by default, 1,000 in
the paper's experiments), drawn as the original does: a domain uniformly among the domains in the batch, a crop
uniformly among that domain's crops, a location uniformly in the feature map; pairs of the same domain are
dropped. The loss is then ``weight * ccsa + (1 - weight) * (CE + aux_weight * aux CE)`` (the original's alpha,
0.25 by default).

Differences from the original, all where it did something undefined or wasteful:

- pixels labelled 255 (void) are never paired (the original compared raw labels, so two void pixels made a
  "positive" pair and void against a class a "negative");
- labels are downsampled to the feature map's exact size (the original used ``H // 8``, one row and column short
  of the ``ceil(H / 8)`` map, so its pairs were read slightly off their labels);
- the pull term uses the squared distance itself, the push term ``sqrt(max(d^2, 1e-8))`` (the original clamped
  both, so perfectly aligned pairs cost 1e-8 rather than 0);
- sampling stops after a fixed number of rounds and uses the pairs found (the original looped forever when a batch
  had no cross-domain pair of the same class), and draws from a generator seeded by the step, so resumes are exact.

HRNet has no ``layer4``; its embedding is the input of ``last_layer`` (the concatenated multi-resolution features,
1/4 of the input), the same place in the network: the last features before the classifier.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mseg_semantic.taxonomy import IGNORE_LABEL

#: Where the embedding is read per architecture family: (module name, its "output" or its "input").
EMBEDDING_POINTS = {"pspnet": ("layer4", "output"), "hrnet": ("last_layer", "input")}
#: Candidate pairs drawn per sampling round: the original's 1e6 at most, fewer when few pairs are wanted.
MAX_ROUND = 1_000_000
MAX_ROUNDS = 16
#: The original's clamp of the squared distance before its square root.
DISTANCE_EPS = 1e-8


def embedding_point(arch: str) -> tuple[str, str] | None:
    """``(module name, "output" | "input")`` where CCSA reads ``arch``'s embedding; None if it has none."""
    for family, point in EMBEDDING_POINTS.items():
        if arch.startswith(family):
            return point
    return None


class EmbeddingTap:
    """Keeps the embedding of the forward pass run inside :meth:`capture` (a hook on the model's module)."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        point = embedding_point(arch)
        if point is None:
            raise ValueError(f"CCSA has no embedding point for arch {arch!r}")
        name, where = point
        module = model.get_submodule(name)
        if where == "output":
            self._handle = module.register_forward_hook(lambda _m, _args, output: self._keep(output))
        else:
            self._handle = module.register_forward_pre_hook(lambda _m, args: self._keep(args[0]))
        self._active = False
        self._features: torch.Tensor | None = None

    def _keep(self, features: torch.Tensor) -> None:
        if self._active:
            self._features = features

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Forward passes inside keep their embedding for :meth:`take` (validation passes outside do not)."""
        self._active, self._features = True, None
        try:
            yield
        finally:
            self._active = False

    def take(self) -> torch.Tensor:
        """The captured embedding (N, C, h, w), released from the tap."""
        if self._features is None:
            raise RuntimeError("no embedding was captured: run the forward pass inside capture()")
        features, self._features = self._features, None
        return features

    def remove(self) -> None:
        self._handle.remove()


@dataclass(frozen=True)
class PixelPairs:
    """Sampled pairs of feature-map locations: ``(crop index, row, column)`` of each side, positives first."""

    first: torch.Tensor  # (M, 3) int64
    second: torch.Tensor  # (M, 3) int64
    same_class: torch.Tensor  # (M,) bool

    @property
    def positives(self) -> int:
        return int(self.same_class.sum())

    def __len__(self) -> int:
        return int(self.same_class.numel())


def sample_pairs(
    labels: torch.Tensor,
    domains: torch.Tensor,
    positives: int,
    negative_ratio: int,
    generator: torch.Generator,
    *,
    ignore_label: int = IGNORE_LABEL,
) -> PixelPairs:
    """Up to ``positives`` same-class and ``negative_ratio * positives`` different-class cross-domain pairs.

    ``labels``: (N, h, w) class ids at the embedding's resolution; ``domains``: (N,) dataset index of each crop;
    ``generator``: a CPU generator (the draws). Candidates are drawn in rounds as the original does (domain, then
    crop, then location, for both sides independently); pairs within a domain or touching a void pixel are
    dropped. Fewer pairs come back when rounds run out (none when the batch holds a single domain).
    """
    labels, domains = labels.cpu(), domains.cpu()
    wanted_negatives = positives * negative_ratio
    domain_ids = torch.unique(domains)
    found: dict[bool, list[tuple[torch.Tensor, torch.Tensor]]] = {True: [], False: []}
    if len(domain_ids) >= 2:
        members = [torch.nonzero(domains == d).flatten() for d in domain_ids]
        counts = torch.tensor([len(m) for m in members])
        table = torch.zeros(len(members), int(counts.max()), dtype=torch.int64)
        for k, m in enumerate(members):
            table[k, : len(m)] = m
        round_size = min(MAX_ROUND, max(4096, 16 * (positives + wanted_negatives)))
        have = {True: 0, False: 0}
        for _ in range(MAX_ROUNDS):
            first = _draw_locations(table, counts, labels.shape, round_size, generator)
            second = _draw_locations(table, counts, labels.shape, round_size, generator)
            first_label = labels[first[:, 0], first[:, 1], first[:, 2]]
            second_label = labels[second[:, 0], second[:, 1], second[:, 2]]
            usable = (
                (domains[first[:, 0]] != domains[second[:, 0]])
                & (first_label != ignore_label)
                & (second_label != ignore_label)
            )
            same = first_label == second_label
            for kind in (True, False):
                chosen = usable & (same if kind else ~same)
                found[kind].append((first[chosen], second[chosen]))
                have[kind] += int(chosen.sum())
            if have[True] >= positives and have[False] >= wanted_negatives:
                break
    parts_first, parts_second, flags = [], [], []
    for kind, limit in ((True, positives), (False, wanted_negatives)):
        a = torch.cat([f for f, _ in found[kind]] or [torch.zeros(0, 3, dtype=torch.int64)])[:limit]
        b = torch.cat([s for _, s in found[kind]] or [torch.zeros(0, 3, dtype=torch.int64)])[:limit]
        parts_first.append(a)
        parts_second.append(b)
        flags.append(torch.full((len(a),), kind, dtype=torch.bool))
    return PixelPairs(torch.cat(parts_first), torch.cat(parts_second), torch.cat(flags))


def _draw_locations(
    table: torch.Tensor, counts: torch.Tensor, shape: torch.Size, count: int, generator: torch.Generator
) -> torch.Tensor:
    """(count, 3) locations: a domain uniformly, one of its crops uniformly, a row and a column uniformly."""
    _, height, width = shape
    domain = torch.randint(len(counts), (count,), generator=generator)
    slot = (torch.rand(count, generator=generator, dtype=torch.float64) * counts[domain]).long()
    crop = table[domain, torch.minimum(slot, counts[domain] - 1)]
    row = torch.randint(height, (count,), generator=generator)
    column = torch.randint(width, (count,), generator=generator)
    return torch.stack([crop, row, column], dim=1)


def contrastive_alignment_loss(
    first: torch.Tensor, second: torch.Tensor, same_class: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Mean over pairs of ``d^2`` (same class) or ``max(margin - d, 0)^2`` (different classes), float32.

    ``first``, ``second``: (M, C) paired embeddings; ``same_class``: (M,) bool. Zero exactly when every
    same-class pair coincides and every other pair is at least ``margin`` apart. An empty set of pairs gives 0.
    """
    if same_class.numel() == 0:
        return first.new_zeros((), dtype=torch.float32)
    squared = (first.float() - second.float()).pow(2).sum(dim=1)
    distance = squared.clamp_min(DISTANCE_EPS).sqrt()
    per_pair = torch.where(same_class.to(squared.device), squared, (margin - distance).clamp_min(0.0).pow(2))
    return per_pair.mean()


def ccsa_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    domains: torch.Tensor,
    *,
    positives: int,
    negative_ratio: int,
    margin: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, PixelPairs]:
    """The contrastive alignment loss of one batch and the pairs it used.

    ``features``: (N, C, h, w) embeddings; ``labels``: (N, H, W) class ids (255 void), downsampled here to (h, w)
    with nearest neighbours; ``domains``: (N,) dataset index of each crop.
    """
    small = F.interpolate(labels[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
    pairs = sample_pairs(small, domains, positives, negative_ratio, generator)
    first, second = pairs.first.to(features.device), pairs.second.to(features.device)
    embed_first = features[first[:, 0], :, first[:, 1], first[:, 2]]
    embed_second = features[second[:, 0], :, second[:, 1], second[:, 2]]
    return contrastive_alignment_loss(embed_first, embed_second, pairs.same_class, margin), pairs


__all__ = [
    "EMBEDDING_POINTS",
    "EmbeddingTap",
    "PixelPairs",
    "ccsa_loss",
    "contrastive_alignment_loss",
    "embedding_point",
    "sample_pairs",
]
