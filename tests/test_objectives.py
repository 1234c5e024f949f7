"""The training objectives called directly, as the trainer calls them, on hand-made logits, labels and tiny models:
the cross-entropy (aux head, per dataset), and each objective's gradient, log values and choice from a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_hrnet
from torch import nn

from mseg_semantic.distributed import ProcessContext
from mseg_semantic.training import CCSAConfig, load_train_config
from mseg_semantic.training.ccsa import EmbeddingTap, ccsa_loss
from mseg_semantic.training.data import PreparedDataset
from mseg_semantic.training.min_norm import min_norm_weights
from mseg_semantic.training.objectives import (
    CCSA_STREAM,
    CCSAObjective,
    CrossEntropy,
    CrossEntropyObjective,
    MGDAObjective,
    build_objective,
    objective_columns,
    objective_summary,
    step_seed,
)
from mseg_semantic.training.ohem import HardPixelSampler

CPU = ProcessContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)


def batch(classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (3, C, 5, 6), aux logits of the same shape, labels (3, 5, 6) with some void pixels."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, classes, 5, 6, generator=generator)
    aux = torch.randn(3, classes, 5, 6, generator=generator)
    labels = torch.randint(0, classes, (3, 5, 6), generator=generator)
    labels[0, :2] = 255
    labels[2, :, :3] = 255
    return logits, aux, labels


class TwoHeads(nn.Module):
    """A per-pixel linear classifier with an aux head, as PSPNet returns in training mode."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.cls, self.aux = nn.Conv2d(3, classes, 1), nn.Conv2d(3, classes, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls(images), self.aux(images)


def test_cross_entropy_is_the_mean_over_labelled_pixels_plus_the_weighted_aux_loss():
    logits, aux, labels = batch()
    ce = CrossEntropy(aux_weight=0.4)((logits, aux), labels)
    labelled = labels != 255
    assert ce.counted.equal(labelled) and ce.pixel.dtype == torch.float32
    assert ce.pixel.equal(F.cross_entropy(logits, labels, ignore_index=255, reduction="none"))
    assert ce.pixel[~labelled].eq(0).all()
    assert ce.loss == pytest.approx(float(F.cross_entropy(logits, labels, ignore_index=255)), rel=1e-6)
    assert ce.total == pytest.approx(float(ce.loss + 0.4 * F.cross_entropy(aux, labels, ignore_index=255)), rel=1e-6)
    alone = CrossEntropy(aux_weight=0.4)(logits, labels)  # HRNet: no aux head, total is the loss
    assert alone.loss.equal(ce.loss) and alone.total.equal(alone.loss)
    # An all-void batch costs 0 (no NaN), aux head included.
    void = torch.full_like(labels, 255)
    empty = CrossEntropy(aux_weight=0.4)((logits, aux), void)
    assert (empty.loss.item(), empty.total.item(), int(empty.counted.sum())) == (0.0, 0.0, 0)


def test_cross_entropy_takes_half_precision_logits_in_fp32():
    logits, aux, labels = batch()
    ce = CrossEntropy()((logits.bfloat16(), aux.bfloat16()), labels)
    assert ce.loss.dtype == ce.total.dtype == ce.pixel.dtype == torch.float32
    expected = F.cross_entropy(logits.bfloat16().float(), labels, ignore_index=255)
    assert ce.loss == pytest.approx(float(expected), rel=1e-6)


def test_a_sampler_chooses_the_counted_pixels():
    logits, aux, labels = batch()
    everything_but_row_0 = torch.ones_like(labels, dtype=torch.bool)
    everything_but_row_0[:, 0] = False

    def sampler(_logits, _labels, labelled):
        return labelled & everything_but_row_0

    ce = CrossEntropy(aux_weight=0.5, sampler=sampler)((logits, aux), labels)
    kept = (labels != 255) & everything_but_row_0
    assert ce.counted.equal(kept)
    plain = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    aux_plain = F.cross_entropy(aux, labels, ignore_index=255, reduction="none")
    assert ce.loss == pytest.approx(float(plain[kept].mean()), rel=1e-6)
    assert ce.total == pytest.approx(float(plain[kept].mean() + 0.5 * aux_plain[kept].mean()), rel=1e-6)
    ohem = CrossEntropy(sampler=HardPixelSampler(0.5, 0.3))((logits, aux), labels)
    assert 0 < ohem.counted.sum() < (labels != 255).sum()


def test_per_dataset_losses_are_each_datasets_mean_over_its_crops():
    logits, aux, labels = batch()
    ids = torch.tensor([1, 0, 1])
    loss = CrossEntropy(aux_weight=0.4)
    losses = loss.per_dataset((logits, aux), labels, ids, loss((logits, aux), labels))
    assert sorted(losses) == [0, 1]
    for d, crops in ((0, [1]), (1, [0, 2])):
        main = F.cross_entropy(logits[crops], labels[crops], ignore_index=255)
        extra = F.cross_entropy(aux[crops], labels[crops], ignore_index=255)
        assert losses[d] == pytest.approx(float(main + 0.4 * extra), rel=1e-6)
    # A dataset absent from this process's batch has no loss here (MGDA takes it from the other processes).
    assert sorted(loss.per_dataset(logits, labels, torch.tensor([2, 2, 2]), loss(logits, labels))) == [2]


def test_the_plain_objective_backpropagates_ce_plus_aux():
    torch.manual_seed(0)
    model, images = TwoHeads(), torch.randn(3, 3, 5, 6)
    _, _, labels = batch()
    objective = CrossEntropyObjective(CrossEntropy(aux_weight=0.4))
    with objective.step_context(model):
        output = model(images)
        step = objective.backward(output, labels, torch.zeros(3, dtype=torch.int64), 0, NO_SCALING)
    assert step.extras is None
    expected = torch.autograd.grad(CrossEntropy(aux_weight=0.4)(model(images), labels).total, list(model.parameters()))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), expected, strict=True))


