"""Adaptive server optimisers: FedAdam, FedYogi, FedAdagrad.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan 2021, "Adaptive Federated
Optimization", ICLR 2021, https://arxiv.org/abs/2003.00295 (Algorithm 2).

The server treats ``delta = aggregate - global`` (the reducer's output minus the model
the clients started from, as Flower's ``FedOpt`` computes it) as a step direction and
keeps two moments per coordinate::

    m <- beta_1 * m + (1 - beta_1) * delta
    v <- beta_2 * v + (1 - beta_2) * delta^2                       (Adam)
    v <- v - (1 - beta_2) * delta^2 * sign(v - delta^2)            (Yogi)
    v <- v + delta^2                                               (Adagrad)
    global <- global + eta_t * m / (sqrt(v) + tau)

``eta_t = eta`` for Yogi and Adagrad. For Adam it is Flower's bias-corrected rate
``eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` in round ``t`` (``t = 1`` for the
first update; Flower uses ``server_round + 1``); ``bias_correction=False`` gives the
paper's Algorithm 2, which has none.

Each optimiser is a pair of pure functions in the optax manner::

    optimizer = adam(eta=0.1)
    state = optimizer.init(global_weights)
    new_weights, state = optimizer.update(global_weights, aggregate, state)

The state (:class:`AdaptiveState`: the update count and both moments) is an explicit
value: save it to resume exactly. Moments are kept in the model's float dtype (float32
for a float32 model, like Flower's ``zeros_like``); each step is computed in float64 and
the new weights are cast back to the model's dtypes.

Defaults are those of Flower's Message-API strategies (``flwr.serverapp.strategy``,
``FLOWER_DEFAULTS``). Flower's legacy ``flwr.server.strategy.FedAdam`` and
``FedAdagrad`` default to ``tau=1e-9`` instead of ``1e-3``; pass ``tau=1e-9`` to match
them. ``eta_l`` (the client learning rate Flower's classes store but never use in the
server step) is listed in ``FLOWER_DEFAULTS`` for the client configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from fedloom.aggregation._blocks import cast_like

__all__ = [
    "AdaptiveState",
    "ServerOptimizer",
    "adam",
    "yogi",
    "adagrad",
    "FLOWER_DEFAULTS",
]

#: Flower 1.42's defaults (``flwr.serverapp.strategy.FedAdam/FedYogi/FedAdagrad``).
FLOWER_DEFAULTS: dict[str, dict[str, float]] = {
    "adam": {"eta": 1e-1, "eta_l": 1e-1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "yogi": {"eta": 1e-2, "eta_l": 0.0316, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "adagrad": {"eta": 1e-1, "eta_l": 1e-1, "beta_1": 0.0, "tau": 1e-3},
}


class AdaptiveState(NamedTuple):
    """The state of an adaptive server optimiser between rounds.

    Attributes:
        count: updates taken so far (0 after ``init``).
        first_moment: ``m``, one array per model array (model shapes, float dtype).
        second_moment: ``v``, likewise; every value >= 0 for Adam and Adagrad.
    """

    count: int
    first_moment: list[np.ndarray]
    second_moment: list[np.ndarray]


class ServerOptimizer(NamedTuple):
    """``init(weights) -> state`` and ``update(global, aggregate, state) -> (weights, state)``."""

    init: Callable[[Sequence[np.ndarray]], AdaptiveState]
    update: Callable[[Sequence[np.ndarray], Sequence[np.ndarray], AdaptiveState],
                     tuple[list[np.ndarray], AdaptiveState]]


def adam(eta: float = 1e-1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3,
         *, bias_correction: bool = True) -> ServerOptimizer:
    """FedAdam: Adam on the server's step direction (Reddi et al. 2021)."""
    return _adaptive("adam", eta, beta_1, beta_2, tau, bias_correction)


def yogi(eta: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99,
         tau: float = 1e-3) -> ServerOptimizer:
    """FedYogi: Yogi's sign-controlled second moment (Zaheer et al. 2018) on the server."""
    return _adaptive("yogi", eta, beta_1, beta_2, tau, False)


def adagrad(eta: float = 1e-1, tau: float = 1e-3, beta_1: float = 0.0) -> ServerOptimizer:
    """FedAdagrad: the second moment sums every squared step. Flower fixes ``beta_1=0``
    (``m`` is the last step); the paper allows momentum."""
    return _adaptive("adagrad", eta, beta_1, 0.0, tau, False)


def _adaptive(kind: str, eta: float, beta_1: float, beta_2: float, tau: float,
              bias_correction: bool) -> ServerOptimizer:
    if not eta > 0 or not tau > 0:
        raise ValueError(f"server {kind} needs eta > 0 and tau > 0; received eta={eta}, tau={tau}.")
    if not 0.0 <= beta_1 < 1.0 or not 0.0 <= beta_2 < 1.0:
        raise ValueError(f"server {kind} needs beta_1 and beta_2 in [0, 1); received "
                         f"beta_1={beta_1}, beta_2={beta_2}.")

    def init(weights: Sequence[np.ndarray]) -> AdaptiveState:
        zeros = [np.zeros(np.shape(w), dtype=_moment_dtype(w)) for w in weights]
        return AdaptiveState(0, zeros, [z.copy() for z in zeros])

    def update(global_weights: Sequence[np.ndarray], aggregate: Sequence[np.ndarray],
               state: AdaptiveState) -> tuple[list[np.ndarray], AdaptiveState]:
        _check_matching(global_weights, aggregate, state)
        count = state.count + 1
        rate = eta
        if bias_correction:
            rate = eta * np.sqrt(1.0 - beta_2 ** (count + 1.0)) / (1.0 - beta_1 ** (count + 1.0))
        new_weights, first, second = [], [], []
        for old, agg, m, v in zip(global_weights, aggregate, state.first_moment, state.second_moment):
            old64 = np.asarray(old, dtype=np.float64)
            delta = np.asarray(agg, dtype=np.float64) - old64
            m = beta_1 * np.asarray(m, dtype=np.float64) + (1.0 - beta_1) * delta
            v = np.asarray(v, dtype=np.float64)
            squared = delta * delta
            if kind == "adam":
                v = beta_2 * v + (1.0 - beta_2) * squared
            elif kind == "yogi":
                v = v - (1.0 - beta_2) * squared * np.sign(v - squared)
            else:
                v = v + squared
            new_weights.append(cast_like(old64 + rate * m / (np.sqrt(v) + tau), np.asarray(old)))
            first.append(m.astype(_moment_dtype(old)))
            second.append(v.astype(_moment_dtype(old)))
        return new_weights, AdaptiveState(count, first, second)

    return ServerOptimizer(init, update)


def _moment_dtype(array: np.ndarray) -> np.dtype:
    dtype = np.asarray(array).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _check_matching(global_weights, aggregate, state: AdaptiveState) -> None:
    sizes = (len(global_weights), len(aggregate), len(state.first_moment), len(state.second_moment))
    if len(set(sizes)) != 1:
        raise ValueError(
            f"server optimiser update needs one array per model array in global weights, "
            f"aggregate and state; received {sizes[0]}, {sizes[1]} and {sizes[2]}/{sizes[3]}. "
            "Create the state with init(global_weights) for this model.")
    for index, (old, agg, m) in enumerate(zip(global_weights, aggregate, state.first_moment)):
        if np.shape(old) != np.shape(agg) or np.shape(old) != np.shape(m):
            raise ValueError(
                f"array {index}: global shape {np.shape(old)}, aggregate shape {np.shape(agg)}, "
                f"state shape {np.shape(m)}; they must match (init the state for this model).")
