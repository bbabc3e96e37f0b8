"""How much each client update counts: weights from data size, quality, or both, and
the weighting stage :class:`WeightBy` that sets them in a pipeline.

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

**Server quality** (``weight_by="server_quality"``, ``"num_examples*server_quality"``).
A client's reported quality is a claim: an attacker reports ``quality=1.0`` and gains up
to ``1 / floor`` times a poor client's weight (the cap, :mod:`weight_cap`, bounds it at
a multiple of the round's median, no lower). Under server quality the *server* scores
each update on data it holds (a validation split of its test data in simulation, its
own file in a deployment) and the client's ``quality`` metric is never read. The score
goes through the same ``kind`` mapping, ``floor`` and cap as a reported quality. The
scorer is injected: ``score(updates) -> (K,) values`` over the round's ``K`` updates
(each a list of weight arrays, clipping applied), so this module stays pure numpy; the
experiment builds one from the server's Keras model
(:func:`fedloom.experiment.server_validation.keras_quality_scorer`). A score that is not
finite (a model whose loss overflows) counts as score 0, i.e. the floor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedloom.aggregation.round_state import ClientUpdate, RoundState
from fedloom.aggregation.stages import Stage
from fedloom.aggregation.weight_cap import cap_weights
from fedloom.errors import ConfigError

__all__ = [
    "WeightBy",
    "WEIGHT_BY_CHOICES",
    "is_number",
    "num_examples_weights",
    "quality_scores",
    "quality_weights",
    "size_quality_weights",
    "DEFAULT_QUALITY_FLOOR",
    "QualityScorer",
    "server_quality_weights",
    "CLIENT_QUALITY_CHOICES",
    "SERVER_QUALITY_CHOICES",
]

DEFAULT_QUALITY_FLOOR = 0.01

#: ``score(updates) -> values``: one quality value per update (``updates``: ``K`` lists of
#: weight arrays in the global model's order; values: ``(K,)``, of the weighting's
#: ``quality_kind``), computed by the server on data it holds.
QualityScorer = Callable[[Sequence[Sequence[np.ndarray]]], np.ndarray]


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


def server_quality_weights(
    updates: Sequence[Sequence[np.ndarray]],
    scorer: QualityScorer,
    kind: str = "accuracy",
    floor: float = DEFAULT_QUALITY_FLOOR,
) -> np.ndarray:
    """``max(score, floor)`` per update, the score computed by the server's ``scorer``.

    Args:
        updates: ``K`` updates, each a list of weight arrays.
        scorer: ``score(updates) -> (K,)`` quality values of ``kind``.
        kind, floor: as in :func:`quality_weights`.

    Returns:
        ``(K,)`` float64 weights in ``[floor, 1]``; a non-finite value scores 0 (the floor).

    Raises:
        ValueError: the scorer returned another number of values than ``K``.
    """
    if not updates:
        return np.zeros(0)
    values = np.asarray(scorer(updates), dtype=np.float64).reshape(-1)
    if values.shape != (len(updates),):
        raise ValueError(
            f"the server quality scorer must return one value per update; it returned "
            f"{values.size} values for {len(updates)} updates.")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1]; received floor={floor}.")
    finite = np.isfinite(values)
    scores = np.where(finite, quality_scores(np.where(finite, values, 0.0), kind), 0.0)
    return np.maximum(scores, floor)


def is_number(value: object) -> bool:
    """A finite int or float (not a bool): what a metric must be to be used."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


# --------------------------------------------------------------------------- the stage
WEIGHT_BY_CHOICES = ("uniform", "num_examples", "quality", "num_examples*quality",
                     "server_quality", "num_examples*server_quality")
#: the choices that read a quality the client reports about itself
CLIENT_QUALITY_CHOICES = ("quality", "num_examples*quality")
#: the choices that score each update on the server's data (need a ``scorer``)
SERVER_QUALITY_CHOICES = ("server_quality", "num_examples*server_quality")


