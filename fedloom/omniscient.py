"""Omniscient attackers in simulation: a server-side ``Grid`` that lets the round's
attackers see the honest updates and send one crafted update.

Threat model (Baruch et al. 2019; Xie et al. 2020; Shejwalkar & Houmansadr 2021;
Karimireddy et al. 2022): the attackers collude and know every honest update of the
round before they reply, so they can send the update that moves the aggregate most
while still looking like the honest ones to a norm, distance or coordinate filter. A
real attacker would need to eavesdrop on the other clients or estimate their updates
from its own data; the simulation grants it that knowledge, the strongest case.

How the run carries it out, on any engine that hands the ``ServerApp`` a ``Grid``
(fedloom's :class:`fedloom.engine.LocalGrid`, Flower's Ray simulation):

1. The attackers (chosen by seed, by partition id: :class:`fedloom.attacks.AttackPlan`)
   train like everyone else; their client mod marks the reply with a ``ConfigRecord``
   named :data:`fedloom.attacks.ATTACKER_RECORD` (and reports false metadata if the
   plan says so). The mark is the colluders' side channel: the server-side ``Grid``
   does not know Flower's node-to-partition mapping on every engine.
2. :class:`OmniscientAttackGrid` wraps the experiment's grid. In ``send_and_receive``
   it keeps the global model of each outgoing train message, waits for all the
   replies, removes every mark, takes the deltas ``w - g`` of the valid unmarked
   replies (the honest updates), and replaces the arrays of each marked reply with
   ``g + crafted delta`` (:func:`crafted_delta`), keeping the reply's keys, dtypes,
   shapes and metrics. The strategy then sees an ordinary round.

An honest reply counts when it has the global model's keys and shapes and finite
values (a fault-injected one is left out). With fewer honest updates than the attack
needs (2; IPM 1) the attackers' honestly trained updates go through unchanged and a
warning is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedloom.attack_updates import (
    alie_update,
    ipm_update,
    mimic_update,
    min_max_update,
    min_sum_update,
)
from fedloom.attacks import ATTACKER_RECORD, AttackPlan
from fedloom.faults import train_round
from fedloom.records import arrayrecord_views, ndarrays_to_arrayrecord

__all__ = ["OmniscientAttackGrid", "attack_grid", "crafted_delta"]

LOGGER = logging.getLogger("fedloom")

Update = list[np.ndarray]


def crafted_delta(plan: AttackPlan, honest: Sequence[Update], num_clients: int,
                  num_attackers: int) -> Update:
    """The delta every attacker of the round sends (pure numpy).

    Args:
        plan: the attack (``plan.name`` in :data:`fedloom.attacks.OMNISCIENT`) and its options.
        honest: the round's ``n_h`` honest deltas, each a list of arrays.
        num_clients: ``n``, the clients whose updates reached the server this round
            (honest and attackers).
        num_attackers: ``f``, the attackers among them.

    ALIE without an explicit ``z`` uses Baruch et al.'s formula with the round's ``n``
    and ``f``; when the attackers hold half the round or more, where the formula has no
    solution, with ``f = floor(n/2)`` (one honest supporter needed: ``z = Phi^-1((n-1)/n)``).

    Raises:
        ValueError: too few honest updates for the attack.
    """
    if plan.name == "alie":
        if plan.z is not None:
            return alie_update(honest, num_clients, num_attackers, z=plan.z)
        return alie_update(honest, num_clients, min(num_attackers, num_clients // 2))
    if plan.name == "ipm":
        return ipm_update(honest, plan.eps)
    if plan.name == "minmax":
        return min_max_update(honest, plan.direction)
    if plan.name == "minsum":
        return min_sum_update(honest, plan.direction)
    if plan.name == "mimic":
        return mimic_update(honest)
    raise ValueError(f"attack {plan.name!r} is not an omniscient attack; crafted_delta computes "
                     "alie, ipm, minmax, minsum and mimic.")


def _only_arrays(content: RecordDict):
    records = content.array_records
    return next(iter(records.items())) if len(records) == 1 else (None, None)


def _delta(reply: Message, keys: list[str], global_weights: list[np.ndarray]) -> Update | None:
    """``w - g`` (float64) of a reply that has the global model's keys and shapes and
    finite values; ``None`` otherwise."""
    _, record = _only_arrays(reply.content)
    if record is None or list(record.keys()) != keys:
        return None
    try:
        weights = arrayrecord_views(record, keys)
    except Exception:  # undecodable bytes: not an update the attackers can use
        return None
    delta = []
    for w, g in zip(weights, global_weights):
        if w.shape != g.shape or not np.issubdtype(w.dtype, np.number):
            return None
        d = np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64)
        if not np.isfinite(d).all():
            return None
        delta.append(d)
    return delta


class OmniscientAttackGrid(Grid):
    """A Flower ``Grid`` that delegates to ``grid`` and lets the marked attackers' train
    replies carry the omniscient attack of ``plan`` (see the module docstring).

    Args:
        grid: the experiment's grid (any ``flwr.serverapp.Grid``).
        plan: an :class:`fedloom.attacks.AttackPlan` whose ``name`` is omniscient.
    """

    def __init__(self, grid: Grid, plan: AttackPlan) -> None:
        if not plan.omniscient:
            raise ValueError(f"OmniscientAttackGrid needs an omniscient attack (alie, ipm, minmax, "
                             f"minsum, mimic); received attack {plan.name!r}. Use the grid itself.")
        self.grid = grid
        self.plan = plan

    # ------------------------------------------------------------------ Grid API (delegated)
    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies as they are (marks removed): the attack needs the whole round, which
        only :meth:`send_and_receive` sees."""
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_content() and ATTACKER_RECORD in reply.content:
                del reply.content[ATTACKER_RECORD]
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        sent: dict[int, tuple[list[str], list[np.ndarray]]] = {}
        server_round = 0
        for message in messages:
            if message.metadata.message_type != MessageType.TRAIN:
                continue
            _, record = _only_arrays(message.content)
            if record is not None:
                keys = list(record.keys())
                # read-only views of the bytes the message holds: no copy per client
                sent[message.metadata.dst_node_id] = (keys, arrayrecord_views(record, keys))
                server_round = train_round(message)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.attack_round(server_round, sent, replies)
        return replies

    # ------------------------------------------------------------------ the attack
    def attack_round(self, server_round: int,
                     sent: Mapping[int, tuple[list[str], list[np.ndarray]]],
                     replies: Sequence[Message]) -> None:
        """Remove the marks from ``replies`` and give the marked ones the crafted update
        (in place). ``sent``: node id -> (keys, global weights) of its train message."""
        honest, attackers = [], []
        for reply in replies:
            if not reply.has_content():
                continue
            marked = ATTACKER_RECORD in reply.content
            if marked:
                del reply.content[ATTACKER_RECORD]
            node = reply.metadata.src_node_id
            if node not in sent:
                continue
            if marked:
                attackers.append(reply)
            else:
                delta = _delta(reply, *sent[node])
                if delta is not None:
                    honest.append(delta)
        if not attackers:
            return
        num_clients = len(honest) + len(attackers)
        try:
            crafted = crafted_delta(self.plan, honest, num_clients, len(attackers))
        except ValueError as err:
            LOGGER.warning("attack %s in round %d: %s The %d attackers' own updates go through.",
                           self.plan.name, server_round, err, len(attackers))
            return
        for reply in attackers:
            keys, global_weights = sent[reply.metadata.src_node_id]
            name, record = _only_arrays(reply.content)
            if record is None or list(record.keys()) != keys:
                LOGGER.warning("attack %s in round %d: an attacker's reply does not carry the "
                               "global model's arrays; left as it is.", self.plan.name, server_round)
                continue
            dtypes = [a.dtype for a in arrayrecord_views(record, keys)]
            weights = [(np.asarray(g, dtype=np.float64) + d).astype(dtype)
                       for g, d, dtype in zip(global_weights, crafted, dtypes)]
            reply.content[name] = ndarrays_to_arrayrecord(weights, keys)
        LOGGER.info("attack %s in round %d: %d attackers sent the crafted update (%d honest updates)",
                    self.plan.name, server_round, len(attackers), len(honest))


def attack_grid(grid: Grid, plan: AttackPlan) -> Grid:
    """``grid``, wrapped in an :class:`OmniscientAttackGrid` when the experiment's attack
    ``plan`` (``RunSettings.attack``) is omniscient and has attackers."""
    return OmniscientAttackGrid(grid, plan) if plan.omniscient and plan.active else grid
