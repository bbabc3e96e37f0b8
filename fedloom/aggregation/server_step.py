"""The server's step from the old global model towards the clients' aggregate: the
function :func:`server_update` and the pipeline stage :class:`ServerStep`.

With ``learning_rate=1`` and ``momentum=0`` the new global model *is* the aggregate
(plain FedAvg, McMahan et al. 2017). Otherwise the aggregate defines a pseudo-gradient
``delta = global - aggregate`` and the server takes an SGD step with momentum on it,
FedAvgM (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification", https://arxiv.org/abs/1909.06335):

    velocity <- momentum * velocity + delta
    global   <- global - learning_rate * velocity
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedloom.aggregation._blocks import cast_like
from fedloom.aggregation.round_state import RoundState
from fedloom.aggregation.stages import Stage
from fedloom.errors import ConfigError

__all__ = ["server_update", "ServerStep"]


def server_update(
    global_weights: Sequence[np.ndarray],
    aggregate: Sequence[np.ndarray],
    *,
    learning_rate: float = 1.0,
    momentum: float = 0.0,
    velocity: Sequence[np.ndarray] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Return ``(new_global_weights, new_velocity)``.

    Args:
        global_weights: the model the clients started the round from.
        aggregate: the reducer's output, same shapes and dtypes.
        learning_rate: server learning rate ``eta > 0``; 1.0 with no momentum returns
            ``aggregate`` itself.
        momentum: ``beta`` in ``[0, 1)``; 0 disables momentum (velocity stays ``None``).
        velocity: the previous round's velocity, or ``None`` in the first round.
    """
    if not learning_rate > 0:
        raise ValueError(f"server learning_rate must be > 0; received {learning_rate}.")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"server momentum must be in [0, 1); received {momentum}.")
    if learning_rate == 1.0 and momentum == 0.0:
        return list(aggregate), None
    new_weights, new_velocity = [], []
    for k, (old, agg) in enumerate(zip(global_weights, aggregate)):
        step = np.subtract(old, agg, dtype=np.float64)
        if momentum > 0.0:
            if velocity is not None:
                step += momentum * np.asarray(velocity[k], dtype=np.float64)
            new_velocity.append(step.astype(np.float32 if old.dtype != np.float64 else np.float64))
        new_weights.append(cast_like(np.asarray(old, dtype=np.float64) - learning_rate * step, old))
    return new_weights, (new_velocity if momentum > 0.0 else None)


class ServerStep(Stage):
    """Server learning rate and momentum on the pseudo-gradient (FedAvgM, Hsu et al. 2019).

    ``learning_rate=1, momentum=0`` (the default) keeps the aggregate as the new model
    (the identity step). The momentum buffer is this stage's state, ``{"velocity":
    [arrays] or None}`` (saved by checkpoints). Needs the global model, except as the
    identity step.
    """

    kind = "server_step"
    stateful = True

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.0) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"server learning_rate must be > 0; got {learning_rate}.")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"server momentum must be in [0, 1); got {momentum}.")
        self.learning_rate = learning_rate
        self.momentum = momentum

    @property
    def is_identity(self) -> bool:
        """``learning_rate=1, momentum=0``: the new model is the aggregate itself."""
        return self.learning_rate == 1.0 and self.momentum == 0.0

    @property
    def needs_global_model(self) -> bool:  # type: ignore[override]
        return not self.is_identity

    @property
    def dp_sensitivity_preserving(self) -> bool:  # type: ignore[override]
        """Only the identity step leaves the noised mean as it is."""
        return self.is_identity

    def init(self) -> dict[str, Any]:
        return {"velocity": None}

    def restore(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        velocity = saved.get("velocity")
        return {"velocity": None if velocity is None else [np.asarray(v) for v in velocity]}

    def update(self, state: RoundState, stage_state: Any) -> dict[str, Any]:
        if state.aggregate is None:
            raise ConfigError("ServerStep must come after a reducer (no aggregate to step to).")
        state.aggregate, velocity = server_update(
            state.global_weights,
            state.aggregate,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            velocity=(stage_state or self.init())["velocity"],
        )
        return {"velocity": velocity}
