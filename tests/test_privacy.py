"""Privacy that composes: Flower's DP wrappers and client clipping mods around fedloom
strategies (Message API on the LocalGrid engine, legacy API too), SecAgg+ with a legacy
fedloom strategy on Flower's simulation engine, and the strategies the epsilon does not
cover. What makes the epsilon hold is tested in ``test_privacy_guarantee.py``.

Toy clients (``numpy_apps``): client ``k`` moves every one of the 8 weights by
``s_k = 0.5 (k + 1)^2`` (client 3 sends NaN), so clipping to norm ``C`` is a hand
computation: the update's norm is ``s_k * sqrt(8)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server import strategy as legacy_flower
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower

from fedloom.engine import LocalGrid, run_local
from fedloom.errors import ConfigError
from fedloom.experiment import run_experiment
from fedloom.faults import FaultPlan
from fedloom.privacy import PrivacySettings, ScreenReplies, accounting_problems
from fedloom.strategies import SimpleAverage, WeightedAverage, legacy

from numpy_apps import INITIAL_WEIGHTS, client_step, legacy_app, legacy_client_fn, message_app
from test_experiment import config

SQRT8 = math.sqrt(8.0)


def clipped_step(k: int, clip: float) -> float:
    """Per-weight move of client k after its update is clipped to L2 norm ``clip``."""
    step = client_step(k, 1)
    return step * min(1.0, clip / (step * SQRT8))


def settings(**options) -> PrivacySettings:
    options = {"mode": "central_fixed", "noise_multiplier": 1.0, "clipping_norm": 1.0, **options}
    return PrivacySettings.from_config(options, options.pop("num_sampled", 10), options.pop("num_clients", 100))


def test_accounting_problems_name_what_breaks_the_guarantee():
    assert accounting_problems(SimpleAverage().schedule) == []
    assert "weights clients by 'num_examples'" in accounting_problems(WeightedAverage().schedule)[0]
    from fedloom.strategies import FederatedAveraging, Hybrid

    assert "server step" in accounting_problems(FederatedAveraging(server_momentum=0.9).schedule)[-1]
    assert "CoordinateMedian" in " ".join(accounting_problems(Hybrid.robust_weighted("median").schedule))


# --------------------------------------------------------------------------- Message API
def run_message(strategy, client_app=message_app, num_nodes=3, rounds=2):
    grid = LocalGrid(client_app, num_nodes, seed=0)
    return strategy.start(grid=grid, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=rounds)


def simple(num_nodes=3):
    return SimpleAverage(min_available_nodes=num_nodes, min_train_nodes=num_nodes,
                         fraction_evaluate=0.0, seed=0, absurd_norm_ratio=None)


def with_mods(app, *mods) -> ClientApp:
    wrapped = ClientApp(mods=list(mods))

    @wrapped.train()
    def train(msg, context):
        return app(msg, context)

    return wrapped


@pytest.mark.parametrize("side", ["server", "client"])
def test_fixed_clipping_wrapper_clips_fedloom_updates_exactly(side):
    clip = 2.0
    inner = simple()
    if side == "server":
        wrapped = flower.DifferentialPrivacyServerSideFixedClipping(inner, 0.0, clip, 3)
        app = message_app
    else:
        wrapped = flower.DifferentialPrivacyClientSideFixedClipping(inner, 0.0, clip, 3)
        app = with_mods(message_app, fixedclipping_mod)
    result = run_message(wrapped, app)
    expected = 2 * np.mean([clipped_step(k, clip) for k in range(3)])
    for array in result.arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(array, expected, rtol=1e-6)
    assert [len(r.clients_used) for r in inner.reports] == [3, 3]


@pytest.mark.parametrize("side", ["server", "client"])
def test_adaptive_clipping_wrapper_moves_the_norm_towards_the_quantile(side):
    inner = simple()
    if side == "server":
        wrapped = flower.DifferentialPrivacyServerSideAdaptiveClipping(
            inner, 0.0, 3, initial_clipping_norm=2.0, target_clipped_quantile=0.5, clip_norm_lr=0.2)
        app = message_app
    else:
        wrapped = flower.DifferentialPrivacyClientSideAdaptiveClipping(
            inner, 0.0, 3, initial_clipping_norm=2.0, target_clipped_quantile=0.5, clip_norm_lr=0.2)
        app = with_mods(message_app, adaptiveclipping_mod)
    result = run_message(wrapped, app, rounds=1)
    # round 1: norms 1.41, 5.66, 12.7 against C = 2: two of three clipped
    np.testing.assert_allclose(result.arrays.to_numpy_ndarrays()[0],
                               np.mean([clipped_step(k, 2.0) for k in range(3)]), rtol=1e-6)
    assert wrapped.clipping_norm == pytest.approx(2.0 * math.exp(-0.2 * (2 / 3 - 0.5)))


def test_screened_dp_keeps_faulty_rounds_that_flower_alone_would_drop():
    crash_then_nan = FaultPlan(4, seed=0, clients=1.0, crash=0.25)  # some client crashes
    app = with_mods(message_app, crash_then_nan.mod)
    crashes = [sum(crash_then_nan.fault(r, k) == "crash" for k in range(4)) for r in (1, 2)]
    assert any(crashes), "the plan must crash someone for this test to mean anything"

    plain_inner = simple(4)
    plain = flower.DifferentialPrivacyServerSideFixedClipping(plain_inner, 0.0, 2.0, 4)
    run_message(plain, app, num_nodes=4)
    # Flower's wrapper drops a round with any error reply: the fedloom strategy never saw it
    assert len(plain_inner.reports) == sum(c == 0 for c in crashes)

    inner = simple(4)
    screened = ScreenReplies(flower.DifferentialPrivacyServerSideFixedClipping(inner, 0.0, 2.0, 4), inner)
    run_message(screened, app, num_nodes=4)
    assert len(inner.reports) == 2
    for report, crashed in zip(inner.reports, crashes):
        counts = report.rejected_counts()
        nan = int(crash_then_nan.fault(report.server_round, 3) != "crash")  # client 3 sends NaN
        assert counts.get("client_error", 0) == crashed
        assert counts.get("non_finite", 0) == nan  # screened before Flower's clipping
        assert len(report.clients_used) == 4 - crashed - nan > 0
        assert not report.skipped_reason


# --------------------------------------------------------------------------- legacy API
def test_legacy_dp_wrapper_composes_with_a_legacy_fedloom_strategy():
    inner = legacy.SimpleAverage(min_available_clients=3, min_fit_clients=3, fraction_evaluate=0.0,
                                 initial_parameters=ndarrays_to_parameters(INITIAL_WEIGHTS))
    wrapped = legacy_flower.DifferentialPrivacyServerSideFixedClipping(inner, 0.0, 2.0, 3)
    seen = {}

    def server_fn(context: Context):
        seen["strategy"] = wrapped
        return ServerAppComponents(strategy=wrapped, config=ServerConfig(num_rounds=2))

    run_local(ServerApp(server_fn=server_fn), legacy_app, 3, seed=0)
    assert [len(r.clients_used) for r in inner.reports] == [3, 3]
    # the DP wrapper passes the clipped updates to the fedloom maths
    assert inner.reports[-1].aggregation_seconds >= 0


def secagg_app() -> ClientApp:
    """The toy NumPyClients behind Flower's SecAgg+ client mod."""
    from flwr.client.mod import secaggplus_mod

    return ClientApp(client_fn=legacy_client_fn, mods=[secaggplus_mod])


