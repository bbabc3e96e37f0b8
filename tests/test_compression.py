"""Update compression: codecs, the client mod, server-side decoding, bytes on the wire."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedloom.compression import (
    Float16Codec,
    Int8Codec,
    TopKCodec,
    compression_mod,
    decode_compressed,
    make_codec,
)
from fedloom.engine import LocalGrid
from fedloom.errors import ConfigError
from fedloom.strategies import WeightedAverage

RNG = np.random.default_rng(0)


def test_float16_and_int8_round_trips_are_within_their_error_bounds():
    delta = RNG.normal(scale=0.01, size=(50, 20)).astype(np.float32)
    f16 = Float16Codec().decode(Float16Codec().encode(delta)[0], delta.shape, delta.dtype)
    np.testing.assert_allclose(f16, delta, rtol=1e-3, atol=1e-7)
    chunk, _ = Int8Codec().encode(delta)
    assert chunk.dtype == np.uint8 and chunk.size == delta.size + 8
    back = Int8Codec().decode(chunk, delta.shape, delta.dtype)
    scale = (delta.max() - delta.min()) / 255
    assert np.abs(back - delta).max() <= scale / 2 + 1e-7
    assert back.dtype == np.float32 and back.shape == delta.shape


def test_topk_sends_k_entries_and_error_feedback_loses_nothing():
    codec = TopKCodec(density=0.1)
    deltas = [RNG.normal(size=200).astype(np.float32) for _ in range(5)]
    residual, sent_total = None, np.zeros(200)
    for delta in deltas:
        chunk, residual = codec.encode(delta, residual)
        assert chunk.size == 20 * 8  # 20 int32 indices + 20 float32 values
        decoded = codec.decode(chunk, delta.shape, delta.dtype)
        assert np.count_nonzero(decoded) == 20
        sent_total += decoded
    np.testing.assert_allclose(sent_total + residual, np.sum(deltas, axis=0), rtol=1e-5, atol=1e-5)


def test_unknown_codec_and_bad_options_are_refused():
    with pytest.raises(ConfigError, match="compression.method='zip' is not allowed"):
        make_codec("zip")
    with pytest.raises(ConfigError, match="compression.density=0 is not allowed"):
        make_codec("topk", density=0)
    with pytest.raises(ConfigError, match="takes no options"):
        make_codec("int8", density=0.5)


def toy_app(method: str) -> ClientApp:
    """Client k returns global + (k + 1) * pattern; compressed on the way back."""
    app = ClientApp(mods=[compression_mod(method)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        k = context.node_config["partition-id"]
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        new = [a + np.float32(k + 1) * np.linspace(-1, 1, a.size, dtype=np.float32).reshape(a.shape)
               for a in arrays]
        return Message(RecordDict({"arrays": ArrayRecord(new),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return app


@pytest.mark.parametrize(("method", "tolerance", "ratio"), [("float16", 2e-3, 1.9), ("int8", 2e-2, 3.5)])
def test_strategies_decode_compressed_updates_and_count_compressed_bytes(method, tolerance, ratio):
    weights = [np.zeros((100, 30), np.float32), np.zeros(30, np.float32)]
    results = {}
    for name in ("none", method):
        grid = LocalGrid(toy_app(name), 3, seed=0)
        strategy = WeightedAverage(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0, seed=0)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(weights), num_rounds=2)
        results[name] = (result.arrays.to_numpy_ndarrays(), strategy.reports)
    exact, compressed = results["none"][0], results[method][0]
    for a, b in zip(exact, compressed):
        np.testing.assert_allclose(b, a, atol=tolerance)
    assert all(not r.rejected for r in results[method][1])
    # the codec's ratio is on the arrays' payload; whole messages (bytes_received) carry
    # metadata, metrics and the codec's record beside it
    sent = sum(r.payload_received for r in results["none"][1])
    assert sent / sum(r.payload_received for r in results[method][1]) > ratio
    assert sum(r.bytes_received for r in results[method][1]) < sum(r.bytes_received for r in results["none"][1])


def test_a_tampered_compressed_update_is_rejected_not_fatal():
    def tamper(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        if context.node_config["partition-id"] == 0:
            reply.content["compression"] = ConfigRecord({"codec": "int8", "keys": ["0", "1"], "sizes": [1, 1]})
        return reply

    app = ClientApp(mods=[tamper, compression_mod("int8")])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        return Message(RecordDict({"arrays": ArrayRecord([a + 1 for a in arrays.to_numpy_ndarrays()]),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    grid = LocalGrid(app, 3, seed=0)
    strategy = WeightedAverage(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0, seed=0)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(5, np.float32), np.zeros(2, np.float32)]),
                            num_rounds=1)
    assert strategy.reports[0].rejected_counts() == {"malformed": 1}
    np.testing.assert_allclose(result.arrays.to_numpy_ndarrays()[0], 1.0, atol=0.01)


@pytest.mark.parametrize(("method", "min_ratio"), [("int8", 3.9), ("topk", 4.9)])
def test_compressed_digits_run_sends_fewer_bytes_and_still_learns(method, min_ratio, tmp_path):
    from test_experiment import config

    from fedloom.experiment import run_experiment

    runs = {name: run_experiment(config(f"compression={name}", "num_rounds=5"), tmp_path / name)
            for name in ("none", method)}
    up = {name: sum(r["payload_up"] for r in records) for name, records in runs.items()}
    assert up["none"] / up[method] >= min_ratio  # the arrays; whole messages in bytes_up
    assert sum(r["bytes_up"] for r in runs[method]) < sum(r["bytes_up"] for r in runs["none"])
    assert runs[method][-1]["accuracy"] > runs[method][0]["accuracy"] + 0.1
    assert all(r["num_rejected"] == 0 for r in runs[method])


# ------------------------------------------------------------------ edge-case numerics
def test_float16_keeps_large_and_tiny_deltas_finite_and_precise():
    """|delta| > 65504 overflowed to inf and tiny deltas were flushed or rounded in
    float16's subnormal range; the per-tensor power-of-two scale keeps both within
    float16's relative precision (2**-11)."""
    codec = Float16Codec()
    for scale in (1e6, 1e-7, 1e-30):
        delta = (RNG.normal(size=(40, 5)) * scale).astype(np.float32)
        chunk, _ = codec.encode(delta)
        assert codec.chunk_format(chunk) == "float16" and chunk.size == 4 + 2 * delta.size
        back = codec.decode(chunk, delta.shape, delta.dtype)
        assert np.all(np.isfinite(back))
        np.testing.assert_allclose(back, delta, rtol=2.0**-11, atol=float(np.abs(delta).max()) * 2.0**-39)
    zeros = np.zeros(7, np.float32)
    assert np.array_equal(codec.decode(codec.encode(zeros)[0], (7,), np.float32), zeros)


