"""Geometric median by smoothed Weiszfeld iterations (Robust Federated Aggregation).

Pillutla, Kakade, Harchaoui 2022, "Robust Aggregation for Federated Learning", IEEE
Transactions on Signal Processing 70, https://arxiv.org/abs/1912.13445 (Algorithm 3).

The geometric median ``z`` minimises ``sum_k alpha_k ||z - w_k||`` (L2 norm over the
whole update, all arrays together; ``alpha_k`` the normalised weights). Unlike the
coordinate-wise median it is rotation invariant, and it has breakdown point 1/2: fewer
than half the total weight cannot move it arbitrarily far. Smoothed Weiszfeld::

    z <- weighted mean of the updates (alpha)
    repeat:  beta_k = alpha_k / max(nu, ||z - w_k||);  z <- sum_k beta_k w_k / sum_k beta_k

``nu > 0`` (the smoothing) keeps a weight finite when ``z`` lands on an update. The
loop stops after ``max_iterations`` or once the objective changes by less than
``ftol`` times its value (the stopping rule of the authors' code).

Streaming: each iteration is one blocked pass for the ``K`` distances and one streamed
weighted mean (:mod:`~fedloom.aggregation.mean`), so extra memory stays near one model
whatever ``K``. The iterate is kept in the updates' dtypes (float32 for float32 models:
the median is then found to float32 precision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fedloom.aggregation.checks import check_same_structure, normalise_weights
from fedloom.aggregation.mean import squared_distances, weighted_mean

__all__ = ["GeometricMedianResult", "geometric_median"]


class GeometricMedianResult(NamedTuple):
    """``median``: new arrays in the updates' shapes and dtypes; ``iterations``: Weiszfeld
    steps taken; ``objective``: ``sum_k alpha_k ||median - w_k||`` with normalised
    ``alpha``; ``coefficients``: each update's share of the median (``(K,)``, sum 1)."""

    median: list[np.ndarray]
    iterations: int
    objective: float
    coefficients: np.ndarray


def geometric_median(
    updates: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    max_iterations: int = 100,
    ftol: float = 1e-10,
    nu: float = 1e-6,
) -> GeometricMedianResult:
    """Smoothed Weiszfeld geometric median of ``K`` client updates.

    Args:
        updates: ``K`` updates, each a list of arrays (finite values).
        weights: ``K`` non-negative weights ``alpha`` (uniform when ``None``).
        max_iterations: Weiszfeld steps at most (>= 1). RFA reports 3-4 suffice in
            practice; the default runs to ``ftol``.
        ftol: stop when the objective changes by less than ``ftol`` times its value.
        nu: smoothing, in the updates' units of L2 distance (> 0).
    """
    check_same_structure(updates)
    if isinstance(max_iterations, bool) or max_iterations < 1 or not nu > 0 or not ftol >= 0:
        raise ValueError(
            f"geometric_median needs max_iterations >= 1, nu > 0 and ftol >= 0; received "
            f"max_iterations={max_iterations}, nu={nu}, ftol={ftol}.")
    num_updates = len(updates)
    alpha = np.full(num_updates, 1.0 / num_updates) if weights is None else normalise_weights(weights, num_updates)
    coefficients = alpha
    median = weighted_mean(updates, alpha)
    distances = np.sqrt(squared_distances(updates, median))
    objective = float(alpha @ distances)
    iterations = 0
    while iterations < max_iterations:
        beta = alpha / np.maximum(distances, nu)
        coefficients = beta / beta.sum()
        median = weighted_mean(updates, coefficients)
        distances = np.sqrt(squared_distances(updates, median))
        iterations += 1
        previous, objective = objective, float(alpha @ distances)
        if abs(previous - objective) <= ftol * objective:
            break
    return GeometricMedianResult(median, iterations, objective, coefficients)
