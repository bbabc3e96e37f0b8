"""The deployment ClientApp: fedloom's Keras client on this SuperNode's own data.

Flower starts a fresh ``flwr-clientapp`` process for every message a SuperNode
receives and loads ``app`` from this module. Each message:

1. :func:`fedloom.deploy.node_data.load_node` finds the node's data and the run's
   settings (prepared by the first message of the run, then read from
   ``context.state`` and a ``.npz`` cache);
2. the simulation's client (``fedloom.experiment.builders.build_client_app``: the Keras
   client with the experiment's seed and mods, e.g. update compression) answers it on
   that data, so a node with ``partition-id=i`` trains exactly as simulated client
   ``i`` does.

TensorFlow is imported inside the handler, after the node's data is found: a node
with a bad ``data-path`` fails in a fraction of a second with a message naming the
setting, instead of after a multi-second TensorFlow start.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedloom.deploy.node_data import load_node

__all__ = ["app"]

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on this node's data; replies as the simulation client does."""
    return _keras_reply(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on this node's validation split."""
    return _keras_reply(msg, context)


def _keras_reply(msg: Message, context: Context) -> Message:
    node = load_node(context)
    from fedloom.clients import get_trainer
    from fedloom.experiment import builders

    trainer = get_trainer(node.model_spec(_output_size(msg)))
    keras_client = builders.build_client_app(node.settings, load_client=lambda _: (trainer, node.data))
    return keras_client(msg, context)


def _output_size(msg: Message) -> int | None:
    """Classes of the global model in ``msg``: the length of its last array (the bias
    of the softmax layer every fedloom model ends with)."""
    records = msg.content.array_records
    record = records.get("arrays")
    if record is None and len(records) == 1:
        record = next(iter(records.values()))
    if record is None or not len(record):
        return None
    last = record[list(record.keys())[-1]]
    return int(last.shape[-1]) if last.shape else None
