"""Weighted and unweighted means of client model weights.

This is the aggregation of FedAvg (McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", https://arxiv.org/abs/1602.05629):
``sum_k w_k * x_k / sum_k w_k``, computed per array.

How, and why this way. The mean streams over blocks of 65,536 coordinates: each
client's block is scaled and added into a small accumulator that stays in cache, so
every client array is read once from memory and the extra memory is a few hundred KiB
per thread, whatever the number of clients. Blocks run on several threads.

float32 updates are accumulated in float32 within groups of ``GROUP`` = 16 clients and
the group sums are added in float64 (a two-level, pairwise-like scheme: the rounding
error grows with 16, not with the number of clients). Other dtypes accumulate in
float64. It was chosen over float64 accumulation of stacked blocks for speed at the same
accuracy; ``benchmarks/aggregation.py`` measures it against Flower's float32 running sum
(time, extra memory, error against a float64 reference).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from fedloom.aggregation._blocks import STREAM_BLOCK, cast_like, flat_views, for_each_block
from fedloom.aggregation.checks import check_same_structure, normalise_weights

__all__ = ["weighted_mean", "weighted_mean_and_distances", "squared_distances", "unweighted_mean", "GROUP"]

GROUP = 16
_SCRATCH = threading.local()


def weighted_mean(
    updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | np.ndarray
) -> list[np.ndarray]:
    """Weighted mean of client updates, array by array.

    Args:
        updates: ``K`` client updates; each a list of arrays with the same shapes and
            dtypes (one model's weights, e.g. Keras ``get_weights()`` order).
        weights: ``K`` non-negative finite weights, not all zero; they are normalised
            to sum to 1 (so scaling all weights changes nothing).

    Returns:
        A list of new arrays, one per model array, with the input shapes and dtypes.
        Integer arrays are rounded to the nearest integer.
    """
    return weighted_mean_and_distances(updates, weights)[0]


def weighted_mean_and_distances(
    updates: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | np.ndarray,
    reference: Sequence[np.ndarray] | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """:func:`weighted_mean`, plus each update's squared L2 distance from ``reference``
    (float64, ``(K,)``) computed in the same pass over the data when ``reference`` is
    given (else ``None``).

    One pass instead of two: a strategy that screens updates by their distance from the
    global model and then averages them reads every client array once (the blocks are
    still in cache for the second use).
    """
    check_same_structure(updates)
    coefficients = normalise_weights(weights, len(updates))
    outputs, jobs, partials = [], [], []
    for index, like in enumerate(updates[0]):
        flats = flat_views(updates, index)
        out = np.empty(like.size, dtype=like.dtype)
        base = None if reference is None else np.ravel(reference[index])
        partial = None
        if base is not None:
            partial = np.zeros((-(-like.size // STREAM_BLOCK), len(updates)))
            partials.append(partial)
        reducer = _float32_block_reducer if like.dtype == np.float32 else _float64_block_reducer
        jobs.append((like.size, reducer(flats, coefficients, out, base, partial)))
        outputs.append(out.reshape(like.shape))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf is the caller's to judge
        for_each_block(jobs)
    distances = None if reference is None else sum(p.sum(axis=0) for p in partials)
    return outputs, distances


def squared_distances(
    updates: Sequence[Sequence[np.ndarray]], reference: Sequence[np.ndarray]
) -> np.ndarray:
    """Squared L2 distance of each update from ``reference`` over all arrays (float64,
    ``(K,)``), streaming over blocks on the thread pool. NaN/Inf give a non-finite value."""
    partials, jobs = [], []
    for index, like in enumerate(reference):
        flats = flat_views(updates, index)
        partial = np.zeros((-(-like.size // STREAM_BLOCK), len(updates)))
        partials.append(partial)
        jobs.append((like.size, _distance_block(flats, np.ravel(like), partial)))
    with np.errstate(invalid="ignore", over="ignore"):
        for_each_block(jobs)
    return sum(p.sum(axis=0) for p in partials)


def _distance_block(flats, base, partial):
    dtype = np.float32 if base.dtype == np.float32 else np.float64

    def reduce_block(start: int, stop: int) -> None:
        difference = _scratch(f"diff_{np.dtype(dtype).name}", dtype)[: stop - start]
        row = partial[start // STREAM_BLOCK]
        for k, flat in enumerate(flats):
            np.subtract(flat[start:stop], base[start:stop], out=difference, casting="unsafe")
            row[k] = float(np.dot(difference, difference))

    return reduce_block


def _scratch(name: str, dtype: type) -> np.ndarray:
    """A per-thread reusable block buffer."""
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None:
        buffer = np.empty(STREAM_BLOCK, dtype=dtype)
        setattr(_SCRATCH, name, buffer)
    return buffer


def _float32_block_reducer(flats, coefficients, out, base=None, partial=None):
    weights32 = coefficients.astype(np.float32)

    def reduce_block(start: int, stop: int) -> None:
        size = stop - start
        group_sum, scaled = _scratch("f32_a", np.float32)[:size], _scratch("f32_b", np.float32)[:size]
        total = _scratch("f64_a", np.float64)[:size]
        total[...] = 0.0
        row = None if partial is None else partial[start // STREAM_BLOCK]
        for first in range(0, len(flats), GROUP):
            for k in range(first, min(first + GROUP, len(flats))):
                block = flats[k][start:stop]
                if row is not None:  # distance from the reference, while the block is in cache
                    np.subtract(block, base[start:stop], out=scaled)
                    row[k] = float(np.dot(scaled, scaled))
                if k == first:
                    np.multiply(block, weights32[k], out=group_sum)
                else:
                    np.multiply(block, weights32[k], out=scaled)
                    np.add(group_sum, scaled, out=group_sum)
            np.add(total, group_sum, out=total)
        out[start:stop] = total

    return reduce_block


def _float64_block_reducer(flats, coefficients, out, base=None, partial=None):
    def reduce_block(start: int, stop: int) -> None:
        size = stop - start
        total, scaled = _scratch("f64_a", np.float64)[:size], _scratch("f64_b", np.float64)[:size]
        total[...] = 0.0
        row = None if partial is None else partial[start // STREAM_BLOCK]
        for k, (flat, weight) in enumerate(zip(flats, coefficients)):
            if row is not None:
                np.subtract(flat[start:stop], base[start:stop], out=scaled, casting="unsafe")
                row[k] = float(np.dot(scaled, scaled))
            np.multiply(flat[start:stop], weight, out=scaled)
            np.add(total, scaled, out=total)
        out[start:stop] = cast_like(total, out)

    return reduce_block


def unweighted_mean(updates: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Plain mean: every client update counts the same, whatever its data size."""
    return weighted_mean(updates, np.ones(len(updates)))
