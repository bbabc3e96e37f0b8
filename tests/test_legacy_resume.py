"""The legacy-API strategies resume bit for bit: a real Flower legacy ServerApp with
NumPyClients on fedloom's local engine, stopped after round 3 and continued from a
checkpoint file, ends with the uninterrupted run's weights."""

from __future__ import annotations

import numpy as np
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fedloom.checkpoint import load_checkpoint, save_checkpoint
from fedloom.engine import run_local
from fedloom.records import ndarrays_to_parameters
from fedloom.strategies import legacy

from numpy_apps import INITIAL_WEIGHTS, legacy_app


def run(num_rounds: int, initial, seed: int, state=None, keep_at: int | None = None):
    """``num_rounds`` legacy rounds from ``initial`` (6 clients, 3 sampled, server
    momentum); returns the final weights and, at round ``keep_at``, the weights and the
    strategy's state."""
    seen: dict = {}
    strategy = legacy.FederatedAveraging(
        server_learning_rate=0.7, server_momentum=0.9, fraction_fit=0.5, min_fit_clients=3,
        min_available_clients=6, fraction_evaluate=0.0, seed=seed,
        initial_parameters=ndarrays_to_parameters(initial))
    if state is not None:
        strategy.load_state_dict(state)

    def evaluate_fn(server_round, parameters, config):
        seen["final"] = [np.array(p) for p in parameters]
        if server_round == keep_at:
            seen["kept"] = {"arrays": seen["final"], "strategy": strategy.state_dict()}
        return None

    strategy.evaluate_fn = evaluate_fn

    def server_fn(context):
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))

    run_local(ServerApp(server_fn=server_fn), legacy_app, 6, seed=1)
    return seen, strategy


def test_legacy_strategy_resumes_from_a_checkpoint_bit_for_bit(tmp_path):
    whole, _ = run(6, INITIAL_WEIGHTS, seed=5)
    first, strategy = run(3, INITIAL_WEIGHTS, seed=5, keep_at=3)
    assert first["kept"]["strategy"]["schedule"]["server_step"]["velocity"] is not None
    assert len({tuple(r.clients_used) for r in strategy.reports}) > 1  # sampling matters
    save_checkpoint(tmp_path / "c.npz", first["kept"])
    loaded = load_checkpoint(tmp_path / "c.npz")

    rest, _ = run(3, loaded["arrays"], seed=999, state=loaded["strategy"])  # only the state can match
    for a, b in zip(whole["final"], rest["final"]):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    fresh, _ = run(3, loaded["arrays"], seed=999)
    assert not np.array_equal(whole["final"][0], fresh["final"][0])
