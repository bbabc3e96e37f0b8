"""A Ray-free simulation engine: Flower's ``Grid`` delivering messages to ``ClientApp``s
in this process.

Flower's simulation engine runs each ``ClientApp`` call in a Ray actor. That costs a
Ray start (about 15 s here), gigabytes of memory for the process tree, and tens of
milliseconds per message, while a small model's local training can take a millisecond.
:class:`LocalGrid` implements Flower's public ``flwr.serverapp.Grid`` interface and
hands each message straight to the unchanged ``ClientApp``, so any Message-API strategy
(fedloom's or Flower's own) runs on it through its normal ``start(grid=...)`` path.

What it keeps from Flower's engine:

- one persistent :class:`flwr.app.Context` per node (``node_config`` with
  ``partition-id`` and ``num-partitions``, the run config, and ``state`` that survives
  between rounds);
- a ``ClientApp`` exception becomes an error reply (``ErrorCode.CLIENT_APP_RAISED_EXCEPTION``)
  and the run goes on;
- ``send_and_receive(timeout=...)``: replies that arrive after the deadline are dropped
  and messages not started by then get none, as with a slow client in Flower;
- every pushed message is checked as Flower's ``InMemoryGrid`` checks it (an instruction,
  not a reply, with a positive TTL, not yet delivered), and its TTL is honoured: a
  message that expired before its turn is not delivered, and a reply made after the
  message's ``created_at + ttl`` is dropped like a late reply;
- ``set_run`` moves every node's ``Context`` to the new run (run id, run config; a
  different run id starts with empty node state, as each Flower run does).

Identity is per grid, not per process: Flower's ``Message`` constructor stamps the
process-wide ``TaskIdentity`` (run id, source node) on every instruction, which
Flower's runtimes set once per process. ``LocalGrid`` sets it only where nothing has
(so strategies can build messages at all) and stamps its *own* run id and the
SuperLink's node id on each message it accepts, so two grids in one process (e.g.
two experiments in one test session) never send messages under each other's run.

What it adds: node ids and message ids follow ``seed``, so with a seeded strategy two
runs pick the same clients and end with bit-identical weights.

Workers: with ``workers=W > 1`` a batch of messages runs on W threads of this process
(:mod:`fedloom.engine.workers`), each training on its own model replica. Results do not
depend on W: a node's messages run in push order on one thread, replies come back in
the order of the messages, every client seeds its shuffle from (seed, partition id,
round), and the bookkeeping (bytes, timings, warnings, dropped late replies) is done
afterwards in message order. ``workers=1`` (the default) runs every call in the
calling thread, one after another.

What it cannot do: interrupt a client call that is running (a late reply is dropped
when the call ends), use GPUs per client, or spread over machines. Use Flower's Ray
engine for those.
"""

from __future__ import annotations

import copy
import datetime
import logging
import random
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from fedloom.engine.workers import run_chains

try:  # Flower >= 1.42: the process-wide identity Message() stamps on instructions
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # pragma: no cover - older or reorganised Flower
    TaskIdentity = None

__all__ = ["LocalGrid", "run_local"]

LOGGER = logging.getLogger("fedloom")

UserConfig = dict[str, bool | int | float | str]


def _record_bytes(content: RecordDict) -> int:
    return sum(len(a.data) for record in content.array_records.values() for a in record.values())


def _copy_content(content: RecordDict) -> RecordDict:
    """A structural copy: the client may replace records freely; array bytes are shared
    (they are immutable), as a transport would hand it its own copy."""
    copied = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            copied[key] = ArrayRecord(dict(record.items()))
        elif isinstance(record, MetricRecord):
            copied[key] = MetricRecord(dict(record.items()))
        else:
            copied[key] = ConfigRecord(dict(record.items()))
    return copied


