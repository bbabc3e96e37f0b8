"""The server's step from the old global model towards the clients' aggregate.

With ``learning_rate=1`` and ``momentum=0`` the new global model *is* the aggregate
(plain FedAvg, McMahan et al. 2017). Otherwise the aggregate defines a pseudo-gradient
``delta = global - aggregate`` and the server takes an SGD step with momentum on it,
FedAvgM (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification", https://arxiv.org/abs/1909.06335):

    velocity <- momentum * velocity + delta
    global   <- global - learning_rate * velocity
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.aggregation._blocks import cast_like

__all__ = ["server_update"]


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
