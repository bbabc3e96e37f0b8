"""Filter stages: leave updates out or limit them before the weighting and the reducer.

:class:`RejectNormOutliers` (norm outliers, with a window of past rounds as its state),
:class:`ClipNorm` (norm bounding), :class:`KrumSelect` (Multi-Krum), :class:`Bucket`
(random group means). See :mod:`fedloom.aggregation.stages` for the stage protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedloom.aggregation.checks import normalise_weights
from fedloom.aggregation.mean import weighted_mean
from fedloom.aggregation.robust import multi_krum
from fedloom.aggregation.round_state import ClientUpdate, RoundState
from fedloom.aggregation.stages import Stage
from fedloom.aggregation.weighting import is_number
from fedloom.errors import ConfigError, InsufficientUpdates

__all__ = ["RejectNormOutliers", "ClipNorm", "KrumSelect", "Bucket"]


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
    are this stage's state, ``{"recent_medians": [float, ...]}`` (saved by checkpoints).
    A round's median counts only with at least 3 updates (a median of 1 or 2 norms says
    nothing about outliers); with no median at all the ratio test is skipped.

    ``max_model_ratio`` adds a test that needs no other update: reject
    ``||update - global|| > max_model_ratio * max(||global||, 1)``, i.e. an update that
    moves the model by that many times its own size (the floor of 1 covers models that
    start at zero). ``reason`` is the tag rejected updates get (``"absurd_norm"`` for the
    strategies' sanity guard, see ``FedloomStrategy(absurd_norm_ratio=...)``).

    Needs the global model (distances are measured from it).
    """

    kind = "filter"
    needs_global_model = True
    may_reject = True
    distance_only = True
    stateful = True

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

    def init(self) -> dict[str, list[float]]:
        return {"recent_medians": []}

    def restore(self, saved: Mapping[str, Any]) -> dict[str, list[float]]:
        return {"recent_medians": [float(m) for m in saved.get("recent_medians", [])]}

    def update(self, state: RoundState, stage_state: Any) -> dict[str, list[float]]:
        recent = list((stage_state or self.init())["recent_medians"])
        if not state.updates:
            return {"recent_medians": recent}
        norms = state.delta_norms()
        medians = [float(np.median(norms))] if len(norms) > 2 else []
        if self.window > 1:
            recent = medians = [*recent, *medians][-self.window:]
        limit = self.max_ratio * float(np.median(medians)) if medians else np.inf
        if self.max_norm is not None:
            limit = min(limit, self.max_norm)
        if self.max_model_ratio is not None:
            size = float(np.sqrt(sum(float(np.dot(np.ravel(g), np.ravel(g)))
                                     for g in state.global_weights)))  # no float64 copy
            limit = min(limit, self.max_model_ratio * max(size, 1.0))
        details = [f"update norm {n:.4g} > limit {limit:.4g}" for n in norms]
        state.keep(norms <= limit, self.reason, details)
        return {"recent_medians": recent}


class ClipNorm(Stage):
    """Clip each update's distance from the global model to an L2 bound.

    The clipped update is ``global + min(1, bound / ||u - global||) * (u - global)``, with
    ``bound`` = ``max_norm``, or ``median_multiple`` times the round's median distance
    (norm bounding against boosted updates, Sun et al. 2019,
    https://arxiv.org/abs/1911.07963), or the smaller of the two.
    Recorded as a per-update scale: :class:`~fedloom.aggregation.reducers.Mean` folds it
    into its coefficients, so no clipped copy of any update is made; other reducers copy
    only clipped updates. Needs the global model; no state.
    """

    kind = "filter"
    needs_global_model = True
    distance_only = True
    dp_sensitivity_preserving = True

    def __init__(self, max_norm: float | None = None, *, median_multiple: float | None = None) -> None:
        if max_norm is None and median_multiple is None:
            raise ConfigError("ClipNorm needs max_norm or median_multiple; got neither.")
        for name, value in (("max_norm", max_norm), ("median_multiple", median_multiple)):
            if value is not None and not value > 0:
                raise ConfigError(f"ClipNorm needs {name} > 0; got {name}={value}.")
        self.max_norm = max_norm
        self.median_multiple = median_multiple

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        if not state.updates:
            return None
        norms = state.delta_norms()
        bound = np.inf if self.max_norm is None else self.max_norm
        if self.median_multiple is not None:
            bound = min(bound, self.median_multiple * float(np.median(norms)))
        scales = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
        state.scales = scales if state.scales is None else np.minimum(state.scales, scales)
        return None


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
    Krum's budget by one in that round. Reads only distances between updates (not the
    global model, unless an earlier clipping stage did); no state.
    """

    kind = "filter"
    may_reject = True

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

    def update(self, state: RoundState, stage_state: Any = None) -> None:
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
        return None


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

    def update(self, state: RoundState, stage_state: Any = None) -> None:
        if self.size == 1 or len(state.updates) < 2:
            return None
        state.require_finite()
        updates = state.effective_updates()
        order = np.random.default_rng([self.seed, state.server_round]).permutation(len(updates))
        groups = [order[i:i + self.size] for i in range(0, len(order), self.size)]
        buckets = []
        for group in groups:
            members = [m for i in group for m in state.members(state.updates[i])]
            sizes = np.array([state.updates[i].num_examples for i in group], dtype=np.float64)
            weights = sizes if (sizes > 0).any() else np.ones(len(group))
            mean = weighted_mean([updates[i] for i in group], weights)
            name = "+".join(str(client_id) for client_id, _ in members)
            state.groups[name] = members
            # the group's size saturates at the largest float (huge reported sizes
            # would otherwise sum to Inf, which the weighting refuses)
            with np.errstate(over="ignore"):
                total = float(min(sizes.sum(), np.finfo(np.float64).max))
            buckets.append(ClientUpdate(name, mean, total,
                                        _mean_metrics([state.updates[i].metrics for i in group], weights)))
        state.replace_updates(buckets)
        return None


def _mean_metrics(metrics: list[Mapping[str, Any]], weights: np.ndarray) -> dict[str, float]:
    """Per metric key, the ``weights``-weighted mean over the members reporting it as a
    finite number (a member without it does not take the group's value away)."""
    means = {}
    for key in sorted({key for m in metrics for key in m}):
        pairs = [(float(m[key]), w) for m, w in zip(metrics, weights) if is_number(m.get(key))]
        if pairs:
            values, member_weights = zip(*pairs)
            w = np.asarray(member_weights, dtype=np.float64)
            # normalised first: huge reported sizes would make np.average's sum Inf (NaN mean)
            shares = normalise_weights(w, len(w)) if (w > 0).any() else np.full(len(w), 1 / len(w))
            means[key] = float(np.dot(np.asarray(values, dtype=np.float64), shares))
    return means