@pytest.mark.slow
def test_secagg_plus_with_a_legacy_fedloom_strategy_on_flowers_engine():
    from flwr.server.compat import LegacyContext
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    server = ServerApp()
    out = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = legacy.WeightedAverage(
            min_available_clients=3, min_fit_clients=3, fraction_evaluate=0.0,
            initial_parameters=ndarrays_to_parameters(INITIAL_WEIGHTS))
        legacy_context = LegacyContext(context=context, config=ServerConfig(num_rounds=2), strategy=strategy)
        DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2))(
            grid, legacy_context)
        out["strategy"] = strategy
        out["parameters"] = legacy_context.state.array_records["parameters"].to_numpy_ndarrays()

    run_simulation(server, secagg_app(), num_supernodes=3, backend_config={"client_resources": {"num_cpus": 1}})
    steps = np.array([client_step(k, 1) for k in range(3)])
    sizes = np.array([10.0, 20.0, 30.0])
    expected = 2 * float(np.sum(steps * sizes) / sizes.sum())  # SecAgg+ sums n_k * w_k
    for array in out["parameters"]:
        # SecAgg+ quantises stochastically (2^22 levels over [-8, 8], scaled by the client
        # weights): errors of ~1e-4 per round; the simple mean would be 4.67, not 6
        np.testing.assert_allclose(array, expected, atol=2e-3)
    assert [len(r.clients_used) for r in out["strategy"].reports] == [3, 3]


# --------------------------------------------------------------------------- experiments
def test_dp_refuses_strategies_its_epsilon_does_not_cover(tmp_path):
    with pytest.raises(ConfigError, match=r"dp=central_fixed with strategy=fedloom.strategies.WeightedAverage: "
                                          r"the reported epsilon would not hold, because .*dp.strict=false"):
        run_experiment(config("dp=central_fixed", "num_rounds=1"), tmp_path)
    records = run_experiment(config("dp=central_fixed", "dp.strict=false", "num_rounds=1",
                                    "num_clients=20", "clients_per_round=5", "plot=false"), tmp_path)
    assert records[-1]["dp_epsilon"] > 0
