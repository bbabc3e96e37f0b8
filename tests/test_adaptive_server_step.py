"""FedAdam / FedYogi / FedAdagrad as fedloom's server-step stage, at the strategy level.

The named strategies built from ``conf/strategy/fedadam.yaml`` (and ``fedyogi``,
``fedadagrad``) run on fedloom's LocalGrid against Flower's own FedAdam / FedYogi /
FedAdagrad on the same numpy clients (seeded noise per client and round): the global
model must agree after each of 3 rounds to 1e-6 relative, in both Flower APIs. The
moments are stage state: a run checkpointed after round 2 and resumed for round 3
equals the uninterrupted run bit for bit, also for the robust hybrid
``robust_trimmed_adam`` that Flower cannot express.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import ArrayRecord, Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server import strategy as legacy_strategies
from flwr.serverapp import strategy as message_strategies
from hydra.utils import get_object

from fedloom.aggregation import (
    AdaptiveServerStep,
    ClientUpdate,
    Pipeline,
    TrimmedMean,
    WeightBy,
)
from fedloom.aggregation.robust import trimmed_mean
from fedloom.aggregation.server_optimizers import adam
from fedloom.checkpoint import load_checkpoint, save_checkpoint
from fedloom.engine import LocalGrid, run_local
from fedloom.errors import ConfigError
from fedloom.rounds import run_rounds
from fedloom.strategies import FederatedAveraging, Hybrid

from test_server_optimizers import INITIAL, NUM_NODES, NUM_ROUNDS, legacy_app, message_app

CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"
FLOWER = {  # config -> (Flower Message-API class, Flower legacy class, server_optimizer)
    "fedadam": (message_strategies.FedAdam, legacy_strategies.FedAdam, "adam"),
    "fedyogi": (message_strategies.FedYogi, legacy_strategies.FedYogi, "yogi"),
    "fedadagrad": (message_strategies.FedAdagrad, legacy_strategies.FedAdagrad, "adagrad"),
}


def named(config: str, api: str = "", **extra):
    """The strategy ``conf/strategy/<config>.yaml`` builds (``api="legacy"``: that API's class)."""
    options = yaml.safe_load((CONF / f"{config}.yaml").read_text())
    target = options.pop("_target_")
    if api == "legacy":
        target = target.replace("fedloom.strategies.", "fedloom.strategies.legacy.")
    options = {k: 1 if isinstance(v, str) and v.startswith("${") else v for k, v in options.items()}
    return get_object(target)(**{**options, **extra})


def models_of_start(strategy) -> list[list[np.ndarray]]:
    models: list = []
    strategy.start(grid=LocalGrid(message_app, NUM_NODES, seed=0), initial_arrays=ArrayRecord(INITIAL),
                   num_rounds=NUM_ROUNDS,
                   evaluate_fn=lambda r, arrays: models.append(arrays.to_numpy_ndarrays()) or None)
    return models[1:]  # round 0 is the initial model


def assert_close(expected_models, actual_models) -> None:
    assert len(expected_models) == len(actual_models) == NUM_ROUNDS
    for expected, actual in zip(expected_models, actual_models):
        for e, a in zip(expected, actual):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6 * np.abs(e).max())


@pytest.mark.parametrize("config", sorted(FLOWER))
def test_named_fedopt_strategies_equal_flowers_message_api_classes_over_three_rounds(config):
    flower_class, _, optimizer = FLOWER[config]
    expected = models_of_start(flower_class(fraction_evaluate=0.0, min_available_nodes=NUM_NODES))
    ours = named(config, fraction_evaluate=0.0, min_available_nodes=NUM_NODES, seed=0)
    assert [type(s).__name__ for s in ours.schedule.at(1).stages][-1] == "AdaptiveServerStep"
    actual = models_of_start(ours)
    assert_close(expected, actual)
    # and the server step moved the model away from the plain weighted mean
    plain = models_of_start(FederatedAveraging(fraction_evaluate=0.0, min_available_nodes=NUM_NODES))
    assert not np.allclose(plain[-1][0], actual[-1][0], rtol=1e-3)


@pytest.mark.parametrize("config", sorted(FLOWER))
def test_named_fedopt_strategies_equal_flowers_legacy_classes_over_three_rounds(config):
    _, flower_class, optimizer = FLOWER[config]
    # Flower's legacy FedAdam and FedAdagrad default to tau=1e-9 (its Message API to 1e-3)
    tau = 1e-9 if optimizer in ("adam", "adagrad") else 1e-3

    def run(make) -> list[list[np.ndarray]]:
        models: list = []

        def evaluate_fn(server_round, parameters, config):
            models.append([np.asarray(p) for p in parameters])
            return None

        def server_fn(context: Context) -> ServerAppComponents:
            strategy = make(initial_parameters=ndarrays_to_parameters(INITIAL), fraction_evaluate=0.0,
                            min_available_clients=NUM_NODES, min_fit_clients=NUM_NODES,
                            evaluate_fn=evaluate_fn)
            return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=NUM_ROUNDS))

        run_local(ServerApp(server_fn=server_fn), legacy_app, NUM_NODES, seed=0)
        return models[1:]

    expected = run(lambda **o: flower_class(on_fit_config_fn=lambda r: {"server-round": r}, **o))
    actual = run(lambda **o: named(config, "legacy", server_tau=tau, seed=0, **o))
    assert_close(expected, actual)


