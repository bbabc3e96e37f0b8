"""Bytes on the wire: ``message_num_bytes`` counts what Flower pushes for a Message
(checked against Flower's own ``push_objects``), ``message_proto_num_bytes`` the
Message as one protobuf (checked against ``SerializeToString``)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import push_objects

from fedloom.records import arrayrecord_num_bytes, message_num_bytes, message_proto_num_bytes


@pytest.fixture(autouse=True)
def server_task(monkeypatch):
    """A Message is made inside a task (``TaskIdentity``), which a ServerApp process has; pose as one."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def reply(arrays: list[np.ndarray], *, config: dict | None = None, metrics: dict | None = None) -> Message:
    content = RecordDict({"arrays": ArrayRecord(arrays),
                          "metrics": MetricRecord(metrics or {"num-examples": 17, "train_loss": 0.25})})
    if config is not None:
        content["config"] = ConfigRecord(config)
    return Message(content, dst_node_id=7, message_type="train")


def pushed_bytes(message: Message) -> int:
    """What Flower's push path hands to the transport for ``message``, in bytes."""
    sizes: dict[str, int] = {}
    push_objects(get_all_nested_objects(message),
                 lambda object_id, content: sizes.__setitem__(object_id, len(content)),
                 max_concurrent_pushes=1)
    return sum(sizes.values())


def test_message_bytes_equal_what_flowers_push_path_sends():
    rng = np.random.default_rng(0)
    message = reply([rng.standard_normal((300, 200)).astype(np.float32),
                     rng.standard_normal(200).astype(np.float32)],
                    config={"learning-rate": 0.1, "note": "x" * 100})
    assert message_num_bytes(message) == pushed_bytes(message)


def test_message_bytes_count_configs_and_metrics_beside_the_arrays():
    arrays = [np.arange(1000, dtype=np.float32)]
    plain = reply(arrays)
    with_config = reply(arrays, config={"note": "y" * 5000})
    payload = arrayrecord_num_bytes(plain.content["arrays"])
    assert message_num_bytes(plain) > payload  # metadata, metrics and headers too
    assert message_num_bytes(with_config) - message_num_bytes(plain) >= 5000


def test_identical_chunks_are_sent_once_as_flower_does():
    zeros = reply([np.zeros(8_000_000, np.float32)])  # 32 MB of zeros: 5 of its 7 chunks alike
    payload = arrayrecord_num_bytes(zeros.content["arrays"])
    assert message_num_bytes(zeros) == pushed_bytes(zeros) < payload / 2


def test_message_proto_bytes_equal_the_serialized_protobuf_length():
    rng = np.random.default_rng(1)
    message = reply([rng.standard_normal((50, 40)).astype(np.float32)], config={"epochs": 3})
    assert message_proto_num_bytes(message) == len(message_to_proto(message).SerializeToString())
    assert message_proto_num_bytes(message) > arrayrecord_num_bytes(message.content["arrays"])
