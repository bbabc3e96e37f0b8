"""Every fedloom strategy, both Flower APIs, end to end in Flower's simulation engine.

Four real numpy clients (``numpy_apps``) train for two rounds; one of them always
returns NaN weights. The global model must equal the hand-computed one: the NaN client
left out, the rest combined as each method says.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.server import ServerApp, ServerConfig
from flwr.server.compat import start_grid
from flwr.serverapp import Grid
from flwr.simulation import run_simulation

from fedloom.strategies import FederatedAveraging, Hybrid, SimpleAverage, WeightedAverage, legacy
from flwr.common import ndarrays_to_parameters

from numpy_apps import INITIAL_WEIGHTS, client_step, legacy_app, message_app

pytestmark = pytest.mark.slow

NUM_ROUNDS = 2
SIZES = np.array([10.0, 20.0, 30.0])  # clients 0..2 (client 3 sends NaN)
QUALITY = np.array([1.0, 1 / 2, 1 / 3])


def steps(epochs: int = 1) -> np.ndarray:
    return np.array([client_step(k, epochs) for k in range(3)])


def weighted(values: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(values * weights) / np.sum(weights))


# name -> (options common to both APIs, message-API factory, legacy factory, expected final value)
CASES = {
    "simple": (SimpleAverage, legacy.SimpleAverage, {}, NUM_ROUNDS * steps().mean()),
    "weighted_size": (WeightedAverage, legacy.WeightedAverage, {"weight_by": "num_examples"},
                      NUM_ROUNDS * weighted(steps(), SIZES)),
    "weighted_quality": (WeightedAverage, legacy.WeightedAverage, {"weight_by": "quality"},
                         NUM_ROUNDS * weighted(steps(), QUALITY)),
    "fedavg_server_lr": (FederatedAveraging, legacy.FederatedAveraging,
                         {"local_epochs": 2, "server_learning_rate": 0.5},
                         NUM_ROUNDS * 0.5 * weighted(steps(2), SIZES)),
    "hybrid_size_quality": (Hybrid.size_quality, legacy.Hybrid.size_quality, {},
                            NUM_ROUNDS * weighted(steps(), SIZES * QUALITY)),
    "hybrid_trimmed": (Hybrid.robust_weighted, legacy.Hybrid.robust_weighted,
                       {"robust": "trimmed_mean", "beta": 0.34}, NUM_ROUNDS * steps()[1]),
    "hybrid_krum": (Hybrid.robust_weighted, legacy.Hybrid.robust_weighted,
                    {"robust": "krum", "num_byzantine": 0, "num_selected": 2},
                    NUM_ROUNDS * weighted(steps()[:2], SIZES[:2])),
    "hybrid_warmup": (Hybrid.warmup_then_fedavg, legacy.Hybrid.warmup_then_fedavg,
                      {"warmup_rounds": 1, "local_epochs": 3},
                      steps().mean() + weighted(steps(3), SIZES)),
}


def run_message_api() -> dict:
    results, strategies = {}, {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        for name, (make, _, options, _) in CASES.items():
            strategy = make(**options, min_available_nodes=4, min_train_nodes=4, seed=1)
            evaluations = []
            result = strategy.start(
                grid=grid, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=NUM_ROUNDS,
                evaluate_fn=lambda rnd, arrays: evaluations.append(rnd) or MetricRecord({"r": rnd}),
            )
            results[name] = (result, evaluations)
            strategies[name] = strategy

    run_simulation(server, message_app, num_supernodes=4,
                   backend_config={"client_resources": {"num_cpus": 1}})
    return results, strategies


def run_legacy_api() -> dict:
    histories, strategies = {}, {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        for name, (_, make, options, _) in CASES.items():
            strategy = make(**options, min_available_clients=4, min_fit_clients=4,
                            initial_parameters=ndarrays_to_parameters(INITIAL_WEIGHTS))
            history = start_grid(grid=grid, strategy=strategy, config=ServerConfig(num_rounds=NUM_ROUNDS))
            histories[name] = history
            strategies[name] = strategy

    run_simulation(server, legacy_app, num_supernodes=4,
                   backend_config={"client_resources": {"num_cpus": 1}})
    return histories, strategies


@pytest.fixture(scope="module")
def message_runs():
    return run_message_api()


@pytest.fixture(scope="module")
def legacy_runs():
    return run_legacy_api()


@pytest.mark.parametrize("name", sorted(CASES))
def test_message_api_gives_the_expected_global_model(message_runs, name):
    (result, evaluations), strategy = message_runs[0][name], message_runs[1][name]
    expected = CASES[name][3]
    final = result.arrays.to_numpy_ndarrays()
    for array, initial in zip(final, INITIAL_WEIGHTS):
        assert array.dtype == initial.dtype and array.shape == initial.shape
        np.testing.assert_allclose(array, expected, rtol=1e-6)
    assert evaluations == [0, 1, 2]  # Flower's server-side evaluate_fn ran every round
    metrics = result.train_metrics_clientapp[NUM_ROUNDS]
    assert metrics["rejected-non_finite"] == 1
    assert [r.rejected_counts()["non_finite"] for r in strategy.reports] == [1] * NUM_ROUNDS
    assert metrics["bytes-received"] > 4 * 8 * 4  # 4 replies of 8 float32 plus headers
    assert metrics["aggregation-seconds"] >= 0
    # federated evaluation metrics are averaged, not lost
    assert result.evaluate_metrics_clientapp[NUM_ROUNDS]["mean-weight"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_legacy_api_gives_the_expected_global_model(legacy_runs, name):
    history, strategy = legacy_runs[0][name], legacy_runs[1][name]
    expected = CASES[name][3]
    assert len(strategy.reports) == NUM_ROUNDS
    assert [r.rejected_counts()["non_finite"] for r in strategy.reports] == [1] * NUM_ROUNDS
    assert history.metrics_distributed_fit["clients-used"][-1] == (NUM_ROUNDS, len(strategy.reports[-1].clients_used))
    # the legacy History records the federated evaluation loss = mean of weights
    assert history.losses_distributed[-1][1] == pytest.approx(expected, rel=1e-5)
