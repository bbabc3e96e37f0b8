"""The small stages an aggregation pipeline is made of.

Each stage is a callable object that reads and changes a :class:`RoundState`. Kinds:

- ``"filter"``: leaves updates out or limits them (norm outliers, Krum, norm clipping);
- ``"weighting"``: sets one coefficient per update (:class:`WeightBy`);
- ``"reducer"``: turns the updates into one model (:class:`Mean`,
  :class:`CoordinateMedian`, :class:`TrimmedMean`);
- ``"server_step"``: moves the global model towards that aggregate (:class:`ServerStep`).

A :class:`~fedloom.aggregation.pipeline.Pipeline` chains them in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from fedloom.aggregation.mean import squared_distances, weighted_mean
from fedloom.aggregation.robust import centered_clip, coordinate_median, multi_krum, trimmed_mean
from fedloom.aggregation.round_state import ClientUpdate, RoundState
from fedloom.aggregation.server_step import server_update
from fedloom.aggregation.weight_cap import cap_weights
from fedloom.aggregation.weighting import (
    DEFAULT_QUALITY_FLOOR,
    num_examples_weights,
    quality_weights,
    size_quality_weights,
)
from fedloom.errors import ConfigError, InsufficientUpdates

__all__ = [
    "Stage",
    "RejectNormOutliers",
    "ClipNorm",
    "Bucket",
    "KrumSelect",
    "WeightBy",
    "Mean",
    "CoordinateMedian",
    "TrimmedMean",
    "CenteredClip",
    "ServerStep",
    "WEIGHT_BY_CHOICES",
]


class Stage:
    """Base class: a named step of a pipeline. Stateless unless it overrides ``state_dict``."""

    kind: ClassVar[str] = ""

    def __call__(self, state: RoundState) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What must be saved to resume this stage exactly (empty when stateless)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


# --------------------------------------------------------------------------- filters
class RejectNormOutliers(Stage):
    """Leave out updates that moved absurdly far from the global model.

    An update is rejected if ``||update - global|| > max_ratio * reference``, or above
    ``max_norm`` when given. Catches boosted, sign-flipped and noise updates; it runs
    before weighting so a rejected update cannot dominate a mean.

    ``reference`` is the median of the round's norms. With ``window > 1`` it is the
    median of the per-round medians of the last ``window`` rounds, this one included:
    in a round where attackers happen to be the majority of the sample their norms set
    the round's median, but not the median of several rounds (the history idea of
    Karimireddy, He, Jaggi 2021, https://arxiv.org/abs/2012.10333). The window's medians
    are this stage's state (saved by checkpoints). A round's median counts only with at
    least 3 updates (a median of 1 or 2 norms says nothing about outliers); with no
    median at all the ratio test is skipped.

    ``max_model_ratio`` adds a test that needs no other update: reject
    ``||update - global|| > max_model_ratio * max(||global||, 1)``, i.e. an update that
    moves the model by that many times its own size (the floor of 1 covers models that
    start at zero). ``reason`` is the tag rejected updates get (``"absurd_norm"`` for the
    strategies' sanity guard, see ``FedloomStrategy(absurd_norm_ratio=...)``).
    """

    kind = "filter"

    def __init__(self, max_ratio: float = 10.0, max_norm: float | None = None, *,
                 max_model_ratio: float | None = None, window: int = 1,
                 reason: str = "norm_outlier") -> None:
        if not max_ratio > 1.0:
            raise ConfigError(f"RejectNormOutliers needs max_ratio > 1; got max_ratio={max_ratio}.")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"RejectNormOutliers needs an integer window >= 1; got window={window!r}.")
        if max_norm is not None and not max_norm > 0:
            raise ConfigError(f"RejectNormOutliers needs max_norm > 0; got max_norm={max_norm}.")
        if max_model_ratio is not None and not max_model_ratio > 0:
            raise ConfigError(
                f"RejectNormOutliers needs max_model_ratio > 0; got max_model_ratio={max_model_ratio}.")
        self.max_ratio = max_ratio
        self.max_norm = max_norm
        self.max_model_ratio = max_model_ratio
        self.window = window
        self.reason = reason
        self._recent_medians: list[float] = []

    def __call__(self, state: RoundState) -> None:
        if not state.updates:
            return
        norms = state.delta_norms()
        medians = [float(np.median(norms))] if len(norms) > 2 else []
        if self.window > 1:
            self._recent_medians = medians = [*self._recent_medians, *medians][-self.window:]
        limit = self.max_ratio * float(np.median(medians)) if medians else np.inf
        if self.max_norm is not None:
            limit = min(limit, self.max_norm)
        if self.max_model_ratio is not None:
            size = float(np.sqrt(sum(float(np.dot(np.ravel(g), np.ravel(g)))
                                     for g in state.global_weights)))  # no float64 copy
            limit = min(limit, self.max_model_ratio * max(size, 1.0))
        details = [f"update norm {n:.4g} > limit {limit:.4g}" for n in norms]
        state.keep(norms <= limit, self.reason, details)

    def state_dict(self) -> dict[str, Any]:
        return {"recent_medians": list(self._recent_medians)} if self._recent_medians else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._recent_medians = [float(m) for m in state.get("recent_medians", [])]


class ClipNorm(Stage):
    """Clip each update's distance from the global model to an L2 bound.

    The clipped update is ``global + min(1, bound / ||u - global||) * (u - global)``, with
    ``bound`` = ``max_norm``, or ``median_multiple`` times the round's median distance
    (norm bounding against boosted updates, Sun et al. 2019,
    https://arxiv.org/abs/1911.07963), or the smaller of the two.
    Recorded as a per-update scale: :class:`Mean` folds it into its coefficients, so no
    clipped copy of any update is made; other reducers copy only clipped updates.
    """

    kind = "filter"

    def __init__(self, max_norm: float | None = None, *, median_multiple: float | None = None) -> None:
        if max_norm is None and median_multiple is None:
            raise ConfigError("ClipNorm needs max_norm or median_multiple; got neither.")
        for name, value in (("max_norm", max_norm), ("median_multiple", median_multiple)):
            if value is not None and not value > 0:
                raise ConfigError(f"ClipNorm needs {name} > 0; got {name}={value}.")
        self.max_norm = max_norm
        self.median_multiple = median_multiple

    def __call__(self, state: RoundState) -> None:
        if not state.updates:
            return
        norms = state.delta_norms()
        bound = np.inf if self.max_norm is None else self.max_norm
        if self.median_multiple is not None:
            bound = min(bound, self.median_multiple * float(np.median(norms)))
        scales = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
        state.scales = scales if state.scales is None else np.minimum(state.scales, scales)


class KrumSelect(Stage):
    """Keep the ``num_selected`` updates with the lowest Krum scores (Blanchard et al. 2017).

    ``num_selected=1`` is Krum. With more, the kept updates go on to the weighting and
    reducer: Multi-Krum followed by a mean, or by a weighted mean in a hybrid.
    ``num_selected=None`` keeps ``K - num_byzantine`` of the ``K`` updates (Multi-Krum's
    usual ``m = n - f``).

    ``count_rejected=True`` reads ``num_byzantine`` as the number of bad updates among
    those that *arrived* this round: each one the earlier stages already left out (a
    norm filter, NaN/Inf, wrong shapes) is taken as one of them, so Krum assumes
    ``max(0, num_byzantine - left_out)`` among what it sees. Without it, a norm filter
    that caught the attackers would leave Krum discarding ``num_byzantine`` honest
    updates on top. The price: an honest update wrongly left out by a filter lowers
    Krum's budget by one in that round.
    """

    kind = "filter"

    def __init__(self, num_byzantine: int, num_selected: int | None = 1, *,
                 count_rejected: bool = False) -> None:
        if num_byzantine < 0 or (num_selected is not None and num_selected < 1):
            raise ConfigError(
                f"KrumSelect needs num_byzantine >= 0 and num_selected >= 1; got "
                f"num_byzantine={num_byzantine}, num_selected={num_selected}."
            )
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected
        self.count_rejected = count_rejected

    def __call__(self, state: RoundState) -> None:
        state.require_finite()
        num_updates = len(state.updates)
        num_byzantine = self.num_byzantine
        if self.count_rejected:
            num_byzantine = max(0, num_byzantine - (state.num_received - num_updates))
        num_selected = self.num_selected or max(1, num_updates - num_byzantine)
        needed = max(num_byzantine + 3, num_selected)
        if num_updates < needed:
            raise InsufficientUpdates(
                f"Krum with num_byzantine={num_byzantine}, num_selected="
                f"{num_selected} needs at least {needed} valid updates; round "
                f"{state.server_round} has {num_updates}. Lower num_byzantine or "
                "sample more clients."
            )
        selected = multi_krum(state.effective_updates(), num_byzantine, num_selected)
        mask = np.zeros(len(state.updates), dtype=bool)
        mask[selected] = True
        state.keep(mask, "krum", ["Krum score not among the lowest"] * len(mask))


class Bucket(Stage):
    """Average random groups of ``size`` updates, so the robust rule sees group means.

    Bucketing (Karimireddy, He, Jaggi 2022, https://arxiv.org/abs/2006.09365): robust
    rules assume honest updates are alike, which non-IID clients are not; the mean of
    ``size`` random updates varies ``sqrt(size)`` times less, while one bad update
    still spoils at most one group. The last group is smaller when ``size`` does not
    divide the number of updates. Each group's mean is weighted by ``num_examples`` and
    carries their sum and the same-weighted mean of its members' numeric metrics, so a
    later ``WeightBy`` weighs groups by data size or quality. Groups are drawn from
    ``seed`` and the round number (no state). Rejecting a group later rejects each of
    its members, and the round's ``used`` clients are the members of the kept groups.

    From here on a group counts as one update: ``state.num_received`` becomes the
    updates left out before plus the groups, so a later ``KrumSelect(count_rejected=
    True)`` reads ``num_byzantine`` as bad groups (at most one per attacker).
    """

    kind = "filter"

    def __init__(self, size: int = 2, *, seed: int = 0) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"Bucket needs an integer size >= 1; got size={size!r}.")
        self.size = size
        self.seed = seed

    def __call__(self, state: RoundState) -> None:
        if self.size == 1 or len(state.updates) < 2:
            return
        state.require_finite()
        updates = state.effective_updates()
        order = np.random.default_rng([self.seed, state.server_round]).permutation(len(updates))
        groups = [order[i:i + self.size] for i in range(0, len(order), self.size)]
        buckets = []
        for group in groups:
            members = [m for i in group for m in state.members(state.updates[i])]
            sizes = np.array([state.updates[i].num_examples for i in group], dtype=np.float64)
            weights = sizes if sizes.sum() > 0 else np.ones(len(group))
            mean = weighted_mean([updates[i] for i in group], weights)
            name = "+".join(str(client_id) for client_id, _ in members)
            state.groups[name] = members
            buckets.append(ClientUpdate(name, mean, float(sizes.sum()),
                                        _mean_metrics([state.updates[i].metrics for i in group], weights)))
        state.replace_updates(buckets)


def _mean_metrics(metrics: list[Mapping[str, Any]], weights: np.ndarray) -> dict[str, float]:
    """Per metric key, the ``weights``-weighted mean over the members reporting it as a
    finite number (a member without it does not take the group's value away)."""
    means = {}
    for key in sorted({key for m in metrics for key in m}):
        pairs = [(float(m[key]), w) for m, w in zip(metrics, weights) if _is_number(m.get(key))]
        if pairs:
            values, member_weights = zip(*pairs)
            total = sum(member_weights)
            means[key] = float(np.average(values, weights=member_weights if total > 0 else None))
    return means


# --------------------------------------------------------------------------- weighting
WEIGHT_BY_CHOICES = ("uniform", "num_examples", "quality", "num_examples*quality")


class WeightBy(Stage):
    """Set each update's coefficient.

    Args:
        by: ``"uniform"`` (every update counts the same), ``"num_examples"`` (FedAvg),
            ``"quality"`` (the client-reported ``quality_key`` metric),
            ``"num_examples*quality"``, or a callable ``f(ClientUpdate) -> float >= 0``.
        quality_key: metric name holding the quality value (default ``"quality"``).
        quality_kind: ``"accuracy"`` (higher is better, in [0, 1]) or ``"loss"``
            (lower is better, mapped to ``1 / (1 + loss)``); see ``weighting``.
        floor: minimum quality weight in ``[0, 1]`` so a valid client never gets 0.
        cap: ``None`` (trust the reports), or each weight capped at ``cap`` times the
            round's median weight (:func:`~fedloom.aggregation.weight_cap.cap_weights`,
            ``>= 1``), so a client lying about ``num_examples`` or quality gains little.

    Updates missing the quality metric are rejected with reason ``missing_metric``.
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
    ) -> None:
        if cap is not None and not (_is_number(cap) and cap >= 1):
            raise ConfigError(f"weight cap must be a multiple of the median >= 1 (or None); got cap={cap!r}.")
        self.cap = cap
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

    def _uses_quality(self) -> bool:
        return self.by in ("quality", "num_examples*quality")

    def __call__(self, state: RoundState) -> None:
        if self._uses_quality():
            has = [_is_number(u.metrics.get(self.quality_key)) for u in state.updates]
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
        else:
            quality = [float(u.metrics[self.quality_key]) for u in updates]
            if self.by == "quality":
                weights = quality_weights(quality, self.quality_kind, self.floor)
            else:
                weights = size_quality_weights(sizes, quality, self.quality_kind, self.floor)
        state.coefficients = weights if self.cap is None else cap_weights(weights, self.cap)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


# --------------------------------------------------------------------------- reducers
def _require_positive_weight(state: RoundState) -> np.ndarray:
    coefficients = state.coefficients
    if coefficients is None:
        return np.ones(len(state.updates))
    if not coefficients.sum() > 0:
        raise InsufficientUpdates(
            f"round {state.server_round}: all {len(coefficients)} valid updates have weight 0 "
            "(e.g. every client reported num_examples=0), so there is nothing to average."
        )
    return coefficients


class Mean(Stage):
    """Weighted mean of the updates with the coefficients (uniform if none were set).

    Clipping scales ``s_k`` are folded in exactly: with normalised coefficients ``c_k``,
    ``sum_k c_k (g + s_k (u_k - g)) = sum_k c_k s_k u_k + (1 - sum_k c_k s_k) g``.

    NaN/Inf are found without an extra pass when nothing else has read the data: a
    non-finite update makes the mean non-finite, and only then is each update checked
    and the mean recomputed without the bad ones.
    """

    kind = "reducer"

    def __call__(self, state: RoundState) -> None:
        while True:
            coefficients = _require_positive_weight(state)
            updates: list = [u.weights for u in state.updates]
            if state.scales is not None and (state.scales < 1.0).any():
                c = coefficients / coefficients.sum() * state.scales
                updates.append(state.global_weights)
                coefficients = np.append(c, max(0.0, 1.0 - c.sum()))
            result = weighted_mean(updates, coefficients)
            if state.finite_checked or all(np.isfinite(a).all() for a in result):
                state.aggregate = result
                return
            state.require_finite()
            if not state.updates:
                raise InsufficientUpdates(
                    f"round {state.server_round}: every update held NaN/Inf values."
                )


class CoordinateMedian(Stage):
    """Coordinate-wise median (Yin et al. 2018); every update counts the same."""

    kind = "reducer"

    def __call__(self, state: RoundState) -> None:
        state.require_finite()
        state.aggregate = coordinate_median(state.effective_updates())


class TrimmedMean(Stage):
    """Coordinate-wise trimmed mean dropping ``floor(beta*K)`` values at each end.

    ``weighted=True`` averages the kept values with the coefficients set by the
    weighting stage (the "robust then weighted" hybrid); ``False`` is Yin et al. 2018.
    """

    kind = "reducer"

    def __init__(self, beta: float = 0.1, weighted: bool = False) -> None:
        if not 0.0 <= beta < 0.5:
            raise ConfigError(f"trimmed mean needs 0 <= beta < 0.5; got beta={beta}.")
        self.beta = beta
        self.weighted = weighted

    def __call__(self, state: RoundState) -> None:
        state.require_finite()
        weights = _require_positive_weight(state) if self.weighted else None
        state.aggregate = trimmed_mean(state.effective_updates(), self.beta, weights)


class CenteredClip(Stage):
    """Centred clipping around where the model was heading (Karimireddy, He, Jaggi 2021,
    https://arxiv.org/abs/2012.10333).

    The centre is the global model plus the last round's aggregate step (with
    ``momentum > 0``, an exponential average of past steps; the global model itself in
    the first round). The radius is ``median_multiple`` times the round's median
    distance of the updates from the centre. Then :func:`~fedloom.aggregation.robust.
    centered_clip` runs ``iterations`` times with the coefficients as weights: an
    attacker moves the result by at most its weight times the radius, whichever way it
    pushes, while honest updates near the centre count in full. The step is this
    stage's state (saved by checkpoints).
    """

    kind = "reducer"
    weighted = True  # uses the weighting stage's coefficients

    def __init__(self, median_multiple: float = 1.0, iterations: int = 3, momentum: float = 0.0) -> None:
        if not median_multiple > 0 or isinstance(iterations, bool) or iterations < 1 or not 0 <= momentum < 1:
            raise ConfigError(
                f"CenteredClip needs median_multiple > 0, an integer iterations >= 1 and "
                f"momentum in [0, 1); got median_multiple={median_multiple}, "
                f"iterations={iterations}, momentum={momentum}.")
        self.median_multiple = median_multiple
        self.iterations = iterations
        self.momentum = momentum
        self._step: list[np.ndarray] | None = None

    def __call__(self, state: RoundState) -> None:
        state.require_finite()
        weights = _require_positive_weight(state)
        updates = state.effective_updates()
        model = state.global_weights
        center = list(model)
        if self._step is not None:
            center = [(a + s).astype(a.dtype) for a, s in zip(map(np.asarray, model), self._step)]
        distances = np.sqrt(squared_distances(updates, center))
        radius = self.median_multiple * float(np.median(distances))
        aggregate = center if radius == 0 else centered_clip(
            updates, center, radius, weights, self.iterations, distances=distances)
        step = [np.asarray(a, np.float64) - b for a, b in zip(aggregate, model)]
        if self._step is not None and self.momentum > 0:
            step = [self.momentum * old + (1 - self.momentum) * new for old, new in zip(self._step, step)]
        self._step = step
        state.aggregate = aggregate

    def state_dict(self) -> dict[str, Any]:
        return {} if self._step is None else {"step": [s.copy() for s in self._step]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        step = state.get("step")
        self._step = None if step is None else [np.asarray(s, np.float64) for s in step]


# --------------------------------------------------------------------------- server step
class ServerStep(Stage):
    """Server learning rate and momentum on the pseudo-gradient (FedAvgM, Hsu et al. 2019).

    ``learning_rate=1, momentum=0`` (the default) keeps the aggregate as the new model.
    The momentum buffer is this stage's state (saved by checkpoints).
    """

    kind = "server_step"

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.0) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"server learning_rate must be > 0; got {learning_rate}.")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"server momentum must be in [0, 1); got {momentum}.")
        self.learning_rate = learning_rate
        self.momentum = momentum
        self._velocity: list[np.ndarray] | None = None

    def __call__(self, state: RoundState) -> None:
        assert state.aggregate is not None, "ServerStep must come after a reducer"
        state.aggregate, self._velocity = server_update(
            state.global_weights,
            state.aggregate,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            velocity=self._velocity,
        )

    def state_dict(self) -> dict[str, Any]:
        return {} if self._velocity is None else {"velocity": [v.copy() for v in self._velocity]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        velocity = state.get("velocity")
        self._velocity = None if velocity is None else [np.asarray(v) for v in velocity]
