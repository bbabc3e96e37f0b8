"""Bulyan: Krum picks a set, a trimmed coordinate-wise rule averages it.

El Mhamdi, Guerraoui, Rouault 2018, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018, https://arxiv.org/abs/1802.07927.

With ``n`` updates of which up to ``f`` are Byzantine (``n >= 4f + 3``):

1. Selection: ``theta = n - 2f`` times, run Krum on the updates not yet selected and move
   its pick into the selection set (Krum's score: the sum of squared distances to the
   ``m - f - 2`` nearest others among the ``m`` remaining; at least 1 neighbour, as
   Flower's ``aggregate_bulyan`` does when ``m - f - 2 < 1``). Equal scores go to the
   update with the smaller sum of distances to all remaining ones, so the client order
   does not matter. Flower keeps the first in its list instead; the two agree whenever
   no scores tie, which is certain for ``f >= 3`` (at least 2 neighbours) and not for
   ``f <= 2``, where a mutually nearest pair ties once 1 neighbour is left.
   ``selection="multi_krum"`` instead keeps the ``n - 2f`` updates with the lowest Krum
   scores computed once over all ``n`` (ties to the earlier update): what Flower's
   Message-API ``Bulyan`` does (its default ``select_multikrum``), while Flower's legacy
   ``aggregate_bulyan`` recurses as the paper does.
2. Aggregation: per coordinate, the mean of the ``beta = theta - 2f`` selected values
   closest to the selected values' median.

Streaming: the pairwise distances are computed once, in one blocked pass over every
update (:func:`~fedloom.aggregation.robust.pairwise_squared_distances`); the recursive
Krum then works on that ``(n, n)`` matrix alone. The coordinate-wise step runs block by
block over the ``theta`` selected updates. Extra memory: the matrix and one block buffer.
Every update counts the same (data size is ignored, as in the paper and in Flower).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.aggregation._blocks import reduce_blocks
from fedloom.aggregation.checks import check_same_structure
from fedloom.aggregation.robust import krum_scores, pairwise_squared_distances

__all__ = ["bulyan", "bulyan_aggregate", "bulyan_selection", "SELECTIONS"]

#: How Bulyan's first step selects: the paper's recursive Krum, or one Multi-Krum pass.
SELECTIONS = ("recursive", "multi_krum")


def bulyan_selection(distances: np.ndarray, num_byzantine: int,
                     selection: str = "recursive") -> np.ndarray:
    """Indices of the ``n - 2f`` updates Bulyan's first step selects, in pick order.

    Args:
        distances: ``(n, n)`` squared L2 distances between the updates.
        num_byzantine: ``f >= 0``.
        selection: ``"recursive"`` (the paper) or ``"multi_krum"`` (one pass, lowest
            scores first; Flower's Message-API ``Bulyan``).

    Raises:
        ValueError: if ``n < 4f + 3`` (the paper's condition) or an unknown selection.
    """
    num_updates = distances.shape[0]
    _check_enough(num_updates, num_byzantine)
    if selection not in SELECTIONS:
        raise ValueError(f"Bulyan selection must be one of {SELECTIONS}; received {selection!r}.")
    if selection == "multi_krum":
        scores = krum_scores(distances, num_byzantine)  # n >= 4f + 3: >= 1 neighbour
        return np.argsort(scores, kind="stable")[: num_updates - 2 * num_byzantine]
    distances = 0.5 * (distances + distances.T)  # exactly symmetric: ties are exact
    remaining = list(range(num_updates))
    selected = []
    for _ in range(num_updates - 2 * num_byzantine):
        sub = distances[np.ix_(remaining, remaining)]
        neighbours = max(1, len(remaining) - num_byzantine - 2)
        scores = np.sort(sub + np.diag(np.full(len(remaining), np.inf)), axis=1)[:, :neighbours].sum(axis=1)
        tied = np.flatnonzero(scores <= scores.min() * (1 + 1e-12))
        # Krum ties are common here: with one neighbour two mutual nearest updates always
        # tie. The update closer to all the remaining ones wins, whatever the client order
        # (Flower takes the first in its list, so it depends on the order).
        pick = remaining[int(tied[np.argmin(sub[tied].sum(axis=1))])]
        selected.append(pick)
        remaining.remove(pick)
    return np.asarray(selected, dtype=np.int64)


def bulyan(updates: Sequence[Sequence[np.ndarray]], num_byzantine: int,
           selection: str = "recursive") -> list[np.ndarray]:
    """Bulyan's aggregate of ``n`` updates tolerating ``f = num_byzantine`` Byzantine ones.

    Args:
        updates: ``n`` client updates (each a list of arrays of one shape/dtype set).
        num_byzantine: ``f``; needs ``n >= 4f + 3``.
        selection: ``"recursive"`` or ``"multi_krum"`` (see :func:`bulyan_selection`).

    Returns:
        New arrays in the updates' shapes and dtypes.
    """
    check_same_structure(updates)
    _check_enough(len(updates), num_byzantine)
    selected = bulyan_selection(pairwise_squared_distances(updates), num_byzantine, selection)
    return bulyan_aggregate([updates[i] for i in selected], num_byzantine)


def bulyan_aggregate(chosen: Sequence[Sequence[np.ndarray]], num_byzantine: int) -> list[np.ndarray]:
    """Bulyan's second step on the ``theta = n - 2f`` selected updates: per coordinate,
    the mean of the ``theta - 2f`` values closest to their median (block by block).

    Args:
        chosen: the selected updates (:func:`bulyan_selection`), ``theta >= 2f + 3``.
        num_byzantine: ``f``.

    Returns:
        New arrays in the updates' shapes and dtypes.
    """
    check_same_structure(chosen)
    theta = len(chosen)
    beta = theta - 2 * num_byzantine
    if beta < 1:
        raise ValueError(f"Bulyan's second step with num_byzantine={num_byzantine} needs more than "
                         f"{2 * num_byzantine} selected updates; received {theta}.")
    middle = [(theta - 1) // 2, theta // 2]

    def closest_to_median_mean(block: np.ndarray) -> np.ndarray:
        ordered = np.sort(block, axis=0)
        median = 0.5 * (ordered[middle[0]] + ordered[middle[1]])
        nearest = np.argpartition(np.abs(block - median), beta - 1, axis=0)[:beta]
        return np.take_along_axis(block, nearest, axis=0).mean(axis=0)

    return reduce_blocks(chosen, closest_to_median_mean)


def _check_enough(num_updates: int, num_byzantine: int) -> None:
    if num_byzantine < 0 or num_updates < 4 * num_byzantine + 3:
        raise ValueError(
            f"Bulyan with num_byzantine={num_byzantine} needs at least "
            f"{4 * max(num_byzantine, 0) + 3} client updates (n >= 4f + 3); received "
            f"{num_updates}. Lower num_byzantine or sample more clients."
        )
