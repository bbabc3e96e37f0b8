"""Checks and orderings of a local update's inputs (pure numpy, no TensorFlow).

:func:`check_examples` validates and casts one split for a model, the
``check_*`` functions validate the round's settings, :func:`shuffle_order` draws the
visiting order of a local update, :func:`local_steps` counts its SGD steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.errors import ConfigError, DataError

__all__ = [
    "ExampleSpec",
    "check_examples",
    "check_hyperparameters",
    "check_proximal_mu",
    "local_steps",
    "positive_int",
    "shuffle_order",
]


@dataclass(frozen=True)
class ExampleSpec:
    """What a model takes: ``input_shape`` of one example, ``input_dtype`` (float32,
    or int32 for token ids), labels in ``[0, num_classes)``; ``model_name`` for errors."""

    model_name: str
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    num_classes: int


def check_examples(
    x: np.ndarray, y: np.ndarray, spec: ExampleSpec, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` cast to ``spec.input_dtype`` and int32 labels ``(N,)``.

    Raises:
        DataError: saying what is wrong (shape, dtype, label range, no examples)
            and how to fix it; ``what`` names the split.
    """
    x = np.asarray(x)
    if spec.input_dtype.kind == "i" and x.dtype.kind not in "iu":
        if x.size and not np.all(np.mod(x, 1) == 0):
            raise DataError(
                f"{what}: model {spec.model_name!r} takes integer inputs (token ids); "
                f"received non-integer values of dtype {x.dtype}.")
    x = x.astype(spec.input_dtype, copy=False)
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if x.shape[1:] != spec.input_shape:
        raise DataError(
            f"{what}: model {spec.model_name!r} expects examples of shape "
            f"{spec.input_shape}; received x with shape {x.shape}. Reshape the data "
            f"to (num_examples, *{spec.input_shape})."
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{what}: expected integer labels of shape ({len(x)},) for x of shape "
            f"{x.shape}; received y with shape {y.shape}. One-hot labels must be "
            "converted with argmax(axis=1)."
        )
    if len(x) == 0:
        raise DataError(f"{what}: received no examples (x has shape {x.shape}).")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{what}: labels must be integers; received dtype {y.dtype}.")
    y = y.astype(np.int32, copy=False)
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= spec.num_classes:
        raise DataError(
            f"{what}: labels must lie in [0, {spec.num_classes - 1}] for a "
            f"{spec.num_classes}-class model; received labels in [{low}, {high}]."
        )
    return x, y


def shuffle_order(num_examples: int, epochs: int, seed: int) -> np.ndarray:
    """The example order of a local update: ``epochs`` permutations, concatenated.

    Row ``e`` of ``order.reshape(epochs, num_examples)`` is the visiting order of
    epoch ``e``; batch ``b`` of that epoch is ``row[b * batch_size:(b + 1) *
    batch_size]``. Drawn with ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(int(seed))
    ordered = np.tile(np.arange(num_examples, dtype=np.int32), (epochs, 1))
    return rng.permuted(ordered, axis=1).ravel()


def local_steps(num_examples: int, epochs: int, batch_size: int) -> int:
    """SGD steps of one local update: ``epochs * ceil(num_examples / batch_size)``."""
    return int(epochs) * math.ceil(int(num_examples) / int(batch_size))


def positive_int(name: str, value: Any) -> int:
    try:
        as_int = int(value)
        ok = as_int == value and as_int >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a positive integer; received {name}={value!r}.")
    return as_int


def check_hyperparameters(
    epochs: Any, batch_size: Any, learning_rate: Any
) -> tuple[int, int, float]:
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    try:
        lr = float(learning_rate)
    except (TypeError, ValueError):
        lr = float("nan")
    if not (lr > 0 and np.isfinite(lr)):
        raise ConfigError(
            f"learning_rate must be a positive finite number; received {learning_rate!r}."
        )
    return epochs, batch_size, lr


def check_proximal_mu(value: Any) -> float:
    try:
        mu = float(value)
    except (TypeError, ValueError):
        mu = float("nan")
    if not (mu >= 0 and np.isfinite(mu)):
        raise ConfigError(
            f"proximal-mu must be a finite number >= 0 (0: no proximal term); received {value!r}."
        )
    return mu
