"""Aggregation pipelines: a chain of stages (``schedule`` says which pipeline runs in
which round).

A pipeline is how fedloom expresses every aggregation method, in the spirit of
``optax.chain``: named methods are ready-made chains, and a hybrid is just another
chain or a schedule of chains. Pure numpy; no Flower import.

Example::

    robust_weighted = Pipeline(
        RejectNormOutliers(max_ratio=10),
        WeightBy("num_examples"),
        TrimmedMean(beta=0.2, weighted=True),
    )
    warmup_then_fedavg = Schedule.switch_after(
        5, Pipeline(WeightBy("uniform"), Mean()), Pipeline(WeightBy("num_examples"), Mean())
    )

State between rounds is explicit: each stage's state is made by its ``init`` and
returned by its ``update`` (see ``stages``); a pipeline keeps them in :attr:`Pipeline.
states`, keyed by stage name (``Pipeline(("window", RejectNormOutliers(window=5)),
...)`` names a stage; otherwise it is the class name in snake case), and checkpoints
save them by that name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.aggregation.checks import check_update, normalise_weights
from fedloom.aggregation.round_state import ClientUpdate, Rejection, RoundState
from fedloom.aggregation.mean import weighted_mean_and_distances
from fedloom.aggregation.reducers import Mean
from fedloom.aggregation.stages import KINDS, Stage, default_name
from fedloom.errors import ConfigError, InsufficientUpdates, UpdateRejected

__all__ = ["AggregationResult", "Pipeline"]

_ORDER = {kind: position for position, kind in enumerate(KINDS)}


@dataclass
class AggregationResult:
    """The outcome of one round's aggregation.

    Attributes:
        weights: the new global model, or ``None`` when the round was skipped (the
            caller keeps the old model).
        used: client ids whose updates went into the result.
        coefficients: their normalised weights (sum 1; uniform for median/trimmed mean).
        rejected: updates left out, each with a reason tag and details.
        skipped_reason: why no new model was produced, if so.
        seconds: wall time of the aggregation.
    """

    weights: list[np.ndarray] | None
    used: list[str] = field(default_factory=list)
    coefficients: list[float] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    skipped_reason: str = ""
    seconds: float = 0.0

    def rejected_counts(self) -> dict[str, int]:
        """Number of rejected updates per reason tag."""
        counts: dict[str, int] = {}
        for rejection in self.rejected:
            counts[rejection.reason] = counts.get(rejection.reason, 0) + 1
        return counts


class Pipeline:
    """A chain of stages: filters, then one weighting, one reducer, then a server step.

    Args:
        *stages: :class:`~fedloom.aggregation.stages.Stage` objects, or ``(name, stage)``
            pairs to name them. Kinds must come in the order filter* -> weighting? ->
            reducer -> server_step?; without a reducer, :class:`Mean` is appended.
            Names must be unique within the pipeline; unnamed stages are called after
            their class (``reject_norm_outliers``, a second one ``reject_norm_outliers_2``).
        client_config: settings sent to clients in rounds that use this pipeline
            (e.g. ``{"local-epochs": 5}``); passed through untouched.
        name: a label for logs and reports.

    Attributes:
        stages: the stages, in order.
        stage_names: their names, in the same order.
        states: each stateful stage's current between-round state, by stage name.
    """

    def __init__(
        self,
        *stages: Stage | tuple[str, Stage],
        client_config: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        named: list[tuple[str | None, Stage]] = [
            (str(s[0]), s[1]) if isinstance(s, tuple) and len(s) == 2 else (None, s) for s in stages
        ]
        for _, stage in named:
            if getattr(stage, "kind", None) not in _ORDER:
                raise ConfigError(
                    f"Pipeline stages must be fedloom Stage objects; got {stage!r}. "
                    "Use e.g. WeightBy(...), Mean(), TrimmedMean(...)."
                )
        if not any(s.kind == "reducer" for _, s in named):
            at = next((i for i, (_, s) in enumerate(named) if s.kind == "server_step"), None)
            named.insert(len(named) if at is None else at, (None, Mean()))
        stages_list = [s for _, s in named]
        kinds = [s.kind for s in stages_list]
        for kind in ("weighting", "reducer", "server_step"):
            if kinds.count(kind) > 1:
                raise ConfigError(f"A pipeline takes at most one {kind} stage; got {stages_list}.")
        if [_ORDER[k] for k in kinds] != sorted(_ORDER[k] for k in kinds):
            raise ConfigError(
                "Pipeline stages must run filter -> weighting -> reducer -> server_step; "
                f"got {[type(s).__name__ for s in stages_list]}."
            )
        self.stages = tuple(stages_list)
        self.stage_names = _unique_names(named)
        self.states: dict[str, Any] = {
            n: s.init() for n, s in zip(self.stage_names, self.stages) if s.stateful}
        self.client_config = dict(client_config or {})
        self.name = name or " -> ".join(type(s).__name__ for s in self.stages)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.stages))})"

    def stages_needing_global_model(self, guards: Sequence[Stage] = ()) -> list[str]:
        """Names of the stages (``guards`` included) that read the global model: this
        pipeline cannot aggregate replies without it when the list is not empty."""
        names = [f"guard {type(g).__name__}" for g in guards if g.needs_global_model]
        return names + [n for n, s in zip(self.stage_names, self.stages) if s.needs_global_model]

    def __call__(
        self,
        global_weights: Sequence[np.ndarray] | None,
        updates: Sequence[ClientUpdate],
        *,
        server_round: int = 0,
        min_updates: int = 1,
        rejected: Sequence[Rejection] = (),
        guards: Sequence[Stage] = (),
    ) -> AggregationResult:
        """Aggregate one round, moving :attr:`states` on to the next.

        Every update is first checked against ``global_weights`` (number of arrays,
        shapes, dtypes, ``num_examples``); bad ones are rejected, never raised. If fewer
        than ``min_updates`` valid updates remain, or a stage cannot run with what is
        left, the result has ``weights=None`` and says why in ``skipped_reason``.

        Args:
            global_weights: the model sent to the clients this round; ``None`` when the
                caller has none (then the first update with a valid ``num_examples``
                is the structural reference, and a pipeline with a stage that
                :meth:`stages_needing_global_model` lists raises ``ConfigError``).
            updates: the clients' replies.
            server_round: round number, for messages.
            min_updates: least number of valid updates needed to produce a model.
            rejected: rejections made before the pipeline (e.g. client errors), to be
                carried into the result.
            guards: extra stateless ``"filter"`` stages run after the structural checks
                and before this pipeline's own stages (e.g. the strategies'
                absurd-norm guard); they run from their initial state every round.
        """
        result, self.states = self.apply(
            self.states, global_weights, updates, server_round=server_round,
            min_updates=min_updates, rejected=rejected, guards=guards)
        return result

    def apply(
        self,
        states: Mapping[str, Any],
        global_weights: Sequence[np.ndarray] | None,
        updates: Sequence[ClientUpdate],
        *,
        server_round: int = 0,
        min_updates: int = 1,
        rejected: Sequence[Rejection] = (),
        guards: Sequence[Stage] = (),
    ) -> tuple[AggregationResult, dict[str, Any]]:
        """:meth:`__call__` as a pure function of the stage ``states``: returns the
        result and the new states (``states`` itself is not changed). In a skipped
        round the stages that ran before the skip still move their state on (a norm
        filter's window holds the round's median)."""
        if any(getattr(g, "kind", None) != "filter" for g in guards):
            raise ConfigError(f"guards must be filter stages; got {list(guards)}.")
        if global_weights is None:
            needing = self.stages_needing_global_model(guards)
            if needing:
                raise ConfigError(
                    f"pipeline {self.name!r} needs the global model the clients trained from "
                    f"(stages {needing} read it), but none was given. Send the model first "
                    "(configure_train / configure_fit), or set the strategy's current_arrays "
                    "(Message API) or initial_parameters (legacy API).")
        started = time.perf_counter()
        reference = global_weights
        state = RoundState(server_round, global_weights, [], rejected=list(rejected),
                           num_received=len(updates))
        for update in updates:
            reason = _structural_problem(update, reference)
            if reason is None:
                state.updates.append(update)
                reference = update.weights if reference is None else reference
            else:
                state.rejected.append(Rejection(update.client_id, *reason))
        new_states = dict(states)
        skipped = ""
        stages = (*guards, *self.stages)
        names = (*[None] * len(guards), *self.stage_names)
        try:
            if not (_one_pass_possible(stages)
                    and _run_in_one_pass(state, stages, names, new_states, min_updates)):
                for name, stage in zip(names, stages):
                    if stage.kind == "reducer":
                        _require_enough(state, min_updates)
                    _update(stage, name, state, new_states)
            _require_enough(state, min_updates)  # the reducer may have rejected more
        except InsufficientUpdates as err:
            skipped = str(err)  # the stages that ran keep their new state, as they saw the round
        coefficients = state.coefficients
        if coefficients is None or any(s.kind == "reducer" and not s.uses_weights for s in self.stages):
            coefficients = np.ones(len(state.updates))
        used, coefficients = state.clients(coefficients)
        shares = (normalise_weights(coefficients, len(coefficients))
                  if (coefficients > 0).any() else None)  # overflow-safe, unlike c / c.sum()
        return AggregationResult(
            weights=None if skipped else state.aggregate,
            used=[] if skipped else used,
            coefficients=[] if skipped or shares is None else shares.tolist(),
            rejected=state.rejected,
            skipped_reason=skipped,
            seconds=time.perf_counter() - started,
        ), new_states

    def state_dict(self) -> dict[str, Any]:
        """The stateful stages' states by stage name (those still in their initial,
        empty state are left out)."""
        return {name: dict(state) for name, state in self.states.items()
                if state and any(not _empty(v) for v in state.values())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (stages not in it start afresh)."""
        by_name = dict(zip(self.stage_names, self.stages))
        unknown = [key for key in state if key not in self.states]
        if unknown:
            raise ConfigError(
                f"pipeline {self.name!r} has no stateful stage named {unknown}; its stateful "
                f"stages are {sorted(self.states)}. The checkpoint was written by another "
                "method: resume with the config it was made with.")
        self.states = {name: by_name[name].init() for name in self.states}
        for key, stage_state in state.items():
            self.states[key] = by_name[key].restore(stage_state)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple, dict)) and len(value) == 0)


