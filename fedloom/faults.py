"""Fault injection for simulations: clients that crash, vanish, stall or send garbage.

A :class:`FaultPlan` decides, from the experiment seed alone, which clients are faulty
and what each of them does in each round; :meth:`FaultPlan.mod` is a Flower client mod
that acts it out around the unchanged ``ClientApp`` (train messages only). Because a
decision depends only on ``(seed, round, partition id)``, the same run injects the same
faults every time, including after a resume.

======================  =============================================================
fault                   what the client does
======================  =============================================================
``crash``               raises (the engine turns it into an error reply)
``disconnect``          its node is lost: an error reply with Flower's
                        ``NODE_UNAVAILABLE`` code, as the SuperLink sends for a dead node
``slow``                sleeps ``slow_seconds`` before training (past the round
                        timeout its reply is dropped)
``nan``                 a valid-looking update holding NaN values
``malformed``           an update with one array missing, a wrong shape, or a wrong
                        dtype (rotating)
``huge``                an update pushed 10^6 times farther from the global model
======================  =============================================================

Each faulty client draws one uniform number per round; the fault is chosen by where it
falls in ``[crash | disconnect | slow | nan | malformed | huge | none]`` (so the
probabilities must sum to at most 1). What the server does about each is in
``docs/faults.md``.

Hydra: ``python simulate.py faults=flaky`` or ``faults.crash=0.3`` (``conf/faults/``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedloom.errors import ConfigError, FedloomError
from fedloom.records import arrayrecord_views, ndarrays_to_arrayrecord

__all__ = [
    "FAULT_KINDS",
    "FaultPlan",
    "InjectedFault",
    "chosen_clients",
    "decision_rng",
    "train_round",
    "replace_arrays",
]

LOGGER = logging.getLogger("fedloom")

#: The faults, in the order their probability intervals are laid out.
FAULT_KINDS = ("crash", "disconnect", "slow", "nan", "malformed", "huge")
_FAULT_STREAM = 0x0FA17  # separates fault decisions from every other seeded stream
_MALFORMED = ("missing_array", "wrong_shape", "wrong_dtype")
HUGE_FACTOR = 1e6


class InjectedFault(FedloomError, RuntimeError):
    """Raised by a client that the fault plan told to crash."""


def decision_rng(seed: int, stream: int, *parts: int) -> np.random.Generator:
    """A numpy Generator for one decision, from integers only (same in every process)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, *map(int, parts)]))


def chosen_clients(num_clients: int, fraction: float, seed: int, stream: int) -> frozenset[int]:
    """``round(fraction * num_clients)`` partition ids drawn by ``seed`` (without replacement)."""
    count = int(round(fraction * num_clients))
    picked = decision_rng(seed, stream).choice(num_clients, size=count, replace=False)
    return frozenset(int(i) for i in picked)


def train_round(msg: Message) -> int:
    """The ``server-round`` of a train message (0 if the strategy did not send one)."""
    for record in msg.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])
    return 0


def _only_arrays(msg: Message) -> tuple[str, ArrayRecord]:
    records = msg.content.array_records
    if len(records) != 1:
        raise ValueError(f"expected one ArrayRecord in the message; found {sorted(records)}")
    return next(iter(records.items()))


def replace_arrays(reply: Message, arrays: list[np.ndarray], keys: list[str]) -> Message:
    """``reply`` with its only ArrayRecord replaced by ``arrays`` under ``keys``."""
    name, _ = _only_arrays(reply)
    reply.content[name] = ndarrays_to_arrayrecord(arrays, keys)
    return reply


