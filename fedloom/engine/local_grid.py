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
  and messages not started by then get none, as with a slow client in Flower.

What it adds: node ids and message ids follow ``seed``, so with a seeded strategy two
runs pick the same clients and end with bit-identical weights.

What it cannot do: interrupt a client call that is running (calls run one at a time,
in this process), use GPUs per client, or spread over machines. Use Flower's Ray
engine for those.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Iterable, Sequence

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
from flwr.supercore.task_identity import TaskIdentity

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
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        seed: int = 0,
        run_config: UserConfig | None = None,
        node_configs: Sequence[UserConfig] | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"LocalGrid needs num_nodes >= 1; got {num_nodes}.")
        rng = random.Random(seed)
        self._client_app = client_app
        self._run = Run.create_empty(run_id=rng.getrandbits(63))
        self._run.override_config = dict(run_config or {})
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
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    # ------------------------------------------------------------------ Grid API
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

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
            if message.metadata.dst_node_id not in self.contexts:
                raise ValueError(
                    f"Message for unknown node {message.metadata.dst_node_id}; "
                    f"this LocalGrid has {len(self._node_ids)} nodes (see get_node_ids())."
                )
            message_id = f"{self._run.run_id:x}-{self._next_id}"
            self._next_id += 1
            message.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Run the pending messages among ``message_ids`` (in push order), return replies."""
        wanted = list(message_ids)
        for message_id in wanted:
            if message_id in self._pending:
                self._deliver(message_id, deadline=None)
        return [self._replies.pop(i) for i in wanted if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
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
        message = self._pending.pop(message_id)
        node_id = message.metadata.dst_node_id
        delivered = Message(_copy_content(message.content), node_id,
                            message.metadata.message_type, group_id=message.metadata.group_id)
        delivered.metadata.__dict__.update(
            {"_message_id": message_id, "_src_node_id": message.metadata.src_node_id,
             "_run_id": message.metadata.run_id}
        )
        self.bytes_down += _record_bytes(message.content)
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
        self.clientapp_seconds += time.perf_counter() - started
        if deadline is not None and time.monotonic() > deadline:
            LOGGER.warning("reply from node %d arrived after the timeout; dropped", node_id)
            return
        reply.metadata.__dict__["_message_id"] = f"{message_id}-reply"
        if reply.has_content():
            self.bytes_up += _record_bytes(reply.content)
        self._replies[message_id] = reply


def run_local(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    *,
    seed: int = 0,
    run_config: UserConfig | None = None,
) -> Context:
    """Run a Flower ``ServerApp`` against ``num_nodes`` local ``ClientApp`` nodes.

    Returns the server's ``Context`` after the run (as Flower's runtime does).
    """
    grid = LocalGrid(client_app, num_nodes, seed=seed, run_config=run_config)
    context = Context(
        run_id=grid.run.run_id, node_id=SUPERLINK_NODE_ID, node_config={},
        state=RecordDict(), run_config=dict(run_config or {}),
    )
    server_app(grid=grid, context=context)
    return context