def test_float16_falls_back_to_float32_for_a_non_finite_tensor_and_flags_it():
    codec = Float16Codec()
    delta = np.array([1.0, np.inf, -2.0], np.float32)
    chunk, _ = codec.encode(delta)
    assert codec.chunk_format(chunk) == "float32" and chunk.size == 4 + 4 * 3
    np.testing.assert_array_equal(codec.decode(chunk, (3,), np.float32), delta)


def _send_train(grid: LocalGrid, weights: list[np.ndarray]) -> Message:
    (node,) = grid.get_node_ids()
    content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord({})})
    (reply,) = grid.send_and_receive([grid.create_message(content, MessageType.TRAIN, node, "1")])
    return reply


def test_compression_record_flags_each_tensors_format_through_flower():
    """An honest client whose delta exceeds float16's range reaches the server intact,
    and the reply says which tensor went as float32."""
    app = ClientApp(mods=[compression_mod("float16")])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        a, b = msg.content["arrays"].to_numpy_ndarrays()
        return Message(RecordDict({"arrays": ArrayRecord([a + 1e5, b + np.float32(np.nan)]),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    grid = LocalGrid(app, 1, seed=0)
    start = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
    reply = _send_train(grid, start)
    info = reply.content["compression"]
    assert list(info["formats"]) == ["float16", "float32"]
    _, weights = decode_compressed(reply.content["arrays"], info, start)
    np.testing.assert_allclose(weights[0], 1e5, rtol=2.0**-11)
    assert np.all(np.isnan(weights[1]))
    info["formats"] = ["float16", "float16"]
    with pytest.raises(ValueError, match="announced as 'float16' but encoded as 'float32'"):
        decode_compressed(reply.content["arrays"], info, start)


def test_topk_decode_refuses_indices_outside_the_tensor():
    chunk = np.concatenate([np.array([7], np.int32).view(np.uint8), np.array([1.0], np.float32).view(np.uint8)])
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        TopKCodec().decode(chunk, (5,), np.float32)


def _topk_client(deltas: list[np.ndarray]) -> ClientApp:
    """A client whose k-th update is global + deltas[k], sent through top-k."""
    app = ClientApp(mods=[compression_mod("topk", density=0.1)])
    calls = []

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        (weights,) = msg.content["arrays"].to_numpy_ndarrays()
        new = weights + deltas[len(calls)]
        calls.append(1)
        return Message(RecordDict({"arrays": ArrayRecord([new]),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return app


def _decoded(reply: Message, start: list[np.ndarray]) -> np.ndarray:
    _, (weights,) = decode_compressed(reply.content["arrays"], reply.content["compression"], start)
    return weights - start[0]


def test_topk_puts_an_unapplied_update_back_into_the_residual():
    """Round 1's update is never applied (the server skipped the round: round 2 sends
    the same model). What was sent in round 1 must not be lost: what round 2 sends plus
    what the client still holds equals both rounds' deltas."""
    deltas = [RNG.normal(size=100).astype(np.float32) for _ in range(2)]
    grid = LocalGrid(_topk_client(deltas), 1, seed=0)
    start = [np.zeros(100, np.float32)]
    _send_train(grid, start)  # round 1: lost on the way (the round is skipped)
    sent = _decoded(_send_train(grid, start), start)
    (context,) = grid.contexts.values()
    (residual,) = context.state["fedloom.compression.residual"].to_numpy_ndarrays()
    np.testing.assert_allclose(sent + residual, deltas[0] + deltas[1], rtol=1e-6, atol=1e-6)


def test_topk_does_not_restore_once_the_model_moved():
    deltas = [RNG.normal(size=100).astype(np.float32) for _ in range(2)]
    grid = LocalGrid(_topk_client(deltas), 1, seed=0)
    start = [np.zeros(100, np.float32)]
    first = _decoded(_send_train(grid, start), start)
    moved = [start[0] + first]  # the server applied round 1
    second = _decoded(_send_train(grid, moved), moved)
    (context,) = grid.contexts.values()
    (residual,) = context.state["fedloom.compression.residual"].to_numpy_ndarrays()
    np.testing.assert_allclose(first + second + residual, deltas[0] + deltas[1], rtol=1e-5, atol=1e-6)
