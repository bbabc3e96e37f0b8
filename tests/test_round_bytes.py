"""Round reports count the bytes Flower sends: whole serialized messages
(``bytes-sent`` / ``bytes-received``, ``bytes_down`` / ``bytes_up`` in history) beside
the arrays' payload (``payload-*``), in both Flower APIs."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import Code, FitIns, FitRes, Status
from flwr.server.compat.grid_client_proxy import GridClientProxy

from fedloom.engine import LocalGrid
from fedloom.records import (
    legacy_message_num_bytes,
    legacy_messages_num_bytes,
    message_num_bytes,
    messages_num_bytes,
    ndarrays_to_parameters,
)
from fedloom.strategies import SimpleAverage

from numpy_apps import INITIAL_WEIGHTS, legacy_app, message_app


class RecordingGrid(LocalGrid):
    """A LocalGrid that measures each train message it pushes and each reply it
    returns, and gives messages the ids a SuperLink gives (their object ids)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pushed: list[int] = []
        self.replied: list[int] = []

    def push_messages(self, messages):
        messages = list(messages)
        self.pushed += [message_num_bytes(m) for m in messages]
        object_ids = []
        for message_id in super().push_messages(messages):
            message = self._pending.pop(message_id)
            message.metadata.__dict__["_message_id"] = object_id = message.object_id
            self._pending[object_id] = message
            object_ids.append(object_id)
        return object_ids

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replied += [message_num_bytes(r) for r in replies]
        return replies


def test_message_api_round_counts_each_message_flower_sends_and_receives():
    grid = RecordingGrid(message_app, 4, seed=2)
    strategy = SimpleAverage(min_available_nodes=4, min_train_nodes=4, fraction_evaluate=0.0, seed=0,
                             count_message_bytes=True)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=2)
    assert len(grid.pushed) == len(grid.replied) == 8
    for index, report in enumerate(strategy.reports):  # client 3 (NaN) is rejected, still counted
        assert report.rejected_counts() == {"non_finite": 1}
        assert report.bytes_sent == sum(grid.pushed[4 * index:4 * index + 4])
        assert report.bytes_received == sum(grid.replied[4 * index:4 * index + 4])
        assert report.bytes_received > report.payload_received == 4 * sum(
            a.nbytes + 128 for a in INITIAL_WEIGHTS)  # .npy: 128-byte header + data
        assert report.bytes_sent > report.payload_sent == report.payload_received


def test_shared_content_is_counted_once_per_message_and_equals_counting_each():
    grid = LocalGrid(message_app, 5, seed=0)
    content = RecordDict({"arrays": ArrayRecord([np.arange(50_000, dtype=np.float32)]),
                          "config": ConfigRecord({"lr": 0.1})})
    messages = [Message(content, dst_node_id=n, message_type="train") for n in grid.get_node_ids()]
    assert messages_num_bytes(messages) == sum(message_num_bytes(m) for m in messages)
    assert messages_num_bytes(messages) > 5 * 200_000


def test_legacy_fit_ins_and_res_count_as_the_messages_flowers_compat_layer_sends():
    grid = RecordingGrid(legacy_app, 2, seed=3)
    node = list(grid.get_node_ids())[0]
    proxy = GridClientProxy(node, grid, grid.run.run_id)
    fit_ins = FitIns(ndarrays_to_parameters(INITIAL_WEIGHTS), {"local-epochs": 1})
    fit_res = proxy.fit(fit_ins, timeout=None, group_id=1)
    assert fit_res.status.code == Code.OK
    # The rebuilt metadata carries the process's run and task ids, the grid's messages its
    # own random run id: protobuf writes those 64-bit ids as varints, whose length can
    # differ by a byte. Anything the count leaves out (a config, a metric, an array
    # chunk) is tens of bytes or more.
    assert abs(legacy_message_num_bytes(fit_ins, dst_node_id=node, group_id="1") - grid.pushed[0]) <= 2
    assert abs(legacy_message_num_bytes(fit_res, dst_node_id=node, reply=True, group_id="1")
               - grid.replied[0]) <= 2


def test_legacy_round_report_counts_messages_and_payload():
    from flwr.server.client_proxy import ClientProxy

    from fedloom.strategies import legacy

    class Proxy(ClientProxy):  # only its cid is read by aggregate_fit
        def get_properties(self, *a, **k): ...
        def get_parameters(self, *a, **k): ...
        def fit(self, *a, **k): ...
        def evaluate(self, *a, **k): ...
        def reconnect(self, *a, **k): ...

    parameters = ndarrays_to_parameters([w + 1 for w in INITIAL_WEIGHTS])
    results = [(Proxy(str(n)), FitRes(Status(Code.OK, ""), parameters, 10, {"loss": 0.5})) for n in (5, 6)]
    strategy = legacy.SimpleAverage(initial_parameters=ndarrays_to_parameters(INITIAL_WEIGHTS),
                                    count_message_bytes=True)
    _, metrics = strategy.aggregate_fit(1, results, [])
    expected = sum(legacy_message_num_bytes(r, dst_node_id=int(p.cid), reply=True, group_id="1")
                   for p, r in results)
    assert metrics["bytes-received"] == expected > metrics["payload-received"] == 2 * sum(
        len(t) for t in parameters.tensors)


def test_legacy_messages_to_several_nodes_count_each_message_in_full():
    fit_ins = FitIns(ndarrays_to_parameters([np.arange(20_000, dtype=np.float32)]), {"lr": 0.1})
    nodes = [11, 12, 13]
    one_by_one = sum(legacy_message_num_bytes(fit_ins, dst_node_id=n, group_id="4") for n in nodes)
    assert legacy_messages_num_bytes(fit_ins, nodes, group_id="4") == one_by_one > 3 * 80_000


def test_without_message_counting_bytes_repeat_the_payload():
    """The classes' default: no serializing and hashing of every message in the hot path;
    ``bytes-*`` then equal ``payload-*`` (fedloom's experiments count whole messages)."""
    grid = LocalGrid(message_app, 4, seed=0)
    strategy = SimpleAverage(min_available_nodes=4, min_train_nodes=4, fraction_evaluate=0.0, seed=0)
    messages = list(strategy.configure_train(1, ArrayRecord(INITIAL_WEIGHTS), ConfigRecord({}), grid))
    _, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert metrics["bytes-sent"] == metrics["payload-sent"] > 0
    assert metrics["bytes-received"] == metrics["payload-received"] > 0
