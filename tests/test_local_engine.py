"""fedloom's Ray-free engine (LocalGrid): faithful to Flower's Grid, deterministic."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.serverapp.strategy import FedAvg

from fedloom.aggregation import weighted_mean
from fedloom.clients import derive_seed, get_trainer, make_client_app
from fedloom.data import client_datasets, load_digits
from fedloom.engine import LocalGrid, run_local
from fedloom.models import ModelSpec
from fedloom.records import ndarrays_to_parameters
from fedloom.strategies import WeightedAverage, legacy

from numpy_apps import INITIAL_WEIGHTS, client_step, legacy_app, message_app

SPEC = ModelSpec("mlp", (64,), 10, seed=0, options={"hidden": (16,)})


@pytest.fixture(scope="module")
def digits_clients():
    return client_datasets(load_digits(), "dirichlet", 6, seed=0, alpha=0.5)


def keras_app(clients, seed=0):
    return make_client_app(lambda ctx: (get_trainer(SPEC), clients[ctx.node_config["partition-id"]]), seed=seed)


def run_weighted(clients, *, seed, per_round, rounds=2):
    grid = LocalGrid(keras_app(clients), len(clients), seed=seed)
    strategy = WeightedAverage(fraction_train=per_round / len(clients), min_train_nodes=per_round,
                               min_available_nodes=len(clients), fraction_evaluate=0.0, seed=seed)
    initial = ArrayRecord(get_trainer(SPEC).initial_weights())
    config = ConfigRecord({"learning-rate": 0.1, "batch-size": 8, "local-epochs": 1})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, train_config=config)
    used = [sorted(grid.partition_id(int(c)) for c in r.clients_used) for r in strategy.reports]
    return result.arrays.to_numpy_ndarrays(), used, grid


def test_global_model_equals_a_reference_computation_without_flower(digits_clients):
    final, used, _ = run_weighted(digits_clients, seed=3, per_round=6)
    assert used == [list(range(6))] * 2
    trainer = get_trainer(SPEC)
    weights = SPEC.build().get_weights()  # the same seeded initial model, built afresh
    for server_round in (1, 2):
        updates, sizes = [], []
        for pid, data in enumerate(digits_clients):
            seed = derive_seed(derive_seed(0, pid), server_round)
            new, _ = trainer.fit(weights, data.x_train, data.y_train, epochs=1, batch_size=8,
                                 learning_rate=0.1, seed=seed)
            updates.append(new)
            sizes.append(len(data.x_train))
        weights = weighted_mean(updates, sizes)
    for got, want in zip(final, weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def independent_fedavg(clients, initial, rounds, *, experiment_seed, batch_size, learning_rate):
    """FedAvg written out with plain Keras and numpy, sharing no code with the engine.

    Every round, every client in partition order starts from the global weights and
    runs one epoch of ``train_on_batch`` (SGD, sparse categorical cross-entropy) over
    its training examples in the order the client's documented seeding gives
    (``default_rng(SeedSequence([SeedSequence([seed, partition]) state, round]) state)
    .permuted``, the last batch smaller); the server averages the results in float64,
    weighted by training examples.
    """
    import keras

    def seed_of(*parts):
        return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])

    model = keras.Sequential([keras.Input((64,)), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy")
    weights = [np.asarray(w, np.float64) for w in initial]
    for server_round in range(1, rounds + 1):
        total, sizes = None, []
        for partition, data in enumerate(clients):
            model.set_weights([w.astype(np.float32) for w in weights])
            model.optimizer.iterations.assign(0)
            n = len(data.x_train)
            rng = np.random.default_rng(seed_of(seed_of(experiment_seed, partition), server_round))
            order = rng.permuted(np.arange(n)[None, :], axis=1)[0]
            for start in range(0, n, batch_size):
                index = order[start:start + batch_size]
                model.train_on_batch(data.x_train[index], data.y_train[index])
            scaled = [n * np.asarray(w, np.float64) for w in model.get_weights()]
            total = scaled if total is None else [t + w for t, w in zip(total, scaled)]
            sizes.append(n)
        weights = [t / sum(sizes) for t in total]
    return weights


def test_global_model_equals_an_independent_keras_fedavg_loop(digits_clients):
    """The engine, strategy and Keras client against a plain ``train_on_batch`` loop:
    same split, initial weights, client order and batches; float32 training allows
    ~1e-6 of drift, while a wrong batch, weight or order moves weights by ~1e-2."""
    final, used, _ = run_weighted(digits_clients, seed=3, per_round=6)
    assert used == [list(range(6))] * 2
    initial = SPEC.build().get_weights()
    want = independent_fedavg(digits_clients, initial, 2, experiment_seed=0, batch_size=8,
                              learning_rate=0.1)
    for got, ref in zip(final, want):
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)
    # the tolerance is far below what training moved: a bug could not hide inside it
    assert max(float(np.max(np.abs(w - i))) for w, i in zip(want, initial)) > 0.05


def test_same_seed_same_clients_and_bit_identical_weights(digits_clients):
    first, used_1, grid_1 = run_weighted(digits_clients, seed=11, per_round=3, rounds=3)
    second, used_2, grid_2 = run_weighted(digits_clients, seed=11, per_round=3, rounds=3)
    other, used_3, grid_3 = run_weighted(digits_clients, seed=12, per_round=3, rounds=3)
    assert list(grid_1.get_node_ids()) == list(grid_2.get_node_ids()) != list(grid_3.get_node_ids())
    assert used_1 == used_2 != used_3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other))


def crashing_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("disk full on client 1")
        arrays = msg.content["arrays"]
        new = [a + 1.0 for a in arrays.to_numpy_ndarrays()]
        return Message(RecordDict({"arrays": ArrayRecord(new),
                                   "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    return app


def test_a_crashing_client_becomes_an_error_reply_and_the_run_goes_on():
    grid = LocalGrid(crashing_app(), 3, seed=0)
    strategy = WeightedAverage(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0, seed=0)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=2)
    np.testing.assert_allclose(result.arrays.to_numpy_ndarrays()[0], 2.0)
    for report in strategy.reports:
        assert report.rejected_counts() == {"client_error": 1}
        assert "disk full on client 1" in report.rejected[0][2]


def test_stock_flower_fedavg_runs_unchanged():
    grid = LocalGrid(message_app, 3, seed=0)  # partitions 0..2: no NaN client
    strategy = FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=2)
    steps, sizes = np.array([client_step(k, 1) for k in range(3)]), np.array([10.0, 20.0, 30.0])
    expected = 2 * float(np.sum(steps * sizes) / sizes.sum())
    np.testing.assert_allclose(result.arrays.to_numpy_ndarrays()[1], expected, rtol=1e-6)
    assert result.evaluate_metrics_clientapp[2]["mean-weight"] == pytest.approx(expected, rel=1e-5)
    assert grid.bytes_down > grid.bytes_up > 0


def test_legacy_server_app_runs_on_the_local_engine():
    seen = {}

    def evaluate_fn(server_round, parameters, config):
        seen[server_round] = float(np.mean(parameters[0]))
        return None

    def server_fn(context):
        strategy = legacy.WeightedAverage(min_available_clients=3, min_fit_clients=3,
                                          fraction_evaluate=0.0, evaluate_fn=evaluate_fn,
                                          initial_parameters=ndarrays_to_parameters(INITIAL_WEIGHTS))
        seen["strategy"] = strategy
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=2))

    run_local(ServerApp(server_fn=server_fn), legacy_app, 3, seed=0)
    steps, sizes = np.array([client_step(k, 1) for k in range(3)]), np.array([10.0, 20.0, 30.0])
    step = float(np.sum(steps * sizes) / sizes.sum())
    assert seen[0] == 0.0 and seen[1] == pytest.approx(step) and seen[2] == pytest.approx(2 * step)
    assert [len(r.clients_used) for r in seen["strategy"].reports] == [3, 3]


def stateful_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        calls = int(context.state.get("calls", ConfigRecord({"n": 0}))["n"]) + 1
        context.state["calls"] = ConfigRecord({"n": calls})
        if context.node_config["partition-id"] == 2:
            time.sleep(0.6)  # the slow client
        arrays = msg.content["arrays"]
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(
            {"num-examples": 1, "calls": calls, "run-config": float(context.run_config["lr"])})}),
            reply_to=msg)

    return app


def test_context_state_persists_and_timeouts_drop_late_replies():
    grid = LocalGrid(stateful_app(), 3, seed=0, run_config={"lr": 0.5})
    messages = [Message(RecordDict({"arrays": ArrayRecord(INITIAL_WEIGHTS)}), node_id, "train")
                for node_id in grid.get_node_ids()]
    replies = list(grid.send_and_receive(messages, timeout=None))
    assert [r.content["metrics"]["calls"] for r in replies] == [1, 1, 1]
    assert all(r.content["metrics"]["run-config"] == 0.5 for r in replies)
    messages = [Message(RecordDict({"arrays": ArrayRecord(INITIAL_WEIGHTS)}), node_id, "train")
                for node_id in grid.get_node_ids()]
    late = list(grid.send_and_receive(messages, timeout=0.3))
    assert sorted(grid.partition_id(r.metadata.src_node_id) for r in late) == [0, 1]
    assert [r.content["metrics"]["calls"] for r in late] == [2, 2]
    assert all(r.metadata.reply_to_message_id for r in late)
