"""What a stage of an aggregation pipeline is: a pure step with explicit state.

In the spirit of optax's ``GradientTransformation``, a stage is a pair of functions:

- ``init() -> state``: the stage's between-round state before the first round (``None``
  for a stage without any; otherwise a plain dict of numbers, lists and numpy arrays, so
  a checkpoint can hold it);
- ``update(round_state, state) -> new_state``: one round's work on the
  :class:`~fedloom.aggregation.round_state.RoundState` (leave updates out, set
  coefficients or the aggregate), returning the stage's new state. The stage object
  itself never changes: it holds settings only.

A :class:`~fedloom.aggregation.pipeline.Pipeline` keeps the states of its stages by
stage *name* and threads them from round to round; checkpoints save them by name.

Kinds, each in its own module:

- ``"filter"`` (``filters``): leaves updates out or limits them (norm outliers, Krum,
  norm clipping, buckets);
- ``"weighting"`` (``weighting``): sets one coefficient per update (``WeightBy``);
- ``"reducer"`` (``reducers``): turns the updates into one model (``Mean``,
  ``CoordinateMedian``, ``TrimmedMean``, ``CenteredClip``);
- ``"server_step"`` (``server_step``): moves the global model towards that aggregate
  (``ServerStep``).

Stages *declare* what they read and do as attributes, so code elsewhere (the
pipeline's one-pass path, the privacy checks, the strategies) asks the stage instead of
testing its class:

``needs_global_model``
    reads the model the clients started from (distances, clipping, the server step);
    such a pipeline cannot aggregate replies without it.
``may_reject``
    can leave updates out.
``uses_weights``
    a reducer that honours the weighting stage's coefficients.
``distance_only``
    a filter that reads nothing but each update's distance from the global model (the
    pipeline's one-pass path computes those distances while it averages).
``linear``
    a reducer that is a (weighted) mean of the updates (the one-pass path can fuse it).
``dp_sensitivity_preserving``
    keeps a uniform mean of clipped updates within the ``C / m`` sensitivity the
    differential-privacy accountant assumes.
``stateful``
    has between-round state (``init`` returns something other than ``None``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from fedloom.aggregation.round_state import RoundState

__all__ = ["Stage", "KINDS", "default_name"]

#: Stage kinds in the order a pipeline runs them.
KINDS = ("filter", "weighting", "reducer", "server_step")


def default_name(stage: Stage) -> str:
    """``snake_case`` of the stage's class name (``RejectNormOutliers`` ->
    ``reject_norm_outliers``), the name a pipeline gives a stage unless told otherwise."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(stage).__name__).lower()


class Stage:
    """Base class: one step of a pipeline, with settings only (see the module docstring).

    Subclasses implement :meth:`update` and, if they keep state between rounds,
    :meth:`init` (and :meth:`restore` when a saved state needs converting back).
    """

    kind: ClassVar[str] = ""
    needs_global_model: ClassVar[bool] = False
    may_reject: bool = False
    uses_weights: bool = False
    distance_only: ClassVar[bool] = False
    linear: ClassVar[bool] = False
    dp_sensitivity_preserving: bool = False
    stateful: ClassVar[bool] = False

    def init(self) -> Any:
        """The state before the first round (``None``: this stage keeps none)."""
        return None

    def update(self, state: RoundState, stage_state: Any) -> Any:  # pragma: no cover - abstract
        """Run one round on ``state``; return this stage's new between-round state."""
        raise NotImplementedError

    def restore(self, saved: Mapping[str, Any]) -> Any:
        """A state as :meth:`init` / :meth:`update` make it, from one read back from a
        checkpoint (lists instead of tuples, arrays of another dtype...)."""
        return dict(saved)

    def __call__(self, state: RoundState) -> Any:
        """One round from the initial state (a stage used on its own, outside a
        pipeline); returns the new state, which is the caller's to keep."""
        return self.update(state, self.init())

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
