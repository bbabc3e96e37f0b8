"""Update compression: codecs, the client mod, server-side decoding, bytes on the wire."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedloom.compression import Float16Codec, Int8Codec, TopKCodec, compression_mod, make_codec
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
    sent = sum(r.bytes_received for r in results["none"][1])
    assert sent / sum(r.bytes_received for r in results[method][1]) > ratio


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
    up = {name: sum(r["bytes_up"] for r in records) for name, records in runs.items()}
    assert up["none"] / up[method] >= min_ratio
    assert runs[method][-1]["accuracy"] > runs[method][0]["accuracy"] + 0.1
    assert all(r["num_rejected"] == 0 for r in runs[method])
