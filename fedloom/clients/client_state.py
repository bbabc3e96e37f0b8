"""What a client keeps between rounds, and the numpy maths that uses it.

- **Client momentum** (Karimireddy, He & Jaggi, "Learning from History for Byzantine
  Robust Optimization", ICML 2021, Algorithm 1 with the local update in place of the
  gradient): with ``delta_t = w_local - w_global`` of round ``t`` and
  ``beta in [0, 1)``, the client keeps ``m_t = beta * m_{t-1} + (1 - beta) * delta_t``
  (``m_0 = 0``) and sends ``w_global + m_t``. Averaging over rounds shrinks the
  variance of honest updates, which is what robust aggregators (centred clipping,
  bucketing) rely on to tell attackers apart.

The state is explicit: a :class:`ClientState` goes into a round and a new one comes
out. Where it is stored between rounds is the Flower adapters' business
(:mod:`fedloom.clients.client_app` keeps it in ``context.state``, the per-node state
Flower keeps in simulation and deployment alike). Pure numpy, no Flower import.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.errors import ConfigError

__all__ = ["ClientState", "apply_client_momentum", "check_client_momentum", "matching_state"]

LOGGER = logging.getLogger("fedloom")

NDArrays = list[np.ndarray]


@dataclass(frozen=True)
class ClientState:
    """A client's state between rounds; ``None`` fields: nothing kept yet.

    ``momentum``: the client-momentum buffer ``m``, one float array per model array
    (``get_weights()`` order; zero-size for integer arrays, which it leaves alone).
    """

    momentum: tuple[np.ndarray, ...] | None = None


def check_client_momentum(value: object) -> float:
    """``client-momentum`` as a float in ``[0, 1)``; ConfigError otherwise."""
    try:
        beta = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        beta = float("nan")
    if not 0.0 <= beta < 1.0:
        raise ConfigError(
            f"client-momentum must be in [0, 1) (0: off); received {value!r}. "
            "Karimireddy et al. use 0.9."
        )
    return beta


def matching_state(
    arrays: Sequence[np.ndarray] | None, like: Sequence[np.ndarray], what: str, client: str
) -> NDArrays | None:
    """``arrays`` if they fit the model ``like`` (count, shapes of its float arrays),
    else ``None`` with a logged reason: a stored state of another model is reset."""
    if arrays is None:
        return None
    expected = [w.shape if np.issubdtype(w.dtype, np.floating) else (0,) for w in like]
    got = [np.shape(a) for a in arrays]
    if got != expected:
        LOGGER.warning(
            "client %s: stored %s has shapes %s but the model has %s; it is reset to zero",
            client, what, got, expected)
        return None
    return [np.asarray(a) for a in arrays]


def apply_client_momentum(
    global_weights: Sequence[np.ndarray],
    local_weights: Sequence[np.ndarray],
    buffer: Sequence[np.ndarray] | None,
    beta: float,
) -> tuple[NDArrays, tuple[np.ndarray, ...]]:
    """One round of client momentum: ``(weights to send, new buffer)``.

    Float arrays: ``m = beta * m_prev + (1 - beta) * (local - global)`` computed in
    float64 and sent as ``global + m`` in the array's dtype; ``buffer=None`` is
    ``m_prev = 0``. Integer arrays (counters) are sent as trained; their buffer
    entry is a zero-size array.
    """
    sent, new_buffer = [], []
    for index, (start, local) in enumerate(zip(global_weights, local_weights)):
        if not np.issubdtype(local.dtype, np.floating):
            sent.append(local)
            new_buffer.append(np.zeros(0, np.float32))
            continue
        delta = np.subtract(local, start, dtype=np.float64)
        momentum = (1.0 - beta) * delta
        if buffer is not None:
            momentum += beta * np.asarray(buffer[index], dtype=np.float64)
        sent.append(np.add(start, momentum, dtype=np.float64).astype(local.dtype))
        new_buffer.append(momentum.astype(np.float32))
    return sent, tuple(new_buffer)
