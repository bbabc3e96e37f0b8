"""The fedloom Keras client for Flower's Message API (``flwr.clientapp.ClientApp``).

Pairs with Message-API strategies (``flwr.serverapp.strategy``, ``fedloom.strategies``)::

    from fedloom.clients import get_trainer, make_client_app
    from fedloom.models import ModelSpec

    SPEC = ModelSpec("mlp", (64,), 10)

    def load_client(context):
        pid = int(context.node_config["partition-id"])
        return get_trainer(SPEC), load_my_partition(pid)  # x_train, y_train, x_val, y_val

    app = make_client_app(load_client)

Message layout (Flower's ``FedAvg`` defaults):

* train request: ``content["arrays"]`` (ArrayRecord, the global weights in
  ``get_weights()`` order) and ``content["config"]`` (ConfigRecord with
  ``local-epochs``, ``batch-size``, ``learning-rate``, ``server-round``). If the
  strategy uses other record names, the message's only ArrayRecord/ConfigRecord is
  used.
* train reply: ``{"arrays": ArrayRecord(new weights, same keys as received),
  "metrics": MetricRecord({"num-examples", "train_loss", "train_accuracy",
  "val_loss", "val_accuracy", "quality"})}``.
* evaluate reply: ``{"metrics": MetricRecord({"num-examples", "loss", "accuracy"})}``.

SCAFFOLD (option II, Karimireddy et al., ICML 2020): a train request may carry the
server's control variate as an extra ArrayRecord ``"scaffold-c"`` (same keys as the
model); the client then corrects every local step by ``c - c_i`` and its reply
carries an extra ArrayRecord ``"scaffold-delta-c"`` (``c_i+ - c_i``, same keys).

Per-client state (the client-momentum buffer, SCAFFOLD's ``c_i``) lives in
``context.state`` under :data:`MOMENTUM_RECORD` and :data:`VARIATE_RECORD`, the per-node
state Flower keeps between rounds in simulation (its Ray engine, fedloom's local
engine) and deployment alike.

The work itself is :mod:`fedloom.clients.local_update`, shared with the legacy
``NumPyClient``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedloom.clients.local_update import (
    ClientState,
    SplitData,
    TrainConfig,
    derive_seed,
    evaluate_on_client,
    train_client_round,
)
from fedloom.clients.trainer import KerasTrainer
from fedloom.errors import ConfigError
from fedloom.records import arrayrecord_views, ndarrays_to_arrayrecord

__all__ = [
    "MOMENTUM_RECORD",
    "SCAFFOLD_DELTA_RECORD",
    "SCAFFOLD_RECORD",
    "VARIATE_RECORD",
    "LoadClient",
    "load_client_state",
    "make_client_app",
    "store_client_state",
]

LoadClient = Callable[[Context], tuple[KerasTrainer, SplitData]]

MOMENTUM_RECORD = "fedloom.client-momentum"
VARIATE_RECORD = "fedloom.scaffold-c-i"  # the client's own SCAFFOLD variate
SCAFFOLD_RECORD = "scaffold-c"  # train message: the server's variate c
SCAFFOLD_DELTA_RECORD = "scaffold-delta-c"  # train reply: c_i+ - c_i


def load_client_state(context: Context) -> ClientState:
    """The :class:`ClientState` kept in ``context.state`` (empty if none)."""
    def arrays(name: str) -> tuple | None:
        record = context.state.get(name)
        return tuple(arrayrecord_views(record)) if isinstance(record, ArrayRecord) else None

    return ClientState(momentum=arrays(MOMENTUM_RECORD), control_variate=arrays(VARIATE_RECORD))


def store_client_state(context: Context, state: ClientState) -> None:
    """Keep ``state`` in ``context.state`` for the node's next round."""
    for name, arrays in ((MOMENTUM_RECORD, state.momentum), (VARIATE_RECORD, state.control_variate)):
        if arrays is not None:
            context.state[name] = ndarrays_to_arrayrecord(
                list(arrays), [str(i) for i in range(len(arrays))])

