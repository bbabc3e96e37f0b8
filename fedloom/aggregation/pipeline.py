"""Aggregation pipelines (a chain of stages) and schedules (which pipeline in which round).

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
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedloom.aggregation.checks import check_update
from fedloom.aggregation.round_state import ClientUpdate, Rejection, RoundState
from fedloom.aggregation.mean import weighted_mean_and_distances
from fedloom.aggregation.stages import ClipNorm, Mean, RejectNormOutliers, Stage, WeightBy
from fedloom.errors import ConfigError, InsufficientUpdates, UpdateRejected

__all__ = ["AggregationResult", "Pipeline", "Schedule"]

_ORDER = {"filter": 0, "weighting": 1, "reducer": 2, "server_step": 3}


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
        *stages: :class:`~fedloom.aggregation.stages.Stage` objects. Kinds must come in
            the order filter* -> weighting? -> reducer -> server_step?; without a
            reducer, :class:`Mean` is appended.
        client_config: settings sent to clients in rounds that use this pipeline
            (e.g. ``{"local-epochs": 5}``); passed through untouched.
        name: a label for logs and reports.
    """

    def __init__(
        self,
        *stages: Stage,
        client_config: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        stages_list = list(stages)
        for stage in stages_list:
            if getattr(stage, "kind", None) not in _ORDER:
                raise ConfigError(
                    f"Pipeline stages must be fedloom Stage objects; got {stage!r}. "
                    "Use e.g. WeightBy(...), Mean(), TrimmedMean(...)."
                )
        if not any(s.kind == "reducer" for s in stages_list):
            at = next((i for i, s in enumerate(stages_list) if s.kind == "server_step"), None)
            stages_list.insert(len(stages_list) if at is None else at, Mean())
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
        self.client_config = dict(client_config or {})
        self.name = name or " -> ".join(type(s).__name__ for s in self.stages)

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.stages))})"

    def __call__(
        self,
        global_weights: Sequence[np.ndarray],
        updates: Sequence[ClientUpdate],
        *,
        server_round: int = 0,
        min_updates: int = 1,
        rejected: Sequence[Rejection] = (),
        guards: Sequence[Stage] = (),
    ) -> AggregationResult:
        """Aggregate one round.

        Every update is first checked against ``global_weights`` (number of arrays,
        shapes, dtypes, ``num_examples``); bad ones are rejected, never raised. If fewer
        than ``min_updates`` valid updates remain, or a stage cannot run with what is
        left, the result has ``weights=None`` and says why in ``skipped_reason``.

        Args:
            global_weights: the model sent to the clients this round.
            updates: the clients' replies.
            server_round: round number, for messages.
            min_updates: least number of valid updates needed to produce a model.
            rejected: rejections made before the pipeline (e.g. client errors), to be
                carried into the result.
            guards: extra ``"filter"`` stages run after the structural checks and before
                this pipeline's own stages (e.g. the strategies' absurd-norm guard).
        """
        if any(getattr(g, "kind", None) != "filter" for g in guards):
            raise ConfigError(f"guards must be filter stages; got {list(guards)}.")
        started = time.perf_counter()
        state = RoundState(server_round, global_weights, [], rejected=list(rejected),
                           num_received=len(updates))
        for update in updates:
            reason = _structural_problem(update, global_weights)
            if reason is None:
                state.updates.append(update)
            else:
                state.rejected.append(Rejection(update.client_id, *reason))
        skipped = ""
        stages = (*guards, *self.stages)
        try:
            if _one_pass_possible(stages):
                _run_in_one_pass(state, stages, min_updates)
            else:
                for stage in stages:
                    if stage.kind == "reducer":
                        _require_enough(state, min_updates)
                    stage(state)
            _require_enough(state, min_updates)  # the reducer may have rejected more
        except InsufficientUpdates as err:
            skipped = str(err)
        coefficients = state.coefficients
        if coefficients is None or any(s.kind == "reducer" and not _uses_weights(s) for s in self.stages):
            coefficients = np.ones(len(state.updates))
        used, coefficients = state.clients(coefficients)
        total = float(np.sum(coefficients))
        return AggregationResult(
            weights=None if skipped else state.aggregate,
            used=[] if skipped else used,
            coefficients=[] if skipped or total == 0 else (coefficients / total).tolist(),
            rejected=state.rejected,
            skipped_reason=skipped,
            seconds=time.perf_counter() - started,
        )

    def state_dict(self) -> dict[str, Any]:
        """States of the stateful stages, keyed by stage position."""
        return {str(i): s.state_dict() for i, s in enumerate(self.stages) if s.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, stage_state in state.items():
            self.stages[int(key)].load_state_dict(stage_state)


def _one_pass_possible(stages: Sequence[Stage]) -> bool:
    """True when the stages before a :class:`Mean` only screen by distance from the
    global model, clip, or weigh (what :func:`_run_in_one_pass` can fuse)."""
    reducers = [i for i, s in enumerate(stages) if s.kind == "reducer"]
    return (
        len(reducers) == 1
        and isinstance(stages[reducers[0]], Mean)
        and all(isinstance(s, (RejectNormOutliers, ClipNorm, WeightBy)) for s in stages[: reducers[0]])
    )


def _run_in_one_pass(state: RoundState, stages: Sequence[Stage], min_updates: int) -> None:
    """Same result as running ``stages`` in order, reading the client arrays once.

    The weighting reads only metrics, so it runs first; then one pass computes the
    weighted mean of every update together with each update's distance from the global
    model; the distance filters and clipping then run on those cached distances. Only if
    they leave an update out or clip one is the mean computed again (a second pass),
    which keeps the common case (nothing wrong) at the cost of one read of the data.
    """
    at = next(i for i, s in enumerate(stages) if s.kind == "reducer")
    before, reducer, after = stages[:at], stages[at], stages[at + 1 :]
    for stage in before:
        if stage.kind == "weighting":
            stage(state)
    _require_enough(state, min_updates)
    coefficients = np.ones(len(state.updates)) if state.coefficients is None else state.coefficients
    filters = [stage for stage in before if stage.kind == "filter"]
    if not filters:  # nothing to screen: the mean's own NaN/Inf handling is all it takes
        _require_enough(state, min_updates)
        reducer(state)
        for stage in after:
            stage(state)
        return
    candidate, count = None, len(state.updates)
    if coefficients.sum() > 0:
        candidate, squared = weighted_mean_and_distances(
            [u.weights for u in state.updates], coefficients, state.global_weights)
        state.set_delta_norms(np.sqrt(squared))
        if len(state.updates) != count:
            candidate = None  # NaN/Inf updates were found and left out
    for stage in filters:
        stage(state)
    clipped = state.scales is not None and bool((state.scales < 1.0).any())
    if candidate is not None and len(state.updates) == count and not clipped:
        state.aggregate = candidate
    else:
        _require_enough(state, min_updates)
        reducer(state)
    for stage in after:
        stage(state)


def _require_enough(state: RoundState, min_updates: int) -> None:
    needed = max(min_updates, 1)
    have = len(state.clients()[0])  # clients, also when their updates were grouped
    if have < needed:
        raise InsufficientUpdates(
            f"round {state.server_round}: {have} valid updates, {needed} "
            "needed; the global model is kept"
        )


def _uses_weights(stage: Stage) -> bool:
    return isinstance(stage, Mean) or bool(getattr(stage, "weighted", False))


def _structural_problem(
    update: ClientUpdate, reference: Sequence[np.ndarray]
) -> tuple[str, str] | None:
    n = update.num_examples
    if isinstance(n, bool) or not isinstance(n, (int, float, np.number)) or not np.isfinite(n) or n < 0:
        return "bad_num_examples", f"num_examples must be a finite number >= 0; got {n!r}"
    try:
        check_update(update.weights, reference)
    except UpdateRejected as err:
        return err.reason, str(err)
    return None


class Schedule:
    """Which pipeline aggregates which round: ``[(first_round, pipeline), ...]``.

    The first phase must start at round 1; later phases start at increasing rounds.
    """

    def __init__(self, phases: Sequence[tuple[int, Pipeline]]) -> None:
        starts = [start for start, _ in phases]
        if not phases or starts[0] != 1 or starts != sorted(set(starts)):
            raise ConfigError(
                "A schedule needs phases [(1, pipeline), (k, pipeline), ...] with strictly "
                f"increasing first rounds starting at 1; got first rounds {starts}."
            )
        self.phases = [(int(start), pipeline) for start, pipeline in phases]

    @classmethod
    def switch_after(cls, num_rounds: int, first: Pipeline, then: Pipeline) -> Schedule:
        """``first`` for rounds ``1..num_rounds``, ``then`` afterwards."""
        if num_rounds < 1:
            raise ConfigError(f"switch_after needs num_rounds >= 1; got {num_rounds}.")
        return cls([(1, first), (num_rounds + 1, then)])

    def at(self, server_round: int) -> Pipeline:
        """The pipeline in charge of ``server_round``."""
        current = self.phases[0][1]
        for start, pipeline in self.phases:
            if server_round >= start:
                current = pipeline
        return current

    def __repr__(self) -> str:
        return f"Schedule({self.phases!r})"

    def state_dict(self) -> dict[str, Any]:
        return {str(i): p.state_dict() for i, (_, p) in enumerate(self.phases) if p.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, pipeline_state in state.items():
            self.phases[int(key)][1].load_state_dict(pipeline_state)
