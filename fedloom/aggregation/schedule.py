"""Schedules: which aggregation pipeline runs in which round (a hybrid over time)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedloom.aggregation.pipeline import Pipeline
from fedloom.aggregation.stages import Stage
from fedloom.errors import ConfigError

__all__ = ["Schedule"]


class Schedule:
    """Which pipeline aggregates which round: ``[(first_round, pipeline), ...]``.

    The first phase must start at round 1; later phases start at increasing rounds.
    The stateful stages' names must be unique across the phases (a checkpoint holds
    their states by name): name them, ``Pipeline(("late_momentum", ServerStep(...)))``,
    when two phases have the same kind of stateful stage.
    """

    def __init__(self, phases: Sequence[tuple[int, Pipeline]]) -> None:
        starts = [start for start, _ in phases]
        if not phases or starts[0] != 1 or starts != sorted(set(starts)):
            raise ConfigError(
                "A schedule needs phases [(1, pipeline), (k, pipeline), ...] with strictly "
                f"increasing first rounds starting at 1; got first rounds {starts}."
            )
        self.phases = [(int(start), pipeline) for start, pipeline in phases]
        stateful = [name for _, pipeline in self.phases for name in pipeline.states]
        repeated = sorted({name for name in stateful if stateful.count(name) > 1})
        if repeated:
            raise ConfigError(
                f"A schedule's stateful stages need unique names; {repeated} appear in several "
                "phases. Name them with Pipeline((name, stage), ...).")

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

    def stages(self) -> list[tuple[str, Stage]]:
        """``(name, stage)`` of every phase's stages, in order."""
        return [pair for _, p in self.phases for pair in zip(p.stage_names, p.stages)]

    def state_dict(self) -> dict[str, Any]:
        """Every phase's stage states, by stage name (unique within the schedule)."""
        return {name: state for _, p in self.phases for name, state in p.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        known = {name for _, p in self.phases for name in p.states}
        unknown = sorted(set(state) - known)
        if unknown:
            raise ConfigError(
                f"the schedule has no stateful stage named {unknown}; its stateful stages are "
                f"{sorted(known)}. The checkpoint was written by another method: resume with "
                "the config it was made with.")
        for _, pipeline in self.phases:
            pipeline.load_state_dict({k: v for k, v in state.items() if k in pipeline.states})
