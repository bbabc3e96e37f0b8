"""The local engine's worker threads: same results for any number of workers, calls that
really overlap, and crashes, timeouts and node state handled as by the serial engine."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedloom.clients import get_trainer
from fedloom.engine import LocalGrid, available_cores, resolve_workers
from fedloom.errors import ConfigError
from fedloom.experiment import RunSettings, run_experiment
from fedloom.models import ModelSpec
from fedloom.strategies import WeightedAverage

from numpy_apps import INITIAL_WEIGHTS

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def final_weights(run_dir: Path) -> list[np.ndarray]:
    with np.load(run_dir / "final_weights.npz") as saved:
        return [saved[k] for k in sorted(saved.files)]


def test_digits_run_is_bit_identical_for_one_and_two_workers(tmp_path):
    """The real Keras ClientApp on digits, 10 clients, 4 per round, 3 rounds."""
    runs = {}
    for workers in (1, 2):
        cfg = config("num_clients=10", "clients_per_round=4", "num_rounds=3", "plot=false",
                     "checkpoint_every=0", f"engine.workers={workers}")
        records = run_experiment(cfg, tmp_path / f"w{workers}")
        runs[workers] = (final_weights(tmp_path / f"w{workers}"), records)
    (serial, serial_records), (parallel, parallel_records) = runs[1], runs[2]
    assert len(serial) == len(parallel) > 0
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    assert [r["accuracy"] for r in serial_records] == [r["accuracy"] for r in parallel_records]
    initial = get_trainer(ModelSpec("mlp", (64,), 10, seed=0)).initial_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(serial, initial))  # it did train


def rendezvous_app(parties: int) -> ClientApp:
    """Every call waits until ``parties`` calls are in flight at once (or fails)."""
    app = ClientApp()
    barrier = threading.Barrier(parties, timeout=10)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        barrier.wait()  # raises BrokenBarrierError unless the calls overlap
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord(
            {"num-examples": 1, "thread": threading.get_ident()})}), reply_to=msg)

    return app


def train_messages(grid: LocalGrid, node_ids=None) -> list[Message]:
    return [Message(RecordDict({"arrays": ArrayRecord(INITIAL_WEIGHTS)}), node_id, "train")
            for node_id in (grid.get_node_ids() if node_ids is None else node_ids)]


def test_two_workers_run_two_calls_at_the_same_time():
    grid = LocalGrid(rendezvous_app(2), 2, seed=0, workers=2)
    replies = list(grid.send_and_receive(train_messages(grid)))
    assert not any(r.has_error() for r in replies)
    threads = {r.content["metrics"]["thread"] for r in replies}
    assert len(threads) == 2 and threading.get_ident() not in threads


def crashing_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("disk full on client 1")
        new = [a + 1.0 for a in msg.content["arrays"].to_numpy_ndarrays()]
        return Message(RecordDict({"arrays": ArrayRecord(new),
                                   "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    return app


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crash_in_a_worker_is_the_same_error_reply_and_rejection(workers):
    grid = LocalGrid(crashing_app(), 3, seed=0, workers=workers)
    replies = list(grid.send_and_receive(train_messages(grid)))
    assert [r.metadata.src_node_id for r in replies] == list(grid.get_node_ids())
    errors = [r for r in replies if r.has_error()]
    assert [grid.partition_id(r.metadata.src_node_id) for r in errors] == [1]
    assert errors[0].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "disk full on client 1" in errors[0].error.reason

    grid = LocalGrid(crashing_app(), 3, seed=0, workers=workers)
    strategy = WeightedAverage(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0, seed=0)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=2)
    np.testing.assert_allclose(result.arrays.to_numpy_ndarrays()[0], 2.0)
    for report in strategy.reports:
        assert report.rejected_counts() == {"client_error": 1}
        assert "disk full on client 1" in report.rejected[0][2]


def slow_counting_app(slow_partition: int, seconds: float) -> ClientApp:
    """Counts its calls in the node state; one partition is slow (between reading and
    writing the count, so two of its calls at once would both count 1)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        calls = int(context.state.get("calls", ConfigRecord({"n": 0}))["n"]) + 1
        if context.node_config["partition-id"] == slow_partition:
            time.sleep(seconds)
        context.state["calls"] = ConfigRecord({"n": calls})
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord(
            {"num-examples": 1, "calls": calls})}), reply_to=msg)

    return app


def test_a_late_reply_from_a_worker_is_dropped_and_the_others_kept():
    grid = LocalGrid(slow_counting_app(2, 0.6), 3, seed=0, workers=2)
    late = list(grid.send_and_receive(train_messages(grid), timeout=0.3))
    assert sorted(grid.partition_id(r.metadata.src_node_id) for r in late) == [0, 1]
    assert [r.content["metrics"]["calls"] for r in late] == [1, 1]
    assert int(grid.contexts[grid.get_node_ids()[2]].state["calls"]["n"]) == 1  # it did run


def test_replies_come_in_message_order_and_a_nodes_messages_run_in_order():
    grid = LocalGrid(slow_counting_app(0, 0.2), 3, seed=0, workers=3)
    nodes = list(grid.get_node_ids())
    order = [nodes[0], nodes[1], nodes[2], nodes[1], nodes[0]]  # node 0 (slow) finishes last
    replies = list(grid.send_and_receive(train_messages(grid, order)))
    assert [r.metadata.src_node_id for r in replies] == order
    assert [r.content["metrics"]["calls"] for r in replies] == [1, 1, 1, 2, 2]
    ids = [r.metadata.reply_to_message_id for r in replies]
    assert ids == sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1]))


def test_each_thread_trains_on_its_own_identical_replica():
    spec = ModelSpec("mlp", (64,), 10, seed=0, options={"hidden": (8,)})
    here = get_trainer(spec)
    assert get_trainer(spec) is here
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 64)).astype(np.float32), rng.integers(0, 10, 30)
    found = {}

    def other_thread() -> None:
        trainer = get_trainer(spec)
        found["trainer"] = trainer
        found["fit"] = trainer.fit(here.initial_weights(), x, y, epochs=2, batch_size=4,
                                   learning_rate=0.1, seed=5)[0]

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert found["trainer"] is not here
    mine = here.fit(here.initial_weights(), x, y, epochs=2, batch_size=4, learning_rate=0.1, seed=5)[0]
    for a, b in zip(mine, found["fit"]):
        np.testing.assert_array_equal(a, b)


def test_engine_workers_setting():
    assert resolve_workers(None) == resolve_workers("auto") == available_cores() >= 1
    assert resolve_workers(3) == 3
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ConfigError, match="engine.workers must be a positive integer"):
            resolve_workers(bad)
    with pytest.raises(ConfigError, match=r"engine.workers=0"):
        RunSettings.from_config(config("engine.workers=0"))
    with pytest.raises(ValueError, match="LocalGrid needs workers >= 1"):
        LocalGrid(crashing_app(), 2, workers=0)


def test_the_local_engine_uses_every_available_core_by_default():
    default = RunSettings.from_config(config())
    assert default.engine.workers == available_cores()
    assert default.to_dict()["engine"]["workers"] is None  # config.json keeps "the cores"
    without_key = config()
    del without_key["engine"]["workers"]
    assert RunSettings.from_config(without_key).engine.workers == available_cores()
    assert RunSettings.from_config(config("engine.workers=1")).engine.workers == 1
