"""How much each client update counts: weights from data size, quality, or both.

All functions return float64 arrays of non-negative weights, one per client, not yet
normalised (the reducers normalise).

Quality is a number a client reports about its trained model on its own held-out
validation split. It becomes a *score* in ``[0, 1]``, higher is better:

- ``kind="accuracy"`` (or any score where higher is better and 1 is perfect):
  ``score = clip(value, 0, 1)``.
- ``kind="loss"`` (any non-negative loss, lower is better):
  ``score = 1 / (1 + loss)``: loss 0 gives 1, loss 1 gives 0.5, loss 9 gives 0.1.
  This keeps the order of the losses, is bounded, and needs no knowledge of the loss's
  typical range (unlike ``exp(-loss)``, which all but zeroes a loss of 10).

The weight is then ``max(score, floor)``: the floor (default 0.01) keeps a valid client
whose model is poor (accuracy 0 after its first local epoch, say) from getting weight 0
and silently dropping out; set ``floor=0`` to allow that on purpose.

Size x quality (``num_examples * max(score, floor)``) counts examples, discounted by how
well the client's model does on its own validation data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "num_examples_weights",
    "quality_scores",
    "quality_weights",
    "size_quality_weights",
    "DEFAULT_QUALITY_FLOOR",
]

DEFAULT_QUALITY_FLOOR = 0.01


def _as_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(vector).all():
        raise ValueError(f"{name} must be finite; received {vector.tolist()}.")
    return vector


def num_examples_weights(num_examples: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weights proportional to each client's number of training examples (FedAvg's ``n_k``)."""
    weights = _as_vector(num_examples, "num_examples")
    if (weights < 0).any():
        raise ValueError(f"num_examples must be >= 0; received {weights.tolist()}.")
    return weights


def quality_scores(values: Sequence[float] | np.ndarray, kind: str = "accuracy") -> np.ndarray:
    """Map reported quality values to scores in ``[0, 1]`` (see the module docstring)."""
    vector = _as_vector(values, "quality values")
    if kind == "accuracy":
        return np.clip(vector, 0.0, 1.0)
    if kind == "loss":
        if (vector < 0).any():
            raise ValueError(f"A loss used as quality must be >= 0; received {vector.tolist()}.")
        return 1.0 / (1.0 + vector)
    raise ValueError(f"quality kind must be 'accuracy' or 'loss'; received kind={kind!r}.")


def quality_weights(
    values: Sequence[float] | np.ndarray,
    kind: str = "accuracy",
    floor: float = DEFAULT_QUALITY_FLOOR,
) -> np.ndarray:
    """``max(score, floor)`` per client; ``floor`` in ``[0, 1]``."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1]; received floor={floor}.")
    return np.maximum(quality_scores(values, kind), floor)


def size_quality_weights(
    num_examples: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    kind: str = "accuracy",
    floor: float = DEFAULT_QUALITY_FLOOR,
) -> np.ndarray:
    """``num_examples * max(score, floor)`` per client."""
    return num_examples_weights(num_examples) * quality_weights(values, kind, floor)
