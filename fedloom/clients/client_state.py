"""What a client keeps between rounds, and the numpy maths that uses it.

- **Client momentum** (Karimireddy, He & Jaggi, "Learning from History for Byzantine
  Robust Optimization", ICML 2021, Algorithm 1 with the local update in place of the
  gradient): with ``delta_t = w_local - w_global`` of round ``t`` and
  ``beta in [0, 1)``, the client keeps ``m_t = beta * m_{t-1} + (1 - beta) * delta_t``
  (``m_0 = 0``) and sends ``w_global + m_t``. Averaging over rounds shrinks the
  variance of honest updates, which is what robust aggregators (centred clipping,
  bucketing) rely on to tell attackers apart.
- **SCAFFOLD's client control variate** (Karimireddy et al., "SCAFFOLD: Stochastic
  Controlled Averaging for Federated Learning", ICML 2020, Algorithm 1 with option II):
  every local step's gradient is corrected by ``c - c_i`` (``c`` the server's variate,
  ``c_i`` the client's), and after ``K`` steps of size ``lr`` from ``x`` to ``y_i``
  the client keeps ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` and reports
  ``c_i+ - c_i``. Only trainable arrays take part; the others' entries stay zero.

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

__all__ = [
    "ClientState",
    "apply_client_momentum",
    "check_client_momentum",
    "matching_state",
    "scaffold_correction",
    "scaffold_variate_update",
]

LOGGER = logging.getLogger("fedloom")

NDArrays = list[np.ndarray]


@dataclass(frozen=True)
class ClientState:
    """A client's state between rounds; ``None`` fields: nothing kept yet.

    ``momentum``: the client-momentum buffer ``m``, one float array per model array
    (``get_weights()`` order; zero-size for integer arrays, which it leaves alone).
    ``control_variate``: SCAFFOLD's ``c_i``, the same layout.
    """

    momentum: tuple[np.ndarray, ...] | None = None
    control_variate: tuple[np.ndarray, ...] | None = None


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


def scaffold_correction(
    server_variate: Sequence[np.ndarray],
    client_variate: Sequence[np.ndarray] | None,
    like: Sequence[np.ndarray],
) -> NDArrays:
    """``c - c_i`` per model array (float32; ``c_i = None`` is zero; integer arrays
    get zeros of their shape, which the trainer ignores)."""
    correction = []
    for index, weight in enumerate(like):
        if not np.issubdtype(weight.dtype, np.floating):
            correction.append(np.zeros(weight.shape, np.float32))
            continue
        value = np.asarray(server_variate[index], dtype=np.float64)
        if client_variate is not None:
            value = value - np.asarray(client_variate[index], dtype=np.float64)
        correction.append(value.astype(np.float32))
    return correction


def scaffold_variate_update(
    server_variate: Sequence[np.ndarray],
    client_variate: Sequence[np.ndarray] | None,
    global_weights: Sequence[np.ndarray],
    local_weights: Sequence[np.ndarray],
    trainable: Sequence[bool],
    *,
    steps: int,
    learning_rate: float,
) -> tuple[tuple[np.ndarray, ...], NDArrays]:
    """Option II: ``(c_i+, c_i+ - c_i)`` with ``c_i+ = c_i - c + (x - y_i) / (K * lr)``.

    ``x``: ``global_weights``, ``y_i``: ``local_weights`` after ``steps`` (``K``) SGD
    steps of ``learning_rate``; ``client_variate=None`` is ``c_i = 0``. Arrays where
    ``trainable`` is False keep zero variates and zero deltas; integer arrays have a
    zero-size variate (as in :class:`ClientState`) and a zero delta of their shape.
    Computed in float64, returned as float32.
    """
    if steps < 1 or not learning_rate > 0:
        raise ValueError(f"SCAFFOLD needs steps >= 1 and learning_rate > 0; got {steps}, {learning_rate}")
    new_variate, delta = [], []
    for index, (x, y) in enumerate(zip(global_weights, local_weights)):
        if not np.issubdtype(np.asarray(x).dtype, np.floating):  # integer: no variate
            new_variate.append(np.zeros(0, np.float32))
            delta.append(np.zeros(np.shape(x), np.float32))
            continue
        if not trainable[index]:
            new_variate.append(np.zeros(np.shape(x), np.float32))
            delta.append(np.zeros(np.shape(x), np.float32))
            continue
        old = (np.zeros(np.shape(x)) if client_variate is None
               else np.asarray(client_variate[index], dtype=np.float64))
        drift = np.subtract(x, y, dtype=np.float64) / (steps * learning_rate)
        updated = old - np.asarray(server_variate[index], dtype=np.float64) + drift
        new_variate.append(updated.astype(np.float32))
        delta.append((updated - old).astype(np.float32))
    return tuple(new_variate), delta
