"""fedloom's FedAdam / FedYogi / FedAdagrad server steps equal Flower's strategies.

Both Flower APIs run for real on fedloom's LocalGrid: numpy clients add seeded noise
(a different vector per client and round) to the model they receive. fedloom's pure
functions are then replayed on the same replies, with the weighted mean written here in
numpy, and must give Flower's model after every one of 3 rounds to 1e-6 relative.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server import strategy as legacy_strategies
from flwr.serverapp import strategy as message_strategies

from fedloom.aggregation.server_optimizers import FLOWER_DEFAULTS, AdaptiveState, adagrad, adam, yogi
from fedloom.engine import LocalGrid, run_local

NUM_NODES, NUM_ROUNDS = 4, 3
SHAPES = [(30, 20), (20,)]
INITIAL = [np.random.default_rng(7).standard_normal(s).astype(np.float32) for s in SHAPES]


@pytest.fixture(autouse=True)
def flower_sampling_order():
    """Flower samples nodes with Python's global ``random``, so the order in which its
    strategy sums the replies (in float64) follows whatever ran before; Adagrad's division
    by a small second moment can turn that last-bit difference into a few 1e-6. A fixed
    order keeps the comparison at 1e-6 about the maths, not the summation order."""
    state = random.getstate()
    random.seed(0)
    yield
    random.setstate(state)


def client_noise(partition_id: int, server_round: int) -> list[np.ndarray]:
    rng = np.random.default_rng([partition_id, server_round])
    return [(0.1 * (partition_id + 1) * rng.standard_normal(s)).astype(np.float32) for s in SHAPES]


def num_examples(partition_id: int) -> int:
    return 10 * (partition_id + 1)


def client_update(weights, partition_id, server_round):
    return [w + n for w, n in zip(weights, client_noise(partition_id, server_round))]


message_app = ClientApp()


@message_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    weights = msg.content["arrays"].to_numpy_ndarrays()
    new = client_update(weights, pid, int(msg.content["config"]["server-round"]))
    return Message(RecordDict({"arrays": ArrayRecord(new),
                               "metrics": MetricRecord({"num-examples": num_examples(pid)})}),
                   reply_to=msg)


class NoiseClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.partition_id = partition_id

    def fit(self, parameters, config):
        new = client_update(parameters, self.partition_id, int(config["server-round"]))
        return new, num_examples(self.partition_id), {}


legacy_app = ClientApp(client_fn=lambda context: NoiseClient(
    int(context.node_config["partition-id"])).to_client())


def fedloom_rounds(optimizer) -> list[list[np.ndarray]]:
    """The global model after each round, replaying the clients with fedloom's step."""
    weights, state, models = list(INITIAL), optimizer.init(INITIAL), []
    sizes = np.array([num_examples(k) for k in range(NUM_NODES)], dtype=np.float64)
    for server_round in range(1, NUM_ROUNDS + 1):
        updates = [client_update(weights, k, server_round) for k in range(NUM_NODES)]
        aggregate = [sum(n * u[i].astype(np.float64) for n, u in zip(sizes, updates)) / sizes.sum()
                     for i in range(len(SHAPES))]
        weights, state = optimizer.update(weights, aggregate, state)
        models.append(weights)
    return models


def assert_models_equal(flower_models, fedloom_models):
    assert len(flower_models) == len(fedloom_models) == NUM_ROUNDS
    for flower, ours in zip(flower_models, fedloom_models):
        for a, b in zip(flower, ours):
            # fedloom keeps the model's float32 (Flower's Message API returns float64)
            assert b.dtype == np.float32 and b.shape == a.shape
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())


