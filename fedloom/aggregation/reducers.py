"""Reducer stages: turn the kept updates into one model.

:class:`Mean` (FedAvg's weighted mean), :class:`CoordinateMedian`, :class:`TrimmedMean`
(Yin et al. 2018) and :class:`CenteredClip` (Karimireddy et al. 2021, whose last step
is its state). See :mod:`fedloom.aggregation.stages` for the stage protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedloom.aggregation.checks import normalise_weights
from fedloom.aggregation.mean import squared_distances, weighted_mean
from fedloom.aggregation.robust import centered_clip, coordinate_median, trimmed_mean
from fedloom.aggregation.round_state import RoundState
from fedloom.aggregation.stages import Stage
from fedloom.errors import ConfigError, InsufficientUpdates

__all__ = ["Mean", "CoordinateMedian", "TrimmedMean", "CenteredClip"]


def _require_positive_weight(state: RoundState) -> np.ndarray:
    coefficients = state.coefficients
    if coefficients is None:
        return np.ones(len(state.updates))
    if not (coefficients > 0).any():  # not the sum: huge weights would overflow it
        raise InsufficientUpdates(
            f"round {state.server_round}: all {len(coefficients)} valid updates have weight 0 "
            "(e.g. every client reported num_examples=0), so there is nothing to average."
        )
    return coefficients


class Mean(Stage):
    """Weighted mean of the updates with the coefficients (uniform if none were set).

    Clipping scales ``s_k`` are folded in exactly: with normalised coefficients ``c_k``,
    ``sum_k c_k (g + s_k (u_k - g)) = sum_k c_k s_k u_k + (1 - sum_k c_k s_k) g``
    (the global model is read only when some update was clipped).

    NaN/Inf are found without an extra pass when nothing else has read the data: a
    non-finite update makes the mean non-finite, and only then is each update checked
    and the mean recomputed without the bad ones.
    """

    kind = "reducer"
    may_reject = True  # NaN/Inf updates
    uses_weights = True
    linear = True
    dp_sensitivity_preserving = True

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        while True:
            coefficients = _require_positive_weight(state)
            updates: list = [u.weights for u in state.updates]
            if state.scales is not None and (state.scales < 1.0).any():
                c = normalise_weights(coefficients, len(coefficients)) * state.scales
                updates.append(state.global_weights)
                coefficients = np.append(c, max(0.0, 1.0 - c.sum()))
            result = weighted_mean(updates, coefficients)
            if state.finite_checked or all(np.isfinite(a).all() for a in result):
                state.aggregate = result
                return None
            state.require_finite()
            if not state.updates:
                raise InsufficientUpdates(
                    f"round {state.server_round}: every update held NaN/Inf values."
                )


class CoordinateMedian(Stage):
    """Coordinate-wise median (Yin et al. 2018); every update counts the same."""

    kind = "reducer"
    may_reject = True  # NaN/Inf updates

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        state.require_finite()
        state.aggregate = coordinate_median(state.effective_updates())
        return None


class TrimmedMean(Stage):
    """Coordinate-wise trimmed mean dropping ``floor(beta*K)`` values at each end.

    ``weighted=True`` averages the kept values with the coefficients set by the
    weighting stage (the "robust then weighted" hybrid); ``False`` is Yin et al. 2018.
    """

    kind = "reducer"
    may_reject = True  # NaN/Inf updates

    def __init__(self, beta: float = 0.1, weighted: bool = False) -> None:
        if not 0.0 <= beta < 0.5:
            raise ConfigError(f"trimmed mean needs 0 <= beta < 0.5; got beta={beta}.")
        self.beta = beta
        self.weighted = weighted

    @property
    def uses_weights(self) -> bool:  # type: ignore[override]
        return bool(self.weighted)

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        state.require_finite()
        weights = _require_positive_weight(state) if self.weighted else None
        state.aggregate = trimmed_mean(state.effective_updates(), self.beta, weights)
        return None


class CenteredClip(Stage):
    """Centred clipping around where the model was heading (Karimireddy, He, Jaggi 2021,
    https://arxiv.org/abs/2012.10333).

    The centre is the global model plus the last round's aggregate step (with
    ``momentum > 0``, an exponential average of past steps; the global model itself in
    the first round). The radius is ``median_multiple`` times the round's median
    distance of the updates from the centre. Then :func:`~fedloom.aggregation.robust.
    centered_clip` runs ``iterations`` times with the coefficients as weights: an
    attacker moves the result by at most its weight times the radius, whichever way it
    pushes, while honest updates near the centre count in full. The step (float64
    arrays, one per model array) is this stage's state, ``{"step": [...]}`` or ``None``
    before the first round (saved by checkpoints). Needs the global model.
    """

    kind = "reducer"
    needs_global_model = True
    may_reject = True  # NaN/Inf updates
    uses_weights = True
    stateful = True
    weighted = True  # uses the weighting stage's coefficients (kept for older callers)

    def __init__(self, median_multiple: float = 1.0, iterations: int = 3, momentum: float = 0.0) -> None:
        if not median_multiple > 0 or isinstance(iterations, bool) or iterations < 1 or not 0 <= momentum < 1:
            raise ConfigError(
                f"CenteredClip needs median_multiple > 0, an integer iterations >= 1 and "
                f"momentum in [0, 1); got median_multiple={median_multiple}, "
                f"iterations={iterations}, momentum={momentum}.")
        self.median_multiple = median_multiple
        self.iterations = iterations
        self.momentum = momentum

    def init(self) -> dict[str, Any]:
        return {"step": None}

    def restore(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        step = saved.get("step")
        return {"step": None if step is None else [np.asarray(s, np.float64) for s in step]}

    def update(self, state: RoundState, stage_state: Any) -> dict[str, Any]:
        last = (stage_state or self.init())["step"]
        state.require_finite()
        weights = _require_positive_weight(state)
        updates = state.effective_updates()
        model = state.global_weights
        center = list(model)
        if last is not None:
            center = [(a + s).astype(a.dtype) for a, s in zip(map(np.asarray, model), last)]
        distances = np.sqrt(squared_distances(updates, center))
        radius = self.median_multiple * float(np.median(distances))
        aggregate = center if radius == 0 else centered_clip(
            updates, center, radius, weights, self.iterations, distances=distances)
        step = [np.asarray(a, np.float64) - b for a, b in zip(aggregate, model)]
        if last is not None and self.momentum > 0:
            step = [self.momentum * old + (1 - self.momentum) * new for old, new in zip(last, step)]
        state.aggregate = aggregate
        return {"step": step}