class LocalGrid(Grid):
    """Flower ``Grid`` that runs a ``ClientApp`` for ``num_nodes`` nodes in this process.

    Args:
        client_app: the unchanged Flower ``ClientApp`` every node runs.
        num_nodes: how many nodes (virtual SuperNodes); node ``i`` gets
            ``node_config = {"partition-id": i, "num-partitions": num_nodes}``.
        seed: seeds node ids (and nothing global).
        run_config: the run config every ``Context`` carries.
        node_configs: optional per-node extra node config (merged over the default).
        workers: how many threads run a batch of client calls (1: one after another
            in the calling thread; see :func:`fedloom.engine.workers.resolve_workers`
            for ``engine.workers``). Results are bit-identical for any value.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        seed: int = 0,
        run_config: UserConfig | None = None,
        node_configs: Sequence[UserConfig] | None = None,
        workers: int = 1,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"LocalGrid needs num_nodes >= 1; got {num_nodes}.")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(
                f"LocalGrid needs workers >= 1 (an int); got workers={workers!r}. Use 1 for "
                "serial calls, or fedloom.engine.workers.resolve_workers(None) for all cores."
            )
        self.workers = workers
        rng = random.Random(seed)
        self._client_app = client_app
        self._run = Run.create_empty(run_id=rng.getrandbits(63))
        self._run.override_config = dict(run_config or {})
        self._node_configs = node_configs
        node_ids: list[int] = []
        while len(node_ids) < num_nodes:  # distinct, never the SuperLink's id
            node_id = rng.getrandbits(63)
            if node_id not in node_ids and node_id != SUPERLINK_NODE_ID:
                node_ids.append(node_id)
        self._node_ids = node_ids
        self.contexts: dict[int, Context] = {}
        for index, node_id in enumerate(node_ids):
            node_config: UserConfig = {"partition-id": index, "num-partitions": num_nodes}
            if node_configs is not None:
                node_config.update(node_configs[index])
            self.contexts[node_id] = Context(
                run_id=self._run.run_id, node_id=node_id, node_config=node_config,
                state=RecordDict(), run_config=dict(run_config or {}),
            )
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self._next_id = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.clientapp_seconds = 0.0
        _ensure_task_identity(self._run.run_id)

    # ------------------------------------------------------------------ Grid API
    def set_run(self, run: Run) -> None:
        """Run the next messages under ``run``: every node's ``Context`` takes its run id
        and run config (``run.override_config``); node state is kept for the same run
        id and starts empty for another, as Flower keeps one state per run and node."""
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of flwr's Run, got {type(run).__name__}.")
        for context in self.contexts.values():
            if context.run_id != run.run_id:
                context.state = RecordDict()
            context.run_id = run.run_id
            context.run_config = dict(run.override_config)
        self._run = run

    @property
    def run(self) -> Run:
        """A copy of the current run (as Flower's grids return)."""
        return Run(**vars(self._run))

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def partition_id(self, node_id: int) -> int:
        """The partition id (index) of ``node_id``."""
        return int(self.contexts[node_id].node_config["partition-id"])

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"{self._run.run_id:x}-{self._next_id}"
            message.metadata.__dict__["_message_id"] = message_id
            _check_message(message)
            if message.metadata.dst_node_id not in self.contexts:
                raise ValueError(
                    f"Message for unknown node {message.metadata.dst_node_id}; "
                    f"this LocalGrid has {len(self._node_ids)} nodes (see get_node_ids())."
                )
            self._next_id += 1
            # this grid's identity, whatever the process-wide TaskIdentity says
            message.metadata.__dict__["_run_id"] = self._run.run_id
            message.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(
        self,
        reply_to_message_ids: Iterable[str] | None = None,
        *,
        message_ids: Iterable[str] | None = None,
    ) -> Iterable[Message]:
        """Run the pending messages among ``reply_to_message_ids`` (in push order) and
        return their replies.

        Takes both Flower signatures: 1.42's ``pull_messages(message_ids)`` and 1.43's
        ``pull_messages(reply_to_message_ids=None, *, message_ids=None)`` (where
        ``message_ids`` is a deprecated alias). ``None`` means no filter: every pending
        message runs; an empty iterable matches nothing.
        """
        if message_ids is not None:
            if reply_to_message_ids is not None:
                raise TypeError(
                    "pull_messages got both reply_to_message_ids and message_ids; they are "
                    "the same filter (message_ids is Flower 1.42's name): pass only one."
                )
            reply_to_message_ids = message_ids
        if reply_to_message_ids is None:
            wanted = list(self._pending) + [i for i in self._replies if i not in self._pending]
        else:
            wanted = list(reply_to_message_ids)
        if self.workers == 1:
            for message_id in wanted:
                if message_id in self._pending:
                    self._deliver(message_id, deadline=None)
        else:
            self._deliver_parallel([i for i in wanted if i in self._pending], deadline=None)
        return [self._replies.pop(i) for i in wanted if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.workers > 1:
            not_started = self._deliver_parallel(ids, deadline)
            if not_started:
                LOGGER.warning("timeout after %.1f s: %d messages not delivered",
                               timeout, not_started)
        else:
            for message_id in ids:
                if deadline is not None and time.monotonic() >= deadline:
                    LOGGER.warning("timeout after %.1f s: %d messages not delivered",
                                   timeout, sum(i in self._pending for i in ids))
                    break
                self._deliver(message_id, deadline)
        for message_id in ids:  # undelivered ones expire, as with a TTL
            self._pending.pop(message_id, None)
        return [self._replies.pop(i) for i in ids if i in self._replies]

    # ------------------------------------------------------------------ delivery
    def _deliver(self, message_id: str, deadline: float | None) -> None:
        """Run one pending message now, in this thread, and file its reply."""
        message = self._pending.pop(message_id)
        self._file_reply(message_id, message, self._call(message), deadline)

    def _deliver_parallel(self, message_ids: Sequence[str], deadline: float | None) -> int:
        """Run these pending messages on the worker threads (one chain per node, in
        push order) and file their replies in message order; return how many were
        not started because ``deadline`` had passed."""
        messages = [(i, self._pending.pop(i)) for i in message_ids if i in self._pending]
        chains: dict[int, list[tuple[str, Message]]] = {}
        for message_id, message in messages:
            chains.setdefault(message.metadata.dst_node_id, []).append((message_id, message))

        def call(item: tuple[str, Message]) -> _Call | None:
            if deadline is not None and time.monotonic() >= deadline:
                return None  # not started in time: no reply, as serially
            return self._call(item[1])

        done = run_chains(list(chains.values()), call, self.workers)
        outcomes = {item[0]: outcome for chain, results in zip(chains.values(), done)
                    for item, outcome in zip(chain, results)}
        not_started = 0
        for message_id, message in messages:
            outcome = outcomes[message_id]
            if outcome is None:
                not_started += 1
            else:
                self._file_reply(message_id, message, outcome, deadline)
        return not_started

    def _call(self, message: Message) -> _Call:
        """Hand ``message`` to the ``ClientApp`` (touching only its node's ``Context``);
        a raised exception becomes an error reply. Safe on any thread."""
        node_id = message.metadata.dst_node_id
        if time.time() >= message.metadata.created_at + message.metadata.ttl:
            return _Call(reply=None, seconds=0.0, ended=time.monotonic(), ended_at=time.time())
        delivered = Message(content=_copy_content(message.content),
                            metadata=copy.copy(message.metadata))
        delivered.metadata.delivered_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
        started = time.perf_counter()
        try:
            reply = self._client_app(delivered, self.contexts[node_id])
        except Exception as ex:  # a failing client is a reply, never a crash
            LOGGER.error("ClientApp on node %d raised %s: %s\n%s", node_id,
                         type(ex).__name__, ex, traceback.format_exc())
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                      reason=f"{type(ex)}:<'{ex}'>"),
                reply_to=delivered,
            )
        return _Call(reply=reply, seconds=time.perf_counter() - started,
                     ended=time.monotonic(), ended_at=time.time())

    def _file_reply(self, message_id: str, message: Message, outcome: _Call,
                    deadline: float | None) -> None:
        """Count a finished call and keep its reply unless it came too late."""
        node_id = message.metadata.dst_node_id
        if outcome.reply is None:
            LOGGER.warning("message %s to node %d expired (TTL %.1f s) before delivery; "
                           "not delivered", message_id, node_id, message.metadata.ttl)
            return
        self.bytes_down += _record_bytes(message.content)
        self.clientapp_seconds += outcome.seconds
        if deadline is not None and outcome.ended > deadline:
            LOGGER.warning("reply from node %d arrived after the timeout; dropped", node_id)
            return
        if outcome.ended_at > message.metadata.created_at + message.metadata.ttl:
            LOGGER.warning("reply from node %d arrived after the message's TTL (%.1f s); "
                           "dropped", node_id, message.metadata.ttl)
            return
        reply = outcome.reply
        reply.metadata.__dict__["_message_id"] = f"{message_id}-reply"
        if reply.has_content():
            self.bytes_up += _record_bytes(reply.content)
        self._replies[message_id] = reply


