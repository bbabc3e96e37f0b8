"""Robust reducers and update filters for hybrids facing faulty or malicious clients.

- Coordinate-wise median and trimmed mean: Yin, Chen, Ramchandran, Bartlett 2018,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
  https://arxiv.org/abs/1803.01498.
- Krum and Multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer 2017, "Machine Learning
  with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
- Centred clipping: Karimireddy, He, Jaggi 2021, "Learning from History for Byzantine
  Robust Optimization", ICML 2021, https://arxiv.org/abs/2012.10333.
- Norm clipping of the update (client weights minus global weights), as in DP-FedAvg
  (McMahan, Ramage, Talwar, Zhang 2018, https://arxiv.org/abs/1710.06963) and as a
  defence against scaled updates (Sun et al. 2019, https://arxiv.org/abs/1911.07963).

All of them stream over the model in blocks (see ``_blocks``): extra memory is about
``num_clients * 16k`` values, not ``num_clients * model``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.aggregation._blocks import cast_like, flat_views, iter_blocks, reduce_blocks
from fedloom.aggregation.checks import check_same_structure, normalise_weights
from fedloom.aggregation.mean import squared_distances, weighted_mean

__all__ = [
    "coordinate_median",
    "trimmed_mean",
    "num_trimmed",
    "pairwise_squared_distances",
    "krum_scores",
    "multi_krum",
    "update_norms",
    "clip_to_norm",
    "centered_clip",
]


def coordinate_median(updates: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Coordinate-wise median of the updates (the mean of the two middle values for even K).

    Every client counts the same: the median ignores data size by design. Values must be
    finite (strategies drop NaN/Inf updates before any reducer).
    """
    check_same_structure(updates)
    num_updates = len(updates)
    middle = [(num_updates - 1) // 2, num_updates // 2]  # the same row twice for odd K

    def median(block: np.ndarray) -> np.ndarray:
        block.sort(axis=0)  # in the reused buffer: no copy (np.median copies), and faster
        return 0.5 * (block[middle[0]] + block[middle[1]])

    return reduce_blocks(updates, median)


def num_trimmed(num_updates: int, beta: float) -> int:
    """How many values the trimmed mean drops at *each* end: ``floor(beta * K)``.

    Raises:
        ValueError: ``beta`` outside ``[0, 0.5)``.
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed mean needs 0 <= beta < 0.5; received beta={beta}.")
    return int(np.floor(beta * num_updates))  # beta < 0.5 always leaves >= 1 value


def trimmed_mean(
    updates: Sequence[Sequence[np.ndarray]],
    beta: float,
    weights: Sequence[float] | np.ndarray | None = None,
) -> list[np.ndarray]:
    """Coordinate-wise trimmed mean: per coordinate drop the ``floor(beta*K)`` smallest and
    largest values and average the rest.

    With ``weights``, the kept values are averaged with their clients' weights (the
    weighted variant used by the "robust then weighted" hybrid); without, uniformly, as
    in Yin et al. 2018. Weight-0 clients (``num_examples=0``) still take part in the
    trimming; at a coordinate where every kept value comes from a weight-0 client the
    kept values are averaged uniformly, so the result is never NaN.
    """
    check_same_structure(updates)
    num_updates = len(updates)
    trim = num_trimmed(num_updates, beta)
    w = None if weights is None else normalise_weights(weights, num_updates)

    def trimmed(block: np.ndarray) -> np.ndarray:
        if w is None:
            block.sort(axis=0)
            return block[trim : num_updates - trim].mean(axis=0)
        order = np.argsort(block, axis=0)[trim : num_updates - trim]
        kept_weights = w[order]
        kept = np.take_along_axis(block, order, axis=0)
        totals = kept_weights.sum(axis=0)
        sums = (kept * kept_weights).sum(axis=0)
        unweighted = totals <= 0  # every kept value came from a weight-0 client
        if unweighted.any():
            sums[unweighted] = kept[:, unweighted].mean(axis=0)
            totals[unweighted] = 1.0
        return sums / totals

    return reduce_blocks(updates, trimmed)


def pairwise_squared_distances(updates: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """``(K, K)`` float64 matrix of squared L2 distances between whole updates.

    Built from per-block Gram matrices of block-centred values (centring changes no
    distance and keeps the ``|a|^2 + |b|^2 - 2ab`` form from cancelling badly).
    """
    check_same_structure(updates)
    num_updates = len(updates)
    gram = np.zeros((num_updates, num_updates))
    for index in range(len(updates[0])):
        for _, _, block in iter_blocks(flat_views(updates, index)):
            block -= block.mean(axis=0)
            gram += block @ block.T
    sq_norms = np.diag(gram)
    distances = sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram
    np.fill_diagonal(distances, 0.0)
    return np.maximum(distances, 0.0)


def krum_scores(distances: np.ndarray, num_byzantine: int) -> np.ndarray:
    """Krum score per update: sum of squared distances to its ``K - f - 2`` nearest others.

    Args:
        distances: ``(K, K)`` squared distances (:func:`pairwise_squared_distances`).
        num_byzantine: ``f``, the number of malicious updates to tolerate.

    Raises:
        ValueError: if ``K - f - 2 < 1`` (Blanchard et al. need ``K > 2f + 2`` for their
            guarantee; fedloom requires at least one neighbour to score).
    """
    num_updates = distances.shape[0]
    neighbours = num_updates - num_byzantine - 2
    if num_byzantine < 0 or neighbours < 1:
        raise ValueError(
            f"Krum with num_byzantine={num_byzantine} needs at least "
            f"{num_byzantine + 3} client updates; received {num_updates}. "
            "Lower num_byzantine or sample more clients."
        )
    nearest = np.sort(distances + np.diag(np.full(num_updates, np.inf)), axis=1)
    return nearest[:, :neighbours].sum(axis=1)


def multi_krum(
    updates: Sequence[Sequence[np.ndarray]], num_byzantine: int, num_selected: int = 1
) -> np.ndarray:
    """Indices of the ``num_selected`` updates with the lowest Krum scores (sorted by score).

    ``num_selected=1`` is Krum; more is Multi-Krum, whose selected updates are then
    averaged (by whatever weighting follows).
    """
    check_same_structure(updates)
    if not 1 <= num_selected <= len(updates):
        raise ValueError(
            f"Multi-Krum num_selected must be in 1..{len(updates)} (the updates received); "
            f"received num_selected={num_selected}."
        )
    scores = krum_scores(pairwise_squared_distances(updates), num_byzantine)
    return np.argsort(scores, kind="stable")[:num_selected]


def update_norms(
    updates: Sequence[Sequence[np.ndarray]], reference: Sequence[np.ndarray]
) -> np.ndarray:
    """L2 norm of ``update - reference`` over all arrays, per update (float64, ``(K,)``).

    NaN or Inf in an update gives a non-finite norm.
    """
    return np.sqrt(squared_distances(updates, reference))


def clip_to_norm(
    update: Sequence[np.ndarray], reference: Sequence[np.ndarray], max_norm: float
) -> list[np.ndarray]:
    """Scale ``update - reference`` down to L2 norm ``max_norm`` if it is longer.

    Returns ``reference + min(1, max_norm / ||update - reference||) * (update - reference)``
    as new arrays in the update's dtypes (the inputs are returned as they are when no
    clipping is needed).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0; received max_norm={max_norm}.")
    norm = float(update_norms([update], reference)[0])
    if norm <= max_norm:
        return list(update)
    scale = max_norm / norm
    return [
        cast_like(ref + scale * (np.asarray(arr, dtype=np.float64) - ref), arr)
        for arr, ref in zip(update, reference)
    ]


