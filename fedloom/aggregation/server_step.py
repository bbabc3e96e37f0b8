"""The server's step from the old global model towards the clients' aggregate: the
function :func:`server_update` and the pipeline stages :class:`ServerStep` (SGD with
momentum) and :class:`AdaptiveServerStep` (Adam, Yogi, Adagrad).

With ``learning_rate=1`` and ``momentum=0`` the new global model *is* the aggregate
(plain FedAvg, McMahan et al. 2017). Otherwise the aggregate defines a pseudo-gradient
``delta = global - aggregate`` and the server takes an SGD step with momentum on it,
FedAvgM (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification", https://arxiv.org/abs/1909.06335):

    velocity <- momentum * velocity + delta
    global   <- global - learning_rate * velocity

:class:`AdaptiveServerStep` runs the adaptive server optimisers of Reddi et al. 2021,
"Adaptive Federated Optimization" (FedAdam, FedYogi, FedAdagrad;
:mod:`~fedloom.aggregation.server_optimizers`) after *any* reducer, so an adaptive step
can follow a trimmed mean or a geometric median (Flower's FedAdam follows only its
weighted mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedloom.aggregation import server_optimizers
from fedloom.aggregation._blocks import cast_like
from fedloom.aggregation.round_state import RoundState
from fedloom.aggregation.stages import Stage
from fedloom.errors import ConfigError

__all__ = ["server_update", "ServerStep", "AdaptiveServerStep", "ADAPTIVE_OPTIMIZERS"]

#: The adaptive server optimisers :class:`AdaptiveServerStep` offers.
ADAPTIVE_OPTIMIZERS = ("adam", "yogi", "adagrad")


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


class AdaptiveServerStep(Stage):
    """An adaptive server optimiser on the step ``aggregate - global`` (Reddi et al. 2021,
    https://arxiv.org/abs/2003.00295): FedAdam, FedYogi or FedAdagrad as a stage.

    Args:
        optimizer: ``"adam"``, ``"yogi"`` or ``"adagrad"``.
        eta: server learning rate (``None``: Flower's default for ``optimizer``:
            0.1 for Adam and Adagrad, 0.01 for Yogi).
        beta_1: first-moment decay in ``[0, 1)`` (``None``: 0.9; Adagrad: 0, as in
            Flower, where ``m`` is the last step).
        beta_2: second-moment decay in ``[0, 1)`` (``None``: 0.99; unused by Adagrad).
        tau: adaptivity ``> 0`` added to ``sqrt(v)`` (``None``: 1e-3, the default of
            Flower's Message-API classes; Flower's legacy ``FedAdam``/``FedAdagrad``
            use 1e-9).

    Adam's learning rate is bias-corrected as Flower's ``FedAdam`` does it, with this
    stage's count of steps in place of Flower's round number (the same when every
    round aggregates; a skipped round does not count here).

    State, by stage name in checkpoints: ``{"count": steps taken, "first_moment":
    [arrays], "second_moment": [arrays]}``, all ``None`` before the first step; the
    moments have the model's shapes and float dtypes. Needs the global model.
    """

    kind = "server_step"
    needs_global_model = True
    stateful = True

    def __init__(self, optimizer: str = "adam", *, eta: float | None = None,
                 beta_1: float | None = None, beta_2: float | None = None,
                 tau: float | None = None) -> None:
        if optimizer not in ADAPTIVE_OPTIMIZERS:
            raise ConfigError(
                f"server optimizer must be one of {ADAPTIVE_OPTIMIZERS}; got {optimizer!r}.")
        defaults = server_optimizers.FLOWER_DEFAULTS[optimizer]
        self.optimizer = optimizer
        self.eta = defaults["eta"] if eta is None else eta
        self.beta_1 = defaults["beta_1"] if beta_1 is None else beta_1
        self.beta_2 = defaults.get("beta_2", 0.0) if beta_2 is None else beta_2
        self.tau = defaults["tau"] if tau is None else tau
        try:
            self._rule = self._make_rule()
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def _make_rule(self) -> server_optimizers.ServerOptimizer:
        if self.optimizer == "adam":
            return server_optimizers.adam(self.eta, self.beta_1, self.beta_2, self.tau)
        if self.optimizer == "yogi":
            return server_optimizers.yogi(self.eta, self.beta_1, self.beta_2, self.tau)
        return server_optimizers.adagrad(self.eta, self.tau, self.beta_1)

    def __repr__(self) -> str:
        return (f"AdaptiveServerStep(optimizer={self.optimizer!r}, eta={self.eta!r}, "
                f"beta_1={self.beta_1!r}, beta_2={self.beta_2!r}, tau={self.tau!r})")

    def init(self) -> dict[str, Any]:
        return {"count": None, "first_moment": None, "second_moment": None}

    def restore(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        def arrays(key: str) -> list[np.ndarray] | None:
            value = saved.get(key)
            return None if value is None else [np.asarray(a) for a in value]

        count = saved.get("count")
        return {"count": None if count is None else int(count),
                "first_moment": arrays("first_moment"), "second_moment": arrays("second_moment")}

    def update(self, state: RoundState, stage_state: Any) -> dict[str, Any]:
        if state.aggregate is None:
            raise ConfigError("AdaptiveServerStep must come after a reducer (no aggregate to step to).")
        saved = stage_state or self.init()
        model = [np.asarray(w) for w in state.global_weights]
        if saved["first_moment"] is None:
            optimizer_state = self._rule.init(model)
        else:
            optimizer_state = server_optimizers.AdaptiveState(
                int(saved["count"]), list(saved["first_moment"]), list(saved["second_moment"]))
        state.aggregate, new = self._rule.update(model, state.aggregate, optimizer_state)
        return {"count": new.count, "first_moment": new.first_moment,
                "second_moment": new.second_moment}
