"""The paper's training baselines: MGDA (min-norm solver, per-dataset gradients) and CCSA (contrastive alignment),
their configs, and short 2-process runs of both that resume to the bit and give checkpoints `mseg eval` reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HRNET, failure, run_mseg, tiny_hrnet
from safetensors.torch import load_file
from test_train_run import CITYSCAPES, MAPILLARY, read_log, remapped_dataset, write_list

from mseg_semantic.cli import main
from mseg_semantic.errors import InputError
from mseg_semantic.training import list_train_configs, load_train_config
from mseg_semantic.training.ccsa import EmbeddingTap, ccsa_loss, contrastive_alignment_loss, sample_pairs
from mseg_semantic.training.checkpoints import LAST_POINTER
from mseg_semantic.training.mgda import _local_gradients, mgda_gradients
from mseg_semantic.training.min_norm import min_norm_2, min_norm_weights, normalized_gram, project_to_simplex
from mseg_semantic.training.objectives import CrossEntropy


# ---------------------------------------------------------------------------------------------- min-norm solver
def gram_of(*vectors) -> np.ndarray:
    stacked = np.array(vectors, dtype=np.float64)
    return stacked @ stacked.T


@pytest.mark.parametrize(
    ("vectors", "weights", "norm"),
    [
        (([1, 0], [0, 1]), [0.5, 0.5], 0.5),  # orthogonal unit vectors: the midpoint
        (([1, 0], [-1, 0]), [0.5, 0.5], 0.0),  # opposite: the origin is in the hull (Pareto-stationary)
        (([1, 0], [2, 0]), [1.0, 0.0], 1.0),  # x1 is the nearest point of the segment: exactly 1, not 0.999
        (([2, 1], [1, 0]), [0.0, 1.0], 1.0),  # <x1, x2> >= <x2, x2>: x2 itself
        (([3, 0], [0, 1]), [0.1, 0.9], 0.9),  # gamma = (1 - 0) / (9 + 1 - 0)
        (([1, 1], [1, 1]), [1.0, 0.0], 2.0),  # identical gradients: any weights, this one exactly
    ],
)
def test_min_norm_two_tasks_is_exact(vectors, weights, norm):
    found, found_norm = min_norm_weights(gram_of(*vectors))
    assert found.tolist() == pytest.approx(weights, abs=1e-12)
    assert found_norm == pytest.approx(norm, abs=1e-12)
    gamma, cost = min_norm_2(*gram_of(*vectors)[[0, 0, 1], [0, 1, 1]])
    assert (gamma, cost) == pytest.approx((weights[0], norm), abs=1e-12)


@pytest.mark.parametrize(
    ("point", "projected"),
    [
        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]),  # on the simplex already
        ([2.0, 0.0], [1.0, 0.0]),
        ([0.5, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]),
        ([1.0, 0.5, -3.0], [0.75, 0.25, 0.0]),
        ([-1.0, -1.0], [0.5, 0.5]),
        ([5.0], [1.0]),
    ],
)
def test_projection_to_the_simplex(point, projected):
    assert project_to_simplex(point).tolist() == pytest.approx(projected, abs=1e-12)


def test_projection_is_the_nearest_point_of_the_simplex():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.normal(size=5) * 2
        z = project_to_simplex(y)
        assert z.min() >= 0 and z.sum() == pytest.approx(1.0)
        others = rng.dirichlet(np.ones(5), size=200)  # no other point of the simplex is nearer
        assert np.linalg.norm(y - z) <= np.linalg.norm(y - others, axis=1).min() + 1e-12


@pytest.mark.parametrize("method", ["projected_gradient", "frank_wolfe"])
def test_min_norm_known_cases_with_more_tasks(method):
    # Orthonormal vectors: uniform weights, |u|^2 = 1/n.
    weights, norm = min_norm_weights(np.eye(4), method=method)
    assert weights == pytest.approx(np.full(4, 0.25), abs=1e-4) and norm == pytest.approx(0.25, abs=1e-6)
    # A dominated vector gets no weight: the hull of (1,0), (0,1), (1,1) is nearest the origin at (1/2, 1/2).
    weights, norm = min_norm_weights(gram_of([1, 0], [0, 1], [1, 1]), method=method)
    assert weights == pytest.approx([0.5, 0.5, 0.0], abs=1e-4) and norm == pytest.approx(0.5, abs=1e-6)
    # Vectors 120 degrees apart: the origin, uniformly.
    angles = np.deg2rad([90, 210, 330])
    weights, norm = min_norm_weights(gram_of(*np.stack([np.cos(angles), np.sin(angles)], 1)), method=method)
    assert weights == pytest.approx(np.full(3, 1 / 3), abs=1e-4) and norm == pytest.approx(0.0, abs=1e-7)


def test_min_norm_direction_lowers_every_loss_where_the_mean_raises_one():
    gradients = np.array([[1.0, 0.0], [-1.5, 0.2], [0.1, 1.0]])  # the first two conflict
    mean = gradients.mean(axis=0)
    assert (gradients @ mean).min() < 0  # a step along -mean raises the first task's loss
    weights, _ = min_norm_weights(gradients @ gradients.T)
    u = weights @ gradients
    assert (gradients @ u).min() >= u @ u - 1e-9 and u @ u > 0


def test_min_norm_solution_is_optimal_for_random_gradients():
    """<g_i, u> >= |u|^2 for every task, with equality where the weight is positive (the optimality conditions);
    both methods reach the same point."""
    rng = np.random.default_rng(1)
    for trial in range(30):
        n = 3 + trial % 5
        vectors = rng.normal(size=(n, 12)) + rng.normal(size=12) * (trial % 3)  # some share a direction
        gram = vectors @ vectors.T
        weights, norm = min_norm_weights(gram)
        u = weights @ vectors
        assert weights.min() >= 0 and weights.sum() == pytest.approx(1.0)
        assert norm == pytest.approx(u @ u, rel=1e-9)
        slack = vectors @ u - u @ u
        assert slack.min() >= -1e-4 * max(u @ u, 1e-3)
        assert np.abs(slack[weights > 1e-3]).max() <= 1e-3 * max(u @ u, 1e-2)
        _, other_norm = min_norm_weights(gram, method="frank_wolfe", max_iters=5000, tolerance=1e-10)
        assert other_norm == pytest.approx(norm, rel=1e-3, abs=1e-6)


def test_gradient_normalizations():
    gram = gram_of([3, 0], [0, 1])
    losses = [2.0, 0.5]
    assert normalized_gram(gram, losses, "none") == pytest.approx(gram)
    # l2: unit vectors; two unit vectors always get equal weights.
    assert normalized_gram(gram, losses, "l2") == pytest.approx(np.eye(2))
    assert min_norm_weights(normalized_gram(gram, losses, "l2"))[0] == pytest.approx([0.5, 0.5])
    assert normalized_gram(gram, losses, "loss") == pytest.approx(np.array([[9 / 4, 0], [0, 4]]))
    assert normalized_gram(gram, losses, "loss+") == pytest.approx(np.array([[1 / 4, 0], [0, 4]]))
    # A zero gradient's normaliser counts as 1 (the original divided by zero).
    assert np.isfinite(normalized_gram(gram_of([0, 0], [0, 1]), [0.0, 1.0], "loss+")).all()
    with pytest.raises(ValueError, match="normalization must be one of none, l2, loss, loss"):
        normalized_gram(gram, losses, "l1")
    with pytest.raises(ValueError, match="non-finite"):
        min_norm_weights([[np.nan, 0], [0, 1]])


# ---------------------------------------------------------------------------------------------- MGDA on a network
def three_conflicting_datasets() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six 33x33 crops, two per "dataset": datasets 0 and 1 label the same images with opposite classes."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 33, 33, generator=generator)
    images[2:4] = images[0:2]
    labels = torch.zeros(6, 33, 33, dtype=torch.int64)
    labels[0:2] = (images[0:2, 0] > 0).long()
    labels[2:4] = 1 - labels[0:2]
    labels[4:6] = 2 + (images[4:6, 1] > 0).long()
    labels[4, :5] = 255  # some void pixels
    return images, labels, torch.tensor([0, 0, 1, 1, 2, 2])


def dataset_losses(model, images, labels, ids) -> dict[int, torch.Tensor]:
    logits = model(images)
    loss = CrossEntropy(aux_weight=0.4)
    return loss.per_dataset(logits, labels, ids, loss(logits, labels))


def test_mgda_step_does_not_increase_any_dataset_loss():
    torch.manual_seed(0)
    model = tiny_hrnet(5).train()
    images, labels, ids = three_conflicting_datasets()
    params = [p for p in model.parameters() if p.requires_grad]
    losses = dataset_losses(model, images, labels, ids)
    grads = []
    for d in range(3):
        parts = torch.autograd.grad(losses[d], params, retain_graph=True)
        grads.append(torch.cat([g.reshape(-1) for g in parts]).double())
    result = mgda_gradients(losses, params, 3)
    u = torch.cat([p.grad.reshape(-1) for p in params]).double()

    assert result.weights.min() >= 0 and result.weights.sum() == pytest.approx(1.0)
    assert result.losses == pytest.approx([losses[d].item() for d in range(3)])
    stacked = torch.stack(grads)
    assert result.gram == pytest.approx((stacked @ stacked.T).numpy(), rel=1e-5)
    assert torch.allclose(u, torch.as_tensor(result.weights) @ stacked, rtol=1e-5, atol=1e-9)
    # To first order, -lr * <g_d, u> is each loss's change: none is positive.
    directional = (stacked @ u).numpy()
    assert directional.min() >= (u @ u).item() * (1 - 1e-4)
    # And a small step along u lowers all three.
    with torch.no_grad():
        for p in params:
            p -= 1e-4 * p.grad
    after = dataset_losses(model, images, labels, ids)
    assert all(after[d].item() < losses[d].item() for d in range(3)), (after, losses)


def test_mgda_weights_match_the_solver_for_each_normalization():
    model = tiny_hrnet(5).train()
    images, labels, ids = three_conflicting_datasets()
    params = [p for p in model.parameters() if p.requires_grad]
    for normalization in ("none", "l2", "loss", "loss+"):
        result = mgda_gradients(dataset_losses(model, images, labels, ids), params, 3, normalization)
        expected, _ = min_norm_weights(normalized_gram(result.gram, result.losses, normalization))
        assert result.weights == pytest.approx(expected)
    # With SyncBatchNorm a process holding fewer datasets pads with passes of a zero loss: same gradients.
    losses = dataset_losses(model, images[:4], labels[:4], ids[:4])
    plain = _local_gradients(losses, params, passes=2)
    padded = _local_gradients(dataset_losses(model, images[:4], labels[:4], ids[:4]), params, passes=3)
    assert plain.keys() == padded.keys() == {0, 1}
    assert all(torch.equal(a, b) for d in plain for a, b in zip(plain[d], padded[d], strict=True))


# ---------------------------------------------------------------------------------------------- CCSA
def test_contrastive_loss_is_zero_when_aligned_and_positive_otherwise():
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0], [3.0, 0.0]])
    same = torch.tensor([True, True, False, False])
    aligned = a.clone()
    aligned[2] = torch.tensor([1.0, 0.0])  # different classes exactly the margin apart
    aligned[3] = torch.tensor([0.0, 0.0])  # and farther
    assert contrastive_alignment_loss(a, aligned, same, margin=1.0).item() == 0.0
    closer = aligned.clone()
    closer[2] = torch.tensor([0.5, 0.0])  # a negative pair inside the margin: (1 - 0.5)^2 / 4
    assert contrastive_alignment_loss(a, closer, same, margin=1.0).item() == pytest.approx(0.25 / 4)
    apart = aligned.clone()
    apart[0] = torch.tensor([0.0, 2.0])  # a positive pair apart: 2^2 / 4
    assert contrastive_alignment_loss(a, apart, same, margin=1.0).item() == pytest.approx(1.0)
    empty = torch.zeros(0, 2)
    assert contrastive_alignment_loss(empty, empty, torch.zeros(0, dtype=torch.bool)).item() == 0.0


def test_pairs_are_cross_domain_labelled_and_reproducible():
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (4, 6, 8), generator=generator)
    labels[1, :2] = 255
    domains = torch.tensor([0, 1, 1, 2])
    pairs = sample_pairs(labels, domains, 50, 3, torch.Generator().manual_seed(7))
    assert (len(pairs), pairs.positives) == (200, 50)
    assert pairs.same_class[:50].all() and not pairs.same_class[50:].any()
    first = labels[pairs.first[:, 0], pairs.first[:, 1], pairs.first[:, 2]]
    second = labels[pairs.second[:, 0], pairs.second[:, 1], pairs.second[:, 2]]
    assert torch.equal(first == second, pairs.same_class)
    assert (first != 255).all() and (second != 255).all()
    assert (domains[pairs.first[:, 0]] != domains[pairs.second[:, 0]]).all()
    again = sample_pairs(labels, domains, 50, 3, torch.Generator().manual_seed(7))
    assert torch.equal(again.first, pairs.first) and torch.equal(again.second, pairs.second)
    # One domain: no pairs, and a zero loss.
    alone = sample_pairs(labels, torch.zeros(4, dtype=torch.int64), 50, 3, torch.Generator().manual_seed(7))
    assert len(alone) == 0


def test_ccsa_loss_on_aligned_and_unaligned_embeddings():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (4, 32, 32), generator=generator)
    labels[0, :8] = 255
    domains = torch.tensor([0, 0, 1, 1])
    small = F.interpolate(labels[:, None].float(), size=(8, 8), mode="nearest")[:, 0].long()
    # One point per class, unit vectors scaled by 1 (sqrt(2) >= margin 1 apart): perfectly aligned.
    aligned = F.one_hot(small.clamp(max=3), 4).permute(0, 3, 1, 2).float()
    options = {"positives": 40, "negative_ratio": 3, "margin": 1.0}
    loss, pairs = ccsa_loss(aligned, labels, domains, generator=torch.Generator().manual_seed(1), **options)
    assert loss.item() == 0.0 and pairs.positives == 40 and len(pairs) == 160
    noisy = aligned + 0.1 * torch.randn(aligned.shape, generator=generator)
    loss, _ = ccsa_loss(noisy, labels, domains, generator=torch.Generator().manual_seed(1), **options)
    assert loss.item() > 0


@pytest.mark.parametrize(("arch", "channels", "stride"), [("hrnet", 120, 4), ("pspnet50", 2048, 8)])
def test_ccsa_reads_the_embedding_before_the_classifier(arch, channels, stride):
    """PSPNet: layer4's output, as the original; HRNet: the input of last_layer. The alignment loss reaches the
    backbone, not the classifier."""
    from mseg_semantic.models import build_model

    torch.manual_seed(0)
    model = tiny_hrnet(5).train() if arch == "hrnet" else build_model(arch, 5).train()
    tap = EmbeddingTap(model, model.arch)
    images = torch.randn(4, 3, 33, 33)
    labels = torch.randint(0, 5, (4, 33, 33))
    with tap.capture():
        model(images)
    features = tap.take()
    assert features.shape == (4, channels, -(-33 // stride), -(-33 // stride))
    loss, _ = ccsa_loss(
        features, labels, torch.tensor([0, 1, 0, 1]), positives=20, negative_ratio=3, margin=1.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    loss.backward()
    classifier = model.last_layer[-1] if arch == "hrnet" else model.cls[-1]
    assert classifier.weight.grad is None
    assert next(iter(model.parameters())).grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model(images)  # outside capture(): nothing kept
    with pytest.raises(RuntimeError, match="no embedding was captured"):
        tap.take()
    tap.remove()


# ---------------------------------------------------------------------------------------------- configs
MGDA, CCSA = "1080_release/mseg-mgda", "1080_release/mseg-ccsa"


def test_baseline_configs_give_the_papers_settings():
    _, mgda = load_train_config("1080_release/mseg-mgda")
    assert (mgda.optim.multi_objective, mgda.optim.mgda_normalization) == ("mgda", "none")
    assert (mgda.total_iters(), mgda.batch_size, mgda.num_classes, mgda.model.arch) == (200_000, 35, 194, "hrnet_w48")
    assert len(mgda.datasets) == 7 and mgda.dataset_layout == "per_rank" and mgda.loss.ccsa.weight == 0
    _, ccsa = load_train_config("1080_release/mseg-ccsa")
    options = ccsa.loss.ccsa
    assert (options.weight, options.margin, options.positive_pairs, options.negative_ratio) == (0.25, 1.0, 1000, 3)
    assert (ccsa.model.arch, ccsa.dataset_layout, ccsa.total_iters(), ccsa.optim.multi_objective) == (
        "pspnet50", "mixed", 200_000, "none",
    )  # fmt: skip
    # Every other shipped config trains as before: neither baseline is on.
    for name, _ in list_train_configs():
        if name in (MGDA, CCSA):
            continue
        extra = ["datasets=[camvid-11]", "taxonomy=own"] if "single" in name else []
        _, config = load_train_config(name, extra)
        assert (config.optim.multi_objective, config.loss.ccsa.weight) == ("none", 0.0), name


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        ("camvid11", "optim.multi_objective=mgda", r"key 'optim.multi_objective': MGDA treats each dataset as a task"),
        (MGDA, "optim.multi_objective=pcgrad", r"^--set: key 'optim.multi_objective': must be one of none, mgda"),
        (MGDA, "optim.mgda_normalization=l1", r"must be one of none, l2, loss, loss\+, got 'l1'$"),
        (MGDA, "precision=fp16", r"^--set: key 'precision': fp16 is not supported with optim.multi_objective mgda"),
        (CCSA, "loss.ccsa.weight=1.5", r"^--set: key 'loss.ccsa.weight': must lie in \[0, 1\], got 1.5$"),
        (CCSA, "loss.ccsa.margin=0", r"^--set: key 'loss.ccsa.margin': must be positive, got 0.0$"),
        (CCSA, "loss.ccsa.positive_pairs=0", r"^--set: key 'loss.ccsa.positive_pairs': must be at least 1, got 0$"),
        (CCSA, "loss.ccsa.wieght=0.5", r"^--set: key 'loss.ccsa.wieght': unknown key, did you mean 'weight'"),
        (CCSA, "dataset_layout=per_rank", r"^--set: key 'dataset_layout': loss.ccsa pairs crops of different datasets"),
        ("camvid11", "loss.ccsa.weight=0.25", r"key 'loss.ccsa.weight': CCSA aligns embeddings across datasets"),
        (CCSA, "optim.multi_objective=mgda", r"key 'loss.ccsa.weight': CCSA cannot be combined with optim.multi_objec"),
    ],
)
def test_bad_baseline_settings_are_named(name, override, message):
    with pytest.raises(InputError, match=message):
        load_train_config(name, [override])


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def camvid(camvid11: Path) -> Path:
    return camvid11


def torchrun_train(config: str, out: Path, overrides: list[str], *, resume: bool = False) -> str:
    args = ["train", config, "--out", str(out), "--max-iters", "4", "--quiet", *["--resume"] * resume]
    done = run_mseg(2, *args, "--set", *overrides, timeout=180)
    assert done.returncode == 0, failure(done)
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("config", [MGDA, CCSA])
def test_baseline_config_trains_on_two_processes_resumes_exactly_and_evaluates(config, camvid, tmp_path):
    datasets = []
    for name, names, count in (("cityscapes-19", CITYSCAPES, 3), ("mapillary-public65", MAPILLARY, 2)):
        (tmp_path / name).mkdir()
        train_list = remapped_dataset(camvid, tmp_path / name, name, names, count)
        datasets.append({"name": name, "root": "/", "train_list": str(train_list)})
    overrides = [
        f"datasets={json.dumps(datasets)}", "model.arch=hrnet", f"model.hrnet={json.dumps(TINY_HRNET)}",
        "batch_size=4", "transform.short_size=96", "transform.crop=[64,96]", "optim.base_lr=0.05", "device=cpu",
        "workers=0", "log_every=1", "checkpoint.every=2", "loss.ccsa.positive_pairs=50",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    stdout = torchrun_train(config, straight, overrides)
    assert "2 process(es) on cpu" in stdout
    assert ("MGDA:" in stdout) == ("mgda" in config) and ("CCSA:" in stdout) == ("ccsa" in config)
    rows = read_log(straight)
    assert [r["iter"] for r in rows] == ["1", "2", "3", "4"]
    if "mgda" in config:
        weights = np.array([[float(r[f"mgda_weight/{d['name']}"]) for d in datasets] for r in rows])
        assert weights.min() >= 0 and weights.sum(axis=1) == pytest.approx(np.ones(4))
    else:
        assert all(float(r["ccsa_loss"]) > 0 for r in rows)

    # A run killed after its checkpoint at iteration 2 and resumed ends with the same weights, bit for bit.
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    for leftover in ("checkpoints/iter_00000004.pth", "checkpoints/iter_00000004.safetensors", "model.safetensors"):
        (killed / leftover).unlink()
    (killed / "checkpoints" / LAST_POINTER).write_text("iter_00000002.pth\n")
    assert "resumed from" in torchrun_train(config, killed, overrides, resume=True)
    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected)
    timing = ("images_per_s", "data_wait_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_log(killed)] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows
    ]

    val_list = write_list(tmp_path / "val.txt", camvid, 2, offset=10)
    eval_args = ["eval", "--dataset", "camvid-11", "--data-root", str(camvid), "--list", str(val_list)]
    eval_args += ["--config", "360_ss", "--base-size", "96", "--crop-size", "97", "--quiet"]
    for model in (killed / "model.safetensors", killed / "checkpoints" / "iter_00000004.pth"):
        assert main([*eval_args, "--model", str(model), "--out", str(tmp_path / "eval" / model.suffix[1:])]) == 0
