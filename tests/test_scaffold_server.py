"""SCAFFOLD's server side (Karimireddy et al., ICML 2020, option II) on hand-made rounds.

The strategy sends its control variate ``c`` as the ArrayRecord ``scaffold-c`` with
every train message, accepts replies carrying ``scaffold-delta-c`` and then sets
``c += (|S|/N) * mean_{i in S} delta_c_i``. The expected ``c`` is computed here in
numpy float64 from the replies, independently of ``fedloom.strategies.scaffold``.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedloom.engine import LocalGrid
from fedloom.errors import ConfigError
from fedloom.privacy import ScreenReplies
from fedloom.records import arrayrecord_num_bytes, message_num_bytes, ndarrays_to_arrayrecord
from fedloom.strategies import FederatedAveraging, Scaffold, legacy
from fedloom.strategies.scaffold import SCAFFOLD_DELTA_RECORD, SCAFFOLD_RECORD

from numpy_apps import message_app

NUM_NODES = 6
MODEL = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), np.arange(3, dtype=np.float32)]
KEYS = ["kernel", "bias"]


def model_record(arrays=MODEL) -> ArrayRecord:
    return ndarrays_to_arrayrecord([np.asarray(a) for a in arrays], KEYS)


def strategy(**options) -> Scaffold:
    return Scaffold(fraction_train=4 / NUM_NODES, min_train_nodes=4, min_available_nodes=NUM_NODES,
                    fraction_evaluate=0.0, seed=3, count_message_bytes=True, **options)


def configure(s, server_round: int, grid: LocalGrid, arrays=MODEL) -> list[Message]:
    return list(s.configure_train(server_round, model_record(arrays), ConfigRecord({"lr": 0.1}), grid))


def reply(to: Message, weights, delta=None, *, extra: ArrayRecord | None = None) -> Message:
    content = RecordDict({"arrays": ndarrays_to_arrayrecord(weights, KEYS),
                          "metrics": MetricRecord({"num-examples": 10})})
    if delta is not None:
        content[SCAFFOLD_DELTA_RECORD] = ndarrays_to_arrayrecord(delta, KEYS)
    if extra is not None:
        content["something-else"] = extra
    return Message(content, reply_to=to)


def random_like(rng, arrays, scale=1.0):
    return [(scale * rng.standard_normal(a.shape)).astype(np.float32) for a in arrays]


def test_control_variate_is_sent_and_updated_as_the_paper_says():
    rng = np.random.default_rng(0)
    grid = LocalGrid(message_app, NUM_NODES, seed=1)
    s = strategy()
    c_expected = [np.zeros(a.shape) for a in MODEL]
    arrays = MODEL
    for server_round in (1, 2):
        messages = configure(s, server_round, grid, arrays)
        assert len(messages) == 4
        for m in messages:  # every train message carries c, with the model's keys
            sent = m.content[SCAFFOLD_RECORD]
            assert list(sent.keys()) == KEYS
            for got, want in zip(sent.to_numpy_ndarrays(), c_expected):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        good = [random_like(rng, MODEL) for _ in range(2)]
        replies = [
            reply(messages[0], [a + 0.1 for a in arrays], good[0]),
            reply(messages[1], [a - 0.1 for a in arrays], good[1]),
            reply(messages[2], [a + 0.2 for a in arrays]),  # no delta_c: counts as 0
            reply(messages[3], [a + 0.3 for a in arrays], [np.full(a.shape, np.nan, np.float32) for a in MODEL]),
        ]
        new, metrics = s.aggregate_train(server_round, replies)
        report = s.reports[-1]
        assert report.rejected_counts() == {"non_finite": 1}
        assert metrics["clients-used"] == 3
        # c <- c + |S|/N * mean of the used clients' delta_c, |S| = 3 (one delta_c is 0), N = 6
        used = [*good, [np.zeros(a.shape) for a in MODEL]]
        mean = [np.mean([np.asarray(g[i], np.float64) for g in used], axis=0) for i in range(len(MODEL))]
        c_expected = [c + 3 / NUM_NODES * m for c, m in zip(c_expected, mean)]
        for got, want in zip(s.round.control_variate.variate, c_expected):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        arrays = new.to_numpy_ndarrays()
    assert np.abs(c_expected[0]).max() > 0.1  # the reference moved: the check meant something


def test_skipped_round_and_rejected_replies_leave_c_unchanged():
    grid = LocalGrid(message_app, NUM_NODES, seed=1)
    s = strategy(min_valid_updates=3)
    messages = configure(s, 1, grid)
    ones = [np.ones(a.shape, np.float32) for a in MODEL]
    replies = [reply(messages[0], MODEL, ones), reply(messages[1], MODEL, ones),
               reply(messages[2], MODEL, ones, extra=ArrayRecord(MODEL)),  # unknown extra record
               reply(messages[3], MODEL, [np.ones(3, np.float32), ones[1]])]  # delta_c of another shape
    arrays, metrics = s.aggregate_train(1, replies)
    assert arrays is None and metrics["round-skipped"] == 1  # 2 valid < 3
    assert s.reports[-1].rejected_counts() == {"malformed": 2}
    assert all(not v.any() for v in s.round.control_variate.variate)


def test_replies_with_delta_c_are_accepted_without_scaffold_and_c_is_not_sent():
    grid = LocalGrid(message_app, NUM_NODES, seed=1)
    plain = FederatedAveraging(fraction_train=4 / NUM_NODES, min_train_nodes=4,
                               min_available_nodes=NUM_NODES, fraction_evaluate=0.0, seed=3,
                               count_message_bytes=True)
    messages = list(plain.configure_train(1, model_record(), ConfigRecord({}), grid))
    assert all(SCAFFOLD_RECORD not in m.content for m in messages)
    ones = [np.ones(a.shape, np.float32) for a in MODEL]
    _, metrics = plain.aggregate_train(1, [reply(m, MODEL, ones) for m in messages])
    assert metrics["clients-used"] == 4 and plain.round.control_variate is None


def test_c_is_in_the_state_dict_and_restored():
    rng = np.random.default_rng(1)
    grid = LocalGrid(message_app, NUM_NODES, seed=1)
    s = strategy()
    messages = configure(s, 1, grid)
    s.aggregate_train(1, [reply(m, MODEL, random_like(rng, MODEL)) for m in messages])
    state = s.state_dict()
    restored = strategy()
    restored.load_state_dict(state)
    sent = configure(restored, 2, LocalGrid(message_app, NUM_NODES, seed=1))[0].content[SCAFFOLD_RECORD]
    for got, want in zip(sent.to_numpy_ndarrays(), s.round.control_variate.variate):
        assert got.tobytes() == want.tobytes() and want.any()


def test_bytes_count_whole_messages_and_scaffold_about_doubles_them():
    """bytes-* are the serialized messages (>= the arrays' payload); SCAFFOLD's c down
    and delta_c up make about twice FedAvg's bytes on a model of 40,000 floats."""
    big = [np.ones((200, 200), np.float32), np.zeros(3, np.float32)]
    ones = [np.full(a.shape, 0.5, np.float32) for a in big]
    rounds = {}
    for name, make in (("fedavg", FederatedAveraging), ("scaffold", Scaffold)):
        s = make(fraction_train=4 / NUM_NODES, min_train_nodes=4, min_available_nodes=NUM_NODES,
                 fraction_evaluate=0.0, seed=3, count_message_bytes=True)
        grid = LocalGrid(message_app, NUM_NODES, seed=1)
        messages = configure(s, 1, grid, big)
        replies = [reply(m, [a + 1 for a in big], ones if name == "scaffold" else None)
                   for m in messages]
        replies.append(Message(RecordDict({"metrics": MetricRecord({"x": 1})}), reply_to=messages[0]))  # malformed
        _, metrics = s.aggregate_train(1, replies)
        assert metrics["rejected-malformed"] == 1
        assert metrics["bytes-sent"] == sum(message_num_bytes(m) for m in messages)
        assert metrics["bytes-received"] == sum(message_num_bytes(r) for r in replies)
        assert metrics["payload-sent"] == sum(arrayrecord_num_bytes(r) for m in messages
                                              for r in m.content.array_records.values())
        assert metrics["payload-received"] == sum(arrayrecord_num_bytes(r) for m in replies
                                                  for r in m.content.array_records.values())
        assert metrics["bytes-received"] >= metrics["payload-received"] > 0
        assert metrics["bytes-sent"] >= metrics["payload-sent"] > 0
        rounds[name] = metrics
    for key in ("payload-sent", "payload-received"):
        assert rounds["scaffold"][key] == 2 * rounds["fedavg"][key]
    for key in ("bytes-sent", "bytes-received"):
        assert 1.9 < rounds["scaffold"][key] / rounds["fedavg"][key] < 2.05


def test_scaffold_is_refused_where_it_cannot_work():
    with pytest.raises(ConfigError, match="SCAFFOLD needs Flower's Message API"):
        legacy.Scaffold(min_available_clients=2).configure_fit(1, None, None)
    s = strategy()
    with pytest.raises(ConfigError, match="SCAFFOLD cannot run under differential privacy"):
        ScreenReplies(s, s)
    assert strategy().scaffold and not FederatedAveraging().scaffold
    assert FederatedAveraging(scaffold=True).scaffold  # any fedloom pipeline can keep c