def test_the_mgda_objective_steps_along_the_min_norm_combination():
    torch.manual_seed(0)
    model, images = TwoHeads(), torch.randn(3, 3, 5, 6)
    _, _, labels = batch()
    ids = torch.tensor([0, 1, 1])
    params = list(model.parameters())
    loss = CrossEntropy(aux_weight=0.4)
    objective = MGDAObjective(loss, params, num_datasets=2, normalization="none", same_passes=False)
    with objective.step_context(model):
        step = objective.backward(model(images), labels, ids, 0, NO_SCALING)
    output = model(images)
    losses = loss.per_dataset(output, labels, ids, loss(output, labels))
    grads = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[d], params, retain_graph=True)]).double()
        for d in (0, 1)
    ]
    stacked = torch.stack(grads)
    weights, _ = min_norm_weights((stacked @ stacked.T).numpy())
    assert step.extras.dtype == torch.float64 and step.extras.tolist() == pytest.approx(weights.tolist())
    assert step.extras.sum().item() == pytest.approx(1.0) and step.extras.min() >= 0
    combined = torch.cat([p.grad.reshape(-1) for p in params]).double()
    assert torch.allclose(combined, torch.as_tensor(weights) @ stacked, rtol=1e-5, atol=1e-9)
    assert step.ce.loss.item() == pytest.approx(loss(output, labels).loss.item())


def test_the_ccsa_objective_mixes_the_alignment_loss_of_the_steps_own_pairs():
    model = tiny_hrnet(5).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 33, 33, generator=generator)
    labels = torch.randint(0, 5, (4, 33, 33), generator=generator)
    ids = torch.tensor([0, 0, 1, 1])
    settings = CCSAConfig(weight=0.25, positive_pairs=20)
    objective = CCSAObjective(CrossEntropy(), EmbeddingTap(model, "hrnet"), settings, seed=3, rank=1)
    with objective.step_context(model):
        output = model(images)
        model.zero_grad(set_to_none=True)
        step = objective.backward(output, labels, ids, 7, NO_SCALING)
    got = [p.grad for p in model.parameters()]

    tap = EmbeddingTap(model, "hrnet")
    with tap.capture():
        output = model(images)
    draws = torch.Generator().manual_seed(step_seed(3, 7, 1, CCSA_STREAM))
    term, pairs = ccsa_loss(tap.take(), labels, ids, positives=20, negative_ratio=3, margin=1.0, generator=draws)
    ce = CrossEntropy()(output, labels)
    assert pairs.positives == 20 and step.extras.tolist() == [pytest.approx(term.item())]
    assert step.ce.loss.item() == pytest.approx(ce.loss.item())
    expected = torch.autograd.grad(0.25 * term + 0.75 * ce.total, list(model.parameters()), allow_unused=True)
    for p, a, b in zip(model.parameters(), got, expected, strict=True):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-5, atol=1e-8)), p.shape


def prepared(config) -> list[PreparedDataset]:
    return [PreparedDataset(d, Path("/"), [], None) for d in config.datasets]


def test_the_config_picks_the_objective_and_its_log_columns():
    model = tiny_hrnet(5).train()
    log: list[str] = []
    _, plain = load_train_config("camvid11")
    objective = build_objective(plain, prepared(plain), model, CPU, log.append)
    assert isinstance(objective, CrossEntropyObjective)
    assert (objective.loss.aux_weight, objective.loss.class_weights, objective.loss.sampler) == (0.4, None, None)
    assert objective_columns(plain, ["camvid-11"]) == [] and objective_summary(plain, 1) == ""

    _, ohem = load_train_config("camvid11", ["loss.ohem.thresh=0.7", "optim.aux_weight=0.3"])
    objective = build_objective(ohem, prepared(ohem), model, CPU, log.append)
    assert (objective.loss.aux_weight, objective.loss.sampler) == (0.3, HardPixelSampler(0.7, 0.1))
    assert "at most 0.7" in objective_summary(ohem, 1)

    _, mgda = load_train_config("1080_release/mseg-mgda", ["optim.mgda_normalization=l2"])
    objective = build_objective(mgda, prepared(mgda), model, CPU, log.append)
    assert isinstance(objective, MGDAObjective)
    assert (objective.num_datasets, objective.normalization, objective.same_passes) == (7, "l2", False)
    assert objective.params == [p for p in model.parameters() if p.requires_grad]
    names = [d.name for d in mgda.datasets]
    assert objective_columns(mgda, names) == [f"mgda_weight/{n}" for n in names]
    assert objective_summary(mgda, 7).startswith("\nMGDA: ")

    _, ccsa = load_train_config("1080_release/mseg-ccsa", ["seed=5"])
    objective = build_objective(ccsa, prepared(ccsa), model, CPU, log.append)
    assert isinstance(objective, CCSAObjective)
    assert (objective.settings, objective.seed, objective.rank) == (ccsa.loss.ccsa, 5, 0)
    assert objective_columns(ccsa, names) == ["ccsa_loss"] and objective_summary(ccsa, 7).startswith("\nCCSA: ")
    objective.tap.remove()
    assert log == []  # only class weighting logs (its weights)


def test_step_seeds_are_a_function_of_the_step_alone():
    assert step_seed(0, 5, 1) == step_seed(0, 5, 1)
    seeds = {step_seed(0, 5, 1), step_seed(0, 6, 1), step_seed(0, 5, 0), step_seed(1, 5, 1), step_seed(0, 5, 1, 7)}
    assert len(seeds) == 5
