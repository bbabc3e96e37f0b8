"""Reducer stages: turn the kept updates into one model.

:class:`Mean` (FedAvg's weighted mean), :class:`CoordinateMedian`, :class:`TrimmedMean`
(Yin et al. 2018), :class:`CenteredClip` (Karimireddy et al. 2021, whose last step
is its state), :class:`Bulyan` (El Mhamdi et al. 2018) and :class:`GeometricMedian`
(Pillutla et al. 2022). See :mod:`fedloom.aggregation.stages` for the stage protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedloom.aggregation.bulyan import SELECTIONS, bulyan_aggregate, bulyan_selection
from fedloom.aggregation.checks import normalise_weights
from fedloom.aggregation.geometric_median import geometric_median
from fedloom.aggregation.mean import squared_distances, weighted_mean
from fedloom.aggregation.robust import (
    centered_clip,
    coordinate_median,
    pairwise_squared_distances,
    trimmed_mean,
)
from fedloom.aggregation.round_state import RoundState
from fedloom.aggregation.stages import Stage
from fedloom.errors import ConfigError, InsufficientUpdates

__all__ = ["Mean", "CoordinateMedian", "TrimmedMean", "CenteredClip", "Bulyan", "GeometricMedian"]


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


class Bulyan(Stage):
    """Bulyan (El Mhamdi, Guerraoui, Rouault 2018, https://arxiv.org/abs/1802.07927):
    Krum selects ``n - 2f`` updates, then per coordinate the mean of the ``n - 4f``
    selected values closest to their median (:func:`~fedloom.aggregation.bulyan.bulyan`).

    Args:
        num_byzantine: ``f``, the Byzantine updates to tolerate among those that reach
            this stage (after any filter or bucketing: with buckets, bad groups).
        selection: ``"recursive"`` (the paper's; Flower's legacy ``Bulyan``) or
            ``"multi_krum"`` (one Multi-Krum pass, as Flower's Message-API ``Bulyan``).

    Needs ``n >= 4f + 3`` updates: with fewer the round is skipped
    (:class:`~fedloom.errors.InsufficientUpdates`, saying how many were needed). The
    updates the selection leaves out are rejected with reason ``bulyan`` (so the round's
    clients and averaged metrics are the selected ones, as in Flower). Every
    update counts the same (data size is ignored, as in the paper and in Flower), so a
    client's reported ``num_examples`` cannot buy it influence. No state.
    """

    kind = "reducer"
    may_reject = True  # NaN/Inf updates

    def __init__(self, num_byzantine: int = 1, *, selection: str = "recursive") -> None:
        if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int) or num_byzantine < 0:
            raise ConfigError(f"Bulyan needs an integer num_byzantine >= 0; got {num_byzantine!r}.")
        if selection not in SELECTIONS:
            raise ConfigError(f"Bulyan selection must be one of {SELECTIONS}; got {selection!r}.")
        self.num_byzantine = num_byzantine
        self.selection = selection

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        state.require_finite()
        needed = 4 * self.num_byzantine + 3
        if len(state.updates) < needed:
            raise InsufficientUpdates(
                f"round {state.server_round}: Bulyan with num_byzantine={self.num_byzantine} "
                f"needs at least {needed} valid updates (n >= 4f + 3); {len(state.updates)} "
                "reached it. Lower num_byzantine, use fewer/smaller buckets or sample more clients.")
        updates = state.effective_updates()
        selected = bulyan_selection(pairwise_squared_distances(updates), self.num_byzantine,
                                    self.selection)
        mask = np.zeros(len(updates), dtype=bool)
        mask[selected] = True
        state.keep(mask, "bulyan", [f"not among the {len(selected)} updates Bulyan's "
                                    f"{self.selection} Krum selected"] * len(updates))
        state.aggregate = bulyan_aggregate([updates[i] for i in selected], self.num_byzantine)
        return None


class GeometricMedian(Stage):
    """Weighted geometric median by smoothed Weiszfeld iterations (RFA: Pillutla, Kakade,
    Harchaoui 2022, https://arxiv.org/abs/1912.13445;
    :func:`~fedloom.aggregation.geometric_median.geometric_median`).

    Minimises ``sum_k c_k ||z - u_k||`` with the weighting stage's coefficients ``c_k``
    (uniform without one): less than half of the total weight cannot move it
    arbitrarily far, so the weights must be ones an attacker cannot inflate
    (``WeightBy(..., cap=...)``). Under non-IID data, bucketing first (``Bucket(2)``)
    keeps honest clients' differences from reading as attacks (Karimireddy, He, Jaggi
    2022, https://arxiv.org/abs/2006.09365).

    Args:
        max_iterations: Weiszfeld steps at most (>= 1).
        ftol: stop once the objective changes by less than this fraction of itself.
        nu: smoothing, in L2 distance units (> 0).

    No state.
    """

    kind = "reducer"
    may_reject = True  # NaN/Inf updates
    uses_weights = True

    def __init__(self, max_iterations: int = 100, *, ftol: float = 1e-10, nu: float = 1e-6) -> None:
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1 \
                or not nu > 0 or not ftol >= 0:
            raise ConfigError(
                f"GeometricMedian needs an integer max_iterations >= 1, nu > 0 and ftol >= 0; got "
                f"max_iterations={max_iterations!r}, nu={nu}, ftol={ftol}.")
        self.max_iterations = max_iterations
        self.ftol = ftol
        self.nu = nu

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        state.require_finite()
        weights = _require_positive_weight(state)
        state.aggregate = geometric_median(
            state.effective_updates(), weights, max_iterations=self.max_iterations,
            ftol=self.ftol, nu=self.nu).median
        return None