CASES = {  # name -> (Message-API class, legacy class, fedloom optimiser factory)
    "adam": (message_strategies.FedAdam, legacy_strategies.FedAdam, adam),
    "yogi": (message_strategies.FedYogi, legacy_strategies.FedYogi, yogi),
    "adagrad": (message_strategies.FedAdagrad, legacy_strategies.FedAdagrad, adagrad),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_flower_message_api_strategy_over_three_rounds(name):
    message_class, _, factory = CASES[name]
    models = []
    strategy = message_class(fraction_evaluate=0.0, min_available_nodes=NUM_NODES)
    strategy.start(grid=LocalGrid(message_app, NUM_NODES, seed=0), initial_arrays=ArrayRecord(INITIAL),
                   num_rounds=NUM_ROUNDS,
                   evaluate_fn=lambda r, arrays: models.append(arrays.to_numpy_ndarrays()) or None)
    # fedloom's defaults are the Message-API defaults: no argument needed
    assert_models_equal(models[1:], fedloom_rounds(factory()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_flower_legacy_strategy_over_three_rounds(name):
    _, legacy_class, factory = CASES[name]
    models = []

    def evaluate_fn(server_round, parameters, config):
        models.append([np.asarray(p) for p in parameters])
        return None

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = legacy_class(initial_parameters=ndarrays_to_parameters(INITIAL), fraction_evaluate=0.0,
                                min_available_clients=NUM_NODES, min_fit_clients=NUM_NODES,
                                evaluate_fn=evaluate_fn, on_fit_config_fn=lambda r: {"server-round": r})
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=NUM_ROUNDS))

    run_local(ServerApp(server_fn=server_fn), legacy_app, NUM_NODES, seed=0)
    # legacy FedAdam and FedAdagrad default to tau=1e-9 (the Message API to 1e-3)
    tau = 1e-9 if name in ("adam", "adagrad") else FLOWER_DEFAULTS[name]["tau"]
    assert_models_equal(models[1:], fedloom_rounds(factory(tau=tau)))


def test_defaults_are_flowers():
    import inspect

    for name, (message_class, _, _) in CASES.items():
        flower = inspect.signature(message_class.__init__).parameters
        for key, value in FLOWER_DEFAULTS[name].items():
            if key in flower:
                assert flower[key].default == value, (name, key)


def test_state_is_an_explicit_value_and_update_does_not_change_its_input():
    optimizer = adam()
    state = optimizer.init(INITIAL)
    assert state.count == 0 and all((m == 0).all() for m in state.first_moment + state.second_moment)
    aggregate = [w + 1.0 for w in INITIAL]
    new, new_state = optimizer.update(INITIAL, aggregate, state)
    assert isinstance(new_state, AdaptiveState) and new_state.count == 1
    assert all((m == 0).all() for m in state.first_moment)  # the old state is untouched
    # the same state gives the same step: nothing hidden between calls
    again, _ = optimizer.update(INITIAL, aggregate, state)
    assert all(np.array_equal(a, b) for a, b in zip(new, again))


def test_paper_formula_without_bias_correction_by_hand():
    # one coordinate, two rounds, eta=0.5, beta_1=0.5, beta_2=0.75, tau=0.1 (Reddi et al. Alg. 2)
    optimizer = adam(eta=0.5, beta_1=0.5, beta_2=0.75, tau=0.1, bias_correction=False)
    state = optimizer.init([np.zeros(1)])
    x, state = optimizer.update([np.zeros(1)], [np.array([2.0])], state)
    # m = 0.5 * 2 = 1; v = 0.25 * 4 = 1; x = 0 + 0.5 * 1 / (1 + 0.1)
    np.testing.assert_allclose(x[0], [0.5 / 1.1])
    x, state = optimizer.update(x, [x[0] - 1.0], state)
    # delta = -1: m = 0.5 - 0.5 = 0; v = 0.75 + 0.25 = 1; x unchanged
    np.testing.assert_allclose(x[0], [0.5 / 1.1])
    np.testing.assert_allclose(state.second_moment[0], [1.0])


def test_mismatched_state_is_refused_with_a_fix():
    optimizer = yogi()
    state = optimizer.init(INITIAL[:1])
    with pytest.raises(ValueError, match="init"):
        optimizer.update(INITIAL, INITIAL, state)
    with pytest.raises(ValueError, match="eta > 0"):
        adam(eta=0.0)