def centered_clip(
    updates: Sequence[Sequence[np.ndarray]],
    center: Sequence[np.ndarray],
    radius: float,
    weights: Sequence[float] | np.ndarray | None = None,
    iterations: int = 3,
    *,
    distances: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Centred clipping (Karimireddy, He, Jaggi 2021, "Learning from History for
    Byzantine Robust Optimization", https://arxiv.org/abs/2012.10333).

    Starting from ``center``, ``iterations`` times: ``c <- c + sum_k w_k clip(u_k - c,
    radius)``, where ``clip`` scales a vector down to L2 norm ``radius`` (the whole
    update, all arrays together). An update farther than ``radius`` from the centre
    moves it by at most ``w_k * radius``, however far it is.

    Each iteration is one pass for the distances and one weighted mean of the updates
    and ``c`` (so no clipped copy is made); ``distances``, the updates' L2 distances from
    ``center`` when the caller has them, saves the first pass. Returns arrays in the
    updates' dtypes.
    """
    check_same_structure(updates)
    if not radius > 0 or iterations < 1:
        raise ValueError(f"centered_clip needs radius > 0 and iterations >= 1; received "
                         f"radius={radius}, iterations={iterations}.")
    num_updates = len(updates)
    w = np.full(num_updates, 1.0 / num_updates) if weights is None else normalise_weights(weights, num_updates)
    for iteration in range(iterations):
        if distances is None or iteration > 0:
            distances = np.sqrt(squared_distances(updates, center))
        pull = w * np.minimum(1.0, radius / np.maximum(distances, 1e-300))
        center = weighted_mean([*updates, center], np.append(pull, max(0.0, 1.0 - pull.sum())))
    return list(center)