def final(result) -> list[np.ndarray]:
    return result.arrays.to_numpy_ndarrays()


@pytest.mark.parametrize("config", ["fedadam", "robust_trimmed_adam"])
def test_three_rounds_equal_two_then_checkpoint_restore_and_one_bit_for_bit(config, tmp_path):
    def make():
        return named(config, fraction_evaluate=0.0, min_available_nodes=NUM_NODES, seed=3)

    whole = run_rounds(make(), LocalGrid(message_app, NUM_NODES, seed=0), ArrayRecord(INITIAL), 3)
    first, saved = make(), {}

    def keep(server_round, arrays, result):
        if server_round == 2:
            saved.update(arrays=arrays.to_numpy_ndarrays(), strategy=first.state_dict())

    run_rounds(first, LocalGrid(message_app, NUM_NODES, seed=0), ArrayRecord(INITIAL), 2, on_round_end=keep)
    moments = saved["strategy"]["schedule"]["adaptive_server_step"]
    assert moments["count"] == 2 and len(moments["second_moment"]) == len(INITIAL)
    save_checkpoint(tmp_path / "c.npz", saved)
    loaded = load_checkpoint(tmp_path / "c.npz")
    second = make()
    second.load_state_dict(loaded["strategy"])
    rest = run_rounds(second, LocalGrid(message_app, NUM_NODES, seed=0), ArrayRecord(loaded["arrays"]), 3,
                      first_round=3)
    for a, b in zip(final(whole), final(rest)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    fresh = run_rounds(make(), LocalGrid(message_app, NUM_NODES, seed=0), ArrayRecord(loaded["arrays"]), 3,
                       first_round=3)  # moments lost: a different model
    assert not np.array_equal(final(whole)[0], final(fresh)[0])


def test_adam_after_a_trimmed_mean_is_adam_on_the_trimmed_mean():
    rng = np.random.default_rng(4)
    global_weights = [rng.standard_normal((5, 3)).astype(np.float32)]
    updates = [ClientUpdate(str(k), [global_weights[0] + rng.standard_normal((5, 3)).astype(np.float32)],
                            10 + k, {}) for k in range(7)]
    pipeline = Pipeline(WeightBy("uniform"), TrimmedMean(0.2), AdaptiveServerStep("adam", eta=0.3))
    rule, state = adam(eta=0.3), None
    model = global_weights
    for server_round in (1, 2):
        result = pipeline(model, updates, server_round=server_round)
        state = rule.init(model) if state is None else state
        expected, state = rule.update(model, trimmed_mean([u.weights for u in updates], 0.2), state)
        np.testing.assert_array_equal(result.weights[0], expected[0])
        model = result.weights
    assert pipeline.states["adaptive_server_step"]["count"] == 2


def test_robust_trimmed_adam_is_filter_trimmed_mean_then_adam():
    stages = [type(s).__name__ for s in named("robust_trimmed_adam").schedule.at(1).stages]
    assert stages == ["RejectNormOutliers", "Bucket", "WeightBy", "TrimmedMean", "AdaptiveServerStep"]


def test_server_optimizer_settings_that_do_not_belong_together_are_refused():
    with pytest.raises(ConfigError, match="server_momentum=0.9 is SGD's momentum"):
        FederatedAveraging(server_optimizer="adam", server_momentum=0.9)
    with pytest.raises(ConfigError, match="belong to the adaptive server optimizers"):
        FederatedAveraging(server_beta_1=0.9)
    with pytest.raises(ConfigError, match="server_optimizer must be one of"):
        Hybrid.robust_weighted(server_optimizer="adamw")
    with pytest.raises(ConfigError, match="eta > 0"):
        FederatedAveraging(server_optimizer="yogi", server_learning_rate=0.0)


def test_the_stages_declare_what_they_read_and_keep_state_outside_themselves():
    from fedloom.aggregation import Bulyan, GeometricMedian, Mean, RoundState
    from fedloom.privacy import accounting_problems

    stage = AdaptiveServerStep("yogi")
    assert stage.needs_global_model and stage.stateful and not stage.dp_sensitivity_preserving
    assert (stage.eta, stage.beta_1, stage.beta_2, stage.tau) == (0.01, 0.9, 0.99, 1e-3)  # Flower's
    assert not Bulyan(1).uses_weights and GeometricMedian().uses_weights
    before = repr(stage)
    state = RoundState(1, [np.zeros(2, np.float32)],
                       [ClientUpdate(str(k), [np.full(2, k, np.float32)], 1, {}) for k in range(3)])
    Mean().update(state, None)
    first = stage.init()
    second = stage.update(state, first)
    assert second["count"] == 1 and first == stage.init() and repr(stage) == before
    third = stage.update(state, second)
    assert third["count"] == 2 and second["count"] == 1  # the old state is not changed in place
    # a server optimiser changes the noised mean's sensitivity: DP accounting says so
    assert any("adaptive_server_step" in p or "AdaptiveServerStep" in p
               for p in accounting_problems(named("fedadam").schedule))