@dataclass(frozen=True)
class FaultPlan:
    """Who fails how, and when, decided by ``seed``.

    Args:
        num_clients: clients in the federation (partition ids ``0..num_clients-1``).
        seed: the experiment seed.
        clients: fraction of the clients that can fail (chosen by ``seed``); 1.0 = all.
        crash, disconnect, slow, nan, malformed, huge: per-round probability that a
            faulty client does that (see the module table); their sum must be <= 1.
        slow_seconds: how long a slow client stalls.
    """

    num_clients: int
    seed: int = 0
    clients: float = 1.0
    crash: float = 0.0
    disconnect: float = 0.0
    slow: float = 0.0
    nan: float = 0.0
    malformed: float = 0.0
    huge: float = 0.0
    slow_seconds: float = 1.0
    faulty: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        for name in ("clients", *FAULT_KINDS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"faults.{name}={value!r} is not allowed: it must be a probability in [0, 1].")
        total = sum(getattr(self, k) for k in FAULT_KINDS)
        if total > 1 + 1e-12:
            raise ConfigError(
                f"faults: the fault probabilities sum to {total:g}; a client has one fault "
                f"per round at most, so {' + '.join(FAULT_KINDS)} must be <= 1."
            )
        if not (isinstance(self.slow_seconds, (int, float)) and self.slow_seconds >= 0):
            raise ConfigError(f"faults.slow_seconds={self.slow_seconds!r} is not allowed: it must be a number >= 0.")
        object.__setattr__(self, "faulty", chosen_clients(self.num_clients, self.clients, self.seed, _FAULT_STREAM))

    @classmethod
    def from_config(cls, section: Mapping[str, Any], num_clients: int, seed: int) -> FaultPlan:
        """Build from the ``faults`` config section (``name`` is ignored)."""
        options = {k: v for k, v in section.items() if k != "name"}
        known = {"clients", "slow_seconds", *FAULT_KINDS}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"faults.{unknown[0]} is not a fault setting; known: {', '.join(sorted(known))}.")
        return cls(num_clients, seed, **options)

    def to_config(self) -> dict[str, Any]:
        """The ``faults`` config section that :meth:`from_config` turns back into this plan."""
        return {key: getattr(self, key) for key in ("clients", *FAULT_KINDS, "slow_seconds")}

    @property
    def active(self) -> bool:
        """Whether any fault can happen at all."""
        return bool(self.faulty) and any(getattr(self, k) > 0 for k in FAULT_KINDS)

    def fault(self, server_round: int, partition_id: int) -> str | None:
        """The fault client ``partition_id`` commits in ``server_round`` (``None``: none)."""
        if partition_id not in self.faulty:
            return None
        draw = decision_rng(self.seed, _FAULT_STREAM, server_round, partition_id).random()
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, kind)
            if draw < edge:
                return kind
        return None

    def mod(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Flower client mod acting out the plan on train messages."""
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        server_round = train_round(msg)
        partition_id = int(context.node_config.get("partition-id", -1))
        kind = self.fault(server_round, partition_id)
        if kind is None:
            return call_next(msg, context)
        where = f"client {partition_id}, round {server_round}"
        LOGGER.info("fault injection: %s (%s)", kind, where)
        if kind == "crash":
            raise InjectedFault(f"injected crash ({where})")
        if kind == "disconnect":
            return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=f"injected disconnect ({where})"),
                           reply_to=msg)
        if kind == "slow":
            time.sleep(float(self.slow_seconds))
            return call_next(msg, context)
        _, sent = _only_arrays(msg)
        global_weights = arrayrecord_views(sent)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        _, record = _only_arrays(reply)
        keys = list(record.keys())
        weights = [np.array(w) for w in arrayrecord_views(record, keys)]
        if kind == "nan":
            weights[0].reshape(-1)[: max(1, weights[0].size // 10)] = np.nan
        elif kind == "huge":
            weights = [(g + HUGE_FACTOR * (w.astype(np.float64) - g)).astype(w.dtype)
                       for g, w in zip(global_weights, weights)]
        else:  # malformed, rotating through the ways an update can be broken
            variant = _MALFORMED[(server_round + partition_id) % len(_MALFORMED)]
            if variant == "missing_array" and len(weights) > 1:
                weights, keys = weights[:-1], keys[:-1]
            elif variant == "wrong_dtype":
                weights[0] = weights[0].astype(np.float64 if weights[0].dtype != np.float64 else np.float32)
            else:
                weights[0] = np.append(weights[0].reshape(-1), weights[0].reshape(-1)[:1])
        return replace_arrays(reply, weights, keys)