class WeightBy(Stage):
    """The weighting stage: set each update's coefficient.

    Args:
        by: ``"uniform"`` (every update counts the same), ``"num_examples"`` (FedAvg),
            ``"quality"`` (the client-reported ``quality_key`` metric),
            ``"num_examples*quality"``, ``"server_quality"`` (the server's ``scorer``
            scores each update; the client's quality metric is not read; see the
            module docstring), ``"num_examples*server_quality"``, or a callable
            ``f(ClientUpdate) -> float >= 0``.
        quality_key: metric name holding the quality value (default ``"quality"``).
        quality_kind: ``"accuracy"`` (higher is better, in [0, 1]) or ``"loss"``
            (lower is better, mapped to ``1 / (1 + loss)``); see the module docstring.
            Under server quality: what the ``scorer`` returns.
        floor: minimum quality weight in ``[0, 1]`` so a valid client never gets 0.
        cap: ``None`` (trust every reported weight) or a multiple ``>= 1``: each
            weight is capped at ``cap`` times the round's median positive weight
            (:func:`~fedloom.aggregation.weight_cap.cap_weights`), so a client
            reporting ``num_examples=1e9`` or ``quality=1.0`` weighs at most ``cap``
            times a typical client. The robust hybrids and the quality weightings of
            :mod:`fedloom.strategies.methods` turn it on (3) by default.
        scorer: with a server-quality ``by``, ``score(updates) -> (K,) values``
            (:data:`QualityScorer`), called once per round on the updates that reach
            this stage (clipping applied; group means after ``Bucket``). ``None`` is
            allowed at construction (a strategy built before the server's data is
            loaded) and refused when a round is weighted.

    Under a client-reported quality, updates missing the quality metric are rejected
    with reason ``missing_metric`` (so that weighting *may reject*). Reads only what
    the clients reported (never the weights nor the global model), except under server
    quality, which reads the weights; no state of its own (a stateful scorer keeps and
    checkpoints its own).
    """

    kind = "weighting"

    def __init__(
        self,
        by: str | Callable[[ClientUpdate], float] = "num_examples",
        *,
        quality_key: str = "quality",
        quality_kind: str = "accuracy",
        floor: float = DEFAULT_QUALITY_FLOOR,
        cap: float | None = None,
        scorer: QualityScorer | None = None,
    ) -> None:
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap >= 1):
            raise ConfigError(
                f"weight cap must be a multiple >= 1 of the round's median weight, or None "
                f"(no cap); got cap={cap!r}.")
        if not callable(by) and by not in WEIGHT_BY_CHOICES:
            raise ConfigError(
                f"weight_by must be one of {WEIGHT_BY_CHOICES} or a callable; got {by!r}."
            )
        if quality_kind not in ("accuracy", "loss"):
            raise ConfigError(f"quality_kind must be 'accuracy' or 'loss'; got {quality_kind!r}.")
        if not 0.0 <= floor <= 1.0:
            raise ConfigError(f"quality floor must be in [0, 1]; got floor={floor}.")
        self.by = by
        self.quality_key = quality_key
        self.quality_kind = quality_kind
        self.floor = floor
        self.cap = None if cap is None else float(cap)
        if scorer is not None and not callable(scorer):
            raise ConfigError(f"the server quality scorer must be callable, score(updates) -> "
                              f"values; got {scorer!r}.")
        self.scorer = scorer

    @property
    def may_reject(self) -> bool:  # type: ignore[override]
        """A quality weighting leaves out updates without the quality metric."""
        return self.by in CLIENT_QUALITY_CHOICES

    @property
    def dp_sensitivity_preserving(self) -> bool:  # type: ignore[override]
        """Only a uniform weighting keeps each client's share of the mean at ``1/m``."""
        return self.by == "uniform"

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        if self.may_reject:
            has = [is_number(u.metrics.get(self.quality_key)) for u in state.updates]
            details = [f"metric {self.quality_key!r} missing or not a finite number"] * len(has)
            state.keep(has, "missing_metric", details)
        updates = state.updates
        sizes = [u.num_examples for u in updates]
        if callable(self.by):
            weights = np.array([float(self.by(u)) for u in updates], dtype=np.float64)
            if not (np.isfinite(weights).all() and (weights >= 0).all()):
                raise ConfigError(
                    f"weight_by callable must return finite values >= 0; got {weights.tolist()}."
                )
        elif self.by == "uniform":
            weights = np.ones(len(updates))
        elif self.by == "num_examples":
            weights = num_examples_weights(sizes)
        elif self.by in SERVER_QUALITY_CHOICES:
            weights = self._server_quality(state)
            if self.by == "num_examples*server_quality":
                weights = num_examples_weights(sizes) * weights
        else:
            quality = [float(u.metrics[self.quality_key]) for u in updates]
            if self.by == "quality":
                weights = quality_weights(quality, self.quality_kind, self.floor)
            else:
                weights = size_quality_weights(sizes, quality, self.quality_kind, self.floor)
        if self.cap is not None:
            weights = cap_weights(weights, self.cap)
        state.coefficients = weights
        return None

    def _server_quality(self, state: RoundState) -> np.ndarray:
        if self.scorer is None:
            raise ConfigError(
                f"weight_by={self.by!r} needs the server's quality scorer, score(updates) -> "
                "values, and none was given. fedloom's experiments build it from a validation "
                "split of the server's test data; a strategy built by hand takes "
                "quality_scorer=... (see fedloom.experiment.server_validation).")
        state.require_finite()  # NaN/Inf updates are left out before the scorer sees them
        return server_quality_weights(state.effective_updates(), self.scorer,
                                      self.quality_kind, self.floor)