def _record(content: RecordDict, kind: str, key: str) -> Any:
    """``content[key]`` if it is a record of this kind, else the only one of that kind."""
    records = content.array_records if kind == "ArrayRecord" else content.config_records
    if kind == "ArrayRecord":
        records = {k: r for k, r in records.items() if k != SCAFFOLD_RECORD}
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    if kind == "ConfigRecord" and not records:
        return ConfigRecord()
    raise ConfigError(
        f"the message must carry one {kind} (named {key!r}); it has "
        f"{sorted(records) if records else 'none'}. Name the record {key!r} in the "
        "strategy (Flower's FedAvg default)."
    )


def _server_variate(content: RecordDict, keys: list[str]) -> list | None:
    """SCAFFOLD's server variate ``c`` in the model's key order, if the message has one."""
    record = content.array_records.get(SCAFFOLD_RECORD)
    if record is None:
        return None
    if list(record.keys()) != keys:
        raise ConfigError(
            f"the {SCAFFOLD_RECORD!r} ArrayRecord has keys {list(record.keys())[:5]}...; "
            f"expected the model's keys {keys[:5]}... in the same order.")
    return arrayrecord_views(record, keys)


def _client_seed(context: Context, seed: int) -> int:
    client = context.node_config.get("partition-id", context.node_id)
    try:
        client = int(client)
    except (TypeError, ValueError):
        client = context.node_id
    return derive_seed(seed, client)


def make_client_app(
    load_client: LoadClient, *, seed: int = 0, mods: list[Mod] | None = None
) -> ClientApp:
    """A Message-API ``ClientApp`` that trains and evaluates with a ``KerasTrainer``.

    Args:
        load_client: ``context -> (trainer, data)``, called for every message;
            ``data`` is any object with ``x_train, y_train, x_val, y_val`` (e.g.
            ``fedloom.data.ClientData``). Return a cached trainer
            (:func:`fedloom.clients.get_trainer`) and cache the data, so that a
            simulation worker builds the model and loads each partition once.
        seed: experiment seed. A client's shuffle in round ``r`` is seeded with
            ``derive_seed(derive_seed(seed, partition_id), r)`` (``node_id`` if the
            node config has no ``partition-id``), so rounds and clients differ and
            runs repeat.
        mods: Flower mods wrapped around both handlers (e.g.
            ``fedloom.compression.compression_mod("int8")``, Flower's clipping mods).
    """
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        trainer, data = load_client(context)
        arrays = _record(msg.content, "ArrayRecord", "arrays")
        config = _record(msg.content, "ConfigRecord", "config")
        keys = list(arrays.keys())
        cfg = TrainConfig.from_config(config)
        server_variate = _server_variate(msg.content, keys)
        needs_state = cfg.needs_state or server_variate is not None
        result = train_client_round(
            trainer, data, arrayrecord_views(arrays, keys), cfg,
            seed=_client_seed(context, seed),
            state=load_client_state(context) if needs_state else ClientState(),
            server_variate=server_variate, client=str(context.node_id),
        )
        store_client_state(context, result.state)
        content = RecordDict({
            "arrays": ndarrays_to_arrayrecord(result.weights, keys),
            "metrics": MetricRecord({"num-examples": result.num_examples, **result.metrics}),
        })
        if result.control_delta is not None:
            content[SCAFFOLD_DELTA_RECORD] = ndarrays_to_arrayrecord(result.control_delta, keys)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        trainer, data = load_client(context)
        arrays = _record(msg.content, "ArrayRecord", "arrays")
        config = _record(msg.content, "ConfigRecord", "config")
        loss, num_examples, metrics = evaluate_on_client(
            trainer, data, arrayrecord_views(arrays), config
        )
        reply_metrics = MetricRecord(
            {"num-examples": num_examples, "loss": loss, "accuracy": metrics["accuracy"]}
        )
        return Message(RecordDict({"metrics": reply_metrics}), reply_to=msg)

    return app