def _unique_names(named: Sequence[tuple[str | None, Stage]]) -> tuple[str, ...]:
    given = [n for n, _ in named if n is not None]
    if len(set(given)) != len(given):
        raise ConfigError(f"Pipeline stage names must be unique; got {given}.")
    names, taken = [], set(given)
    for name, stage in named:
        if name is None:
            base = name = default_name(stage)
            count = 1
            while name in taken:
                count += 1
                name = f"{base}_{count}"
            taken.add(name)
        names.append(name)
    return tuple(names)


def _update(stage: Stage, name: str | None, state: RoundState, states: dict[str, Any]) -> None:
    """Run ``stage`` on ``state`` with its state from ``states`` (a guard, ``name=None``,
    from its initial state) and store the state it returns."""
    new = stage.update(state, states.get(name) if name is not None else stage.init())
    if name is not None and stage.stateful:
        states[name] = new


def _one_pass_possible(stages: Sequence[Stage]) -> bool:
    """True when the stages before a linear reducer (a mean) only screen or clip by
    distance from the global model, or weigh (what :func:`_run_in_one_pass` can fuse)."""
    reducers = [i for i, s in enumerate(stages) if s.kind == "reducer"]
    return (
        len(reducers) == 1
        and stages[reducers[0]].linear
        and all(s.kind == "weighting" or (s.kind == "filter" and s.distance_only)
                for s in stages[: reducers[0]])
    )


