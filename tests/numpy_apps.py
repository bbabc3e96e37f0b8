"""Small real numpy clients for end-to-end strategy tests in Flower's engines.

Client ``k`` (its ``partition-id``) returns ``global + 0.5 (k + 1)^2 * local_epochs``
with ``num_examples = 10 (k + 1)`` and ``quality = 1 / (k + 1)``; the client whose
partition id equals ``nan-partition`` returns NaN weights, so every strategy must
leave it out. The expected global model after each round is then a hand computation.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

NAN_PARTITION = 3
INITIAL_WEIGHTS = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


def client_step(partition_id: int, local_epochs: int) -> float:
    return 0.5 * (partition_id + 1) ** 2 * local_epochs  # unequal gaps: no Krum ties


def local_update(weights, partition_id: int, config) -> tuple[list[np.ndarray], int, dict]:
    epochs = int(config.get("local-epochs", 1))
    step = np.float32(np.nan if partition_id == NAN_PARTITION else client_step(partition_id, epochs))
    new = [w + step for w in weights]
    metrics = {"quality": 1.0 / (partition_id + 1), "train_loss": float(partition_id)}
    return new, 10 * (partition_id + 1), metrics


# ------------------------------------------------------------------ Message API
message_app = ClientApp()


@message_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    weights = msg.content["arrays"].to_numpy_ndarrays()
    new, num_examples, metrics = local_update(weights, pid, msg.content["config"])
    content = RecordDict({
        "arrays": ArrayRecord(new),
        "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
    })
    return Message(content, reply_to=msg)


@message_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    mean = float(np.mean(msg.content["arrays"].to_numpy_ndarrays()[0]))
    metrics = MetricRecord({"num-examples": 10 * (pid + 1), "mean-weight": mean})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


# ------------------------------------------------------------------ legacy API
class ToyNumPyClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.partition_id = partition_id

    def fit(self, parameters, config):
        new, num_examples, metrics = local_update(parameters, self.partition_id, config)
        return new, num_examples, metrics

    def evaluate(self, parameters, config):
        return float(np.mean(parameters[0])), 10 * (self.partition_id + 1), {}


def legacy_client_fn(context: Context):
    return ToyNumPyClient(int(context.node_config["partition-id"])).to_client()


legacy_app = ClientApp(client_fn=legacy_client_fn)
