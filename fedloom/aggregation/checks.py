"""Input checks shared by every aggregation rule.

Two kinds of checks live here:

- :func:`check_update` judges one client update against the global model and raises
  :class:`~fedloom.errors.UpdateRejected` with a short ``reason`` tag. Strategies catch
  it, leave the update out of the round and log the reason.
- :func:`check_same_structure` and :func:`normalise_weights` guard the pure reducers
  against programming errors (a caller passing mismatched lists) with a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.errors import UpdateRejected

__all__ = [
    "check_update",
    "check_finite",
    "check_same_structure",
    "normalise_weights",
    "REASONS",
]

#: Every reason tag a rejected update can carry, with what it means.
REASONS = {
    "client_error": "the client replied with an error (crash, timeout, lost connection)",
    "disconnected": "the node was unavailable or lost its connection (an error reply from the engine)",
    "no_reply": "no reply arrived within the round timeout (slow or vanished client)",
    "malformed": "the reply does not carry exactly one model and one metrics record",
    "wrong_num_arrays": "the update has a different number of arrays than the model",
    "shape_mismatch": "an array's shape differs from the model's",
    "dtype_mismatch": "an array's dtype differs from the model's",
    "non_finite": "the update contains NaN or Inf",
    "bad_num_examples": "num_examples is missing, negative, NaN or Inf",
    "missing_metric": "the metric the weighting needs was not reported",
    "norm_outlier": "the update's distance from the model is far above the round's median",
    "absurd_norm": "the update moved absurdly far (by default over 1000x the round's median norm)",
    "krum": "not among the updates Krum selected",
    "bulyan": "not among the updates Bulyan's Krum selection kept",
    "zero_update": ("the update is the global model unchanged (norm 0 as DP clipping computes it), "
                    "which Flower's clipping would divide by; screened before DP wrappers only"),
}


def check_update(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> None:
    """Check that ``update`` has the structure of ``reference`` (the global model).

    Cheap: reads shapes and dtypes only. Finiteness is checked by :func:`check_finite`.

    Raises:
        UpdateRejected: with reason ``wrong_num_arrays``, ``shape_mismatch`` or
            ``dtype_mismatch``.
    """
    if len(update) != len(reference):
        raise UpdateRejected(
            "wrong_num_arrays",
            f"expected {len(reference)} arrays (the model's), received {len(update)}",
        )
    for index, (array, like) in enumerate(zip(update, reference)):
        if array.shape != like.shape:
            raise UpdateRejected(
                "shape_mismatch",
                f"array {index}: expected shape {like.shape}, received {array.shape}",
            )
        if array.dtype != like.dtype:
            raise UpdateRejected(
                "dtype_mismatch",
                f"array {index}: expected dtype {like.dtype}, received {array.dtype}",
            )


def check_finite(update: Sequence[np.ndarray]) -> None:
    """Raise ``UpdateRejected("non_finite", ...)`` if any value is NaN or +-Inf."""
    for index, array in enumerate(update):
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise UpdateRejected(
                "non_finite", f"array {index} has {bad} NaN/Inf values of {array.size}"
            )


def check_same_structure(updates: Sequence[Sequence[np.ndarray]]) -> None:
    """Raise ``ValueError`` unless all updates share the first one's shapes and dtypes."""
    if len(updates) == 0:
        raise ValueError("Expected at least one client update; received none.")
    reference = updates[0]
    for k, update in enumerate(updates[1:], start=1):
        try:
            check_update(update, reference)
        except UpdateRejected as err:
            raise ValueError(
                f"Client updates must share one structure: update {k} vs update 0: {err}. "
                "Validate updates (fedloom.aggregation.check_update) before reducing."
            ) from None


def normalise_weights(weights: Sequence[float] | np.ndarray, num_updates: int) -> np.ndarray:
    """Return float64 weights that sum to 1.

    The weights are divided by their largest value before they are summed, so any finite
    weights normalise correctly: two clients reporting ``num_examples=1.7e308`` would
    make the plain sum overflow to Inf and every coefficient ``w / Inf = 0``.

    Raises:
        ValueError: wrong length, a negative/NaN/Inf weight, or no positive weight. A
            pipeline stage turns the last case into a skipped round with its reason.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != num_updates:
        raise ValueError(f"Expected {num_updates} weights (one per update); received {w.size}.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"Weights must be finite and >= 0; received {w.tolist()}.")
    largest = w.max() if w.size else 0.0
    if not largest > 0:
        raise ValueError(
            "Weights sum to 0, so no update would count. Give at least one update a "
            "positive weight (e.g. a floor for quality weights)."
        )
    scaled = w / largest  # in [0, 1], at least one 1: the sum is in [1, K], never Inf
    return scaled / scaled.sum()