def _run_in_one_pass(state: RoundState, stages: Sequence[Stage], names: Sequence[str | None],
                     states: dict[str, Any], min_updates: int) -> bool:
    """The result of running ``stages`` in order, reading the client arrays once; returns
    False (having changed nothing) when that would not be the same result bit for bit.

    The weighting reads only metrics (or, under server quality, scores each update on
    its own), and the coefficients it sets are per update; so unless it leaves an update
    out, weighing first gives the documented order's coefficients. A weighting that rejects (a quality weighting with a metric missing)
    would change which updates the filters compare with each other: then the caller
    runs the stages in order. Otherwise one pass computes the weighted mean of every
    update together with each update's distance from the global model; the distance
    filters and clipping then run on those cached distances. Only if they leave an
    update out or clip one is the mean computed again (a second pass), which keeps the
    common case (nothing wrong) at the cost of one read of the data.

    The stages' states are read from and written to ``states`` as in the ordered run.
    """
    at = next(i for i, s in enumerate(stages) if s.kind == "reducer")
    before, reducer, after = stages[:at], stages[at], zip(names[at + 1 :], stages[at + 1 :])
    weighting = next((s for s in before if s.kind == "weighting"), None)
    filters = [(n, s) for n, s in zip(names, before) if s.kind == "filter"]
    if filters and len(state.updates) < max(min_updates, 1):
        return False  # the filters still run (and move their state) before the skip
    if filters and weighting is not None and weighting.may_reject:
        probe = RoundState(state.server_round, state.global_weights, list(state.updates))
        weighting.update(probe, None)
        if len(probe.updates) != len(state.updates):
            return False  # its rejections change what the filters see: run in order
    if weighting is not None:
        weighting.update(state, None)
    _require_enough(state, min_updates)
    coefficients = np.ones(len(state.updates)) if state.coefficients is None else state.coefficients
    if not filters:  # nothing to screen: the mean's own NaN/Inf handling is all it takes
        _update(reducer, names[at], state, states)
        for name, stage in after:
            _update(stage, name, state, states)
        return True
    candidate, count = None, len(state.updates)
    if (coefficients > 0).any():
        candidate, squared = weighted_mean_and_distances(
            [u.weights for u in state.updates], coefficients, state.global_weights)
        state.set_delta_norms(np.sqrt(squared))
        if len(state.updates) != count:
            candidate = None  # NaN/Inf updates were found and left out
    for name, stage in filters:
        _update(stage, name, state, states)
    clipped = state.scales is not None and bool((state.scales < 1.0).any())
    if candidate is not None and len(state.updates) == count and not clipped:
        state.aggregate = candidate
    else:
        _require_enough(state, min_updates)
        _update(reducer, names[at], state, states)
    for name, stage in after:
        _update(stage, name, state, states)
    return True


def _require_enough(state: RoundState, min_updates: int) -> None:
    needed = max(min_updates, 1)
    have = len(state.clients()[0])  # clients, also when their updates were grouped
    if have < needed:
        raise InsufficientUpdates(
            f"round {state.server_round}: {have} valid updates, {needed} "
            "needed; the global model is kept"
        )


def _structural_problem(
    update: ClientUpdate, reference: Sequence[np.ndarray] | None
) -> tuple[str, str] | None:
    """Why ``update`` cannot be aggregated (reason tag, detail), or ``None``. Without a
    ``reference`` (no global model) only ``num_examples`` is checked."""
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, (int, float, np.number)) or not np.isfinite(n) or n < 0:
        return "bad_num_examples", f"num_examples must be a finite number >= 0; got {n!r}"
    if reference is None:
        return None
    try:
        check_update(update.weights, reference)
    except UpdateRejected as err:
        return err.reason, str(err)
    return None
