"""The min-norm point of a convex hull of gradients: MGDA's common descent direction (Sener & Koltun, NeurIPS 2018).

Given task gradients g_1..g_n, MGDA steps along ``u = sum_i c_i g_i`` with ``c`` the point of the simplex
(``c_i >= 0``, ``sum c_i = 1``) that minimises ``|u|^2``. Then ``<g_i, u> >= |u|^2`` for every task (the optimality
condition of the problem), so to first order no task's loss increases; ``u = 0`` means the point is Pareto-stationary.

Everything here works on the Gram matrix ``G_ij = <g_i, g_j>`` (n x n, float64), never on the gradients themselves:
the training loop builds it however the gradients are spread over processes (:mod:`mseg_semantic.training.mgda`).

- :func:`min_norm_2`: the exact answer for two vectors (the paper's Algorithm 1);
- :func:`project_to_simplex`: Euclidean projection onto the simplex;
- :func:`min_norm_weights`: any n; two tasks exactly, more by projected gradient descent with an exact line search
  started from uniform weights (what MSeg's ``min_norm_solvers_new.find_min_norm_element`` runs) or by the paper's
  Frank-Wolfe iteration (Algorithm 2) started from the best pair;
- :func:`normalized_gram`: the original's gradient normalisations (``none``, ``l2``, ``loss``, ``loss+``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The original's limits: at most 250 iterations, stop once the weights move less than 1e-5 (L1).
MAX_ITERS = 250
TOLERANCE = 1e-5
METHODS = ("projected_gradient", "frank_wolfe")
NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def min_norm_2(g11: float, g12: float, g22: float) -> tuple[float, float]:
    """``(gamma, |u|^2)`` minimising ``|gamma x1 + (1 - gamma) x2|^2`` over ``gamma`` in [0, 1], exactly.

    Takes the inner products ``<x1, x1>``, ``<x1, x2>``, ``<x2, x2>``. (The original returns 0.999 and 0.001
    instead of 1 and 0 at the ends; here the ends are exact.)
    """
    if g12 >= g11:  # x1 is the nearest point of the segment to the origin
        return 1.0, float(g11)
    if g12 >= g22:
        return 0.0, float(g22)
    gamma = (g22 - g12) / (g11 + g22 - 2.0 * g12)  # > 0: both conditions above failed, so the segment has length
    return float(gamma), float(g22 + gamma * (g12 - g22))


def project_to_simplex(y: Sequence[float] | np.ndarray) -> np.ndarray:
    """The point of the simplex ``{z : z_i >= 0, sum z_i = 1}`` nearest to ``y`` (Euclidean), float64."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"expected a non-empty vector, got shape {y.shape}")
    ordered = np.sort(y)[::-1]
    excess = np.cumsum(ordered) - 1.0
    steps = np.arange(1, y.size + 1)
    # The largest k whose k-th largest value stays positive after the shift that makes the top k sum to 1.
    k = int(np.nonzero(ordered - excess / steps > 0)[0][-1])
    return np.maximum(y - excess[k] / (k + 1), 0.0)


def min_norm_weights(
    gram: np.ndarray | Sequence[Sequence[float]],
    *,
    method: str = "projected_gradient",
    max_iters: int = MAX_ITERS,
    tolerance: float = TOLERANCE,
) -> tuple[np.ndarray, float]:
    """``(c, |u|^2)``: simplex weights minimising ``|sum_i c_i g_i|^2`` given ``gram[i, j] = <g_i, g_j>``.

    One task: ``[1]``. Two tasks: exact (:func:`min_norm_2`). More: ``method`` ``"projected_gradient"``
    (the MSeg release: start from uniform weights, step along the projected negative gradient to the simplex's
    edge, project, exact line search between the two points) or ``"frank_wolfe"`` (the paper: start from the
    best pair, move towards the vertex of the smallest ``(G c)_i`` with an exact line search); both stop when the
    weights move less than ``tolerance`` (L1) or after ``max_iters`` steps, returning the last weights either way
    (the original returned None there, and the training step crashed).
    """
    gram = np.asarray(gram, dtype=np.float64)
    n = gram.shape[0]
    if gram.shape != (n, n) or n == 0:
        raise ValueError(f"expected a square, non-empty Gram matrix, got shape {gram.shape}")
    if not np.isfinite(gram).all():
        raise ValueError("the Gram matrix has non-finite entries (a gradient overflowed?)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if n == 1:
        return np.ones(1), float(gram[0, 0])
    if n == 2:
        gamma, cost = min_norm_2(gram[0, 0], gram[0, 1], gram[1, 1])
        return np.array([gamma, 1.0 - gamma]), cost
    weights = _best_pair(gram) if method == "frank_wolfe" else np.full(n, 1.0 / n)
    for _ in range(max_iters):
        if method == "frank_wolfe":
            target = np.zeros(n)
            target[int(np.argmin(gram @ weights))] = 1.0
        else:
            target = _projected_gradient_point(weights, -(gram @ weights))
        gamma, _ = min_norm_2(weights @ gram @ weights, weights @ gram @ target, target @ gram @ target)
        new = gamma * weights + (1.0 - gamma) * target
        moved = float(np.abs(new - weights).sum())
        weights = new
        if moved < tolerance:
            break
    weights = np.maximum(weights, 0.0)
    weights /= weights.sum()
    return weights, float(weights @ gram @ weights)


def _best_pair(gram: np.ndarray) -> np.ndarray:
    """The weights of the best two-task solution (Frank-Wolfe's start)."""
    n = gram.shape[0]
    best, weights = np.inf, np.full(n, 1.0 / n)
    for i in range(n):
        for j in range(i + 1, n):
            gamma, cost = min_norm_2(gram[i, i], gram[i, j], gram[j, j])
            if cost < best:
                best, weights = cost, np.zeros(n)
                weights[i], weights[j] = gamma, 1.0 - gamma
    return weights


def _projected_gradient_point(weights: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Step from ``weights`` along ``direction`` made to sum to 0, as far as the first coordinate reaching 0 or 1
    (or 1 unit when none does), projected back onto the simplex."""
    step_dir = direction - direction.mean()
    limits = []
    down, up = step_dir < 0, step_dir > 0
    limits += list(-weights[down] / step_dir[down])
    limits += list((1.0 - weights[up]) / step_dir[up])
    usable = [t for t in limits if t > 1e-7]
    step = min(usable) if usable else 1.0
    return project_to_simplex(weights + step * step_dir)


def normalized_gram(gram: np.ndarray, losses: Sequence[float] | np.ndarray, normalization: str) -> np.ndarray:
    """The Gram matrix of the gradients divided by the original's normalisers, ``G_ij / (n_i n_j)``.

    ``none``: n = 1 (the MSeg release); ``l2``: the gradient's norm; ``loss``: the task's loss; ``loss+``: the loss
    times the norm (the default of Sener & Koltun's experiments). A normaliser of 0 (a task with a zero gradient or
    loss) is taken as 1, where the original divided by zero. The weights solved on the normalised matrix are then
    applied to the raw gradients, as the original does; only ``none`` guarantees that no task's loss increases to
    first order.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    losses = np.asarray(losses, dtype=np.float64)
    scale = {"none": np.ones_like(norms), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    scale = np.where(scale > 0, scale, 1.0)
    return gram / np.outer(scale, scale)


__all__ = ["METHODS", "NORMALIZATIONS", "min_norm_2", "min_norm_weights", "normalized_gram", "project_to_simplex"]