@dataclass(frozen=True)
class _Call:
    """What one client call produced: its reply (``None``: the message had expired and
    was not delivered), the ClientApp's seconds, and when it ended (``time.monotonic()``
    for the round's timeout, ``time.time()`` for the message's TTL)."""

    reply: Message | None
    seconds: float
    ended: float
    ended_at: float


def _check_message(message: Message) -> None:
    """Refuse what Flower's ``InMemoryGrid._check_message`` refuses."""
    metadata = message.metadata
    problems = [
        text for bad, text in (
            (metadata.message_id == "", "it has no message id"),
            (metadata.reply_to_message_id != "",
             f"it is a reply (to message {metadata.reply_to_message_id})"),
            (not metadata.ttl > 0, f"its TTL is {metadata.ttl} s"),
            (metadata.delivered_at != "", f"it was already delivered at {metadata.delivered_at}"),
        ) if bad
    ]
    if problems:
        raise ValueError(
            f"Invalid message for node {metadata.dst_node_id}: {'; '.join(problems)}. A grid "
            "accepts only new instruction messages with a TTL > 0: build one with "
            "Message(content, dst_node_id, message_type, ttl=...)."
        )


def _ensure_task_identity(run_id: int) -> None:
    """Give Flower's process-wide ``TaskIdentity`` a value where no runtime has set one
    (``Message(...)`` needs it); never overwrite one (another grid's or a runtime's)."""
    if TaskIdentity is None:
        return
    try:
        TaskIdentity.run_id
    except RuntimeError:
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID


def run_local(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    *,
    seed: int = 0,
    run_config: UserConfig | None = None,
    workers: int = 1,
) -> Context:
    """Run a Flower ``ServerApp`` against ``num_nodes`` local ``ClientApp`` nodes
    (``workers`` threads run each round's client calls; see :class:`LocalGrid`).

    Returns the server's ``Context`` after the run (as Flower's runtime does).
    """
    grid = LocalGrid(client_app, num_nodes, seed=seed, run_config=run_config, workers=workers)
    context = Context(
        run_id=grid.run.run_id, node_id=SUPERLINK_NODE_ID, node_config={},
        state=RecordDict(), run_config=dict(run_config or {}),
    )
    server_app(grid=grid, context=context)
    return context
