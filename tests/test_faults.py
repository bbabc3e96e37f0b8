"""Client faults: every injected fault is left out of its round with the right reason,
counted in the history, and training goes on (real Keras clients on digits, LocalGrid)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedloom.aggregation import ClientUpdate, Pipeline, WeightBy
from fedloom.engine import LocalGrid
from fedloom.errors import ConfigError
from fedloom.experiment import builders, prepare_experiment, run_experiment
from fedloom.faults import FAULT_KINDS, FaultPlan
from fedloom.strategies.reporting import absurd_norm_guards

from conftest import config

# What the server must make of each fault (malformed rotates through three breakages).
REASON = {"crash": "client_error", "disconnect": "disconnected", "nan": "non_finite",
          "huge": "absurd_norm"}
MALFORMED = {0: "wrong_num_arrays", 1: "shape_mismatch", 2: "dtype_mismatch"}


def run_on_grid(cfg, output_dir):
    """Run like simulate.py's local engine, keeping the grid (node id -> partition id)."""
    experiment = prepare_experiment(cfg, output_dir)
    grid = LocalGrid(builders.build_client_app(experiment.settings), int(cfg["num_clients"]), seed=int(cfg["seed"]))
    return experiment, grid, experiment.start(grid)


def test_fault_plan_is_seeded_and_follows_its_probabilities():
    plan = FaultPlan(50, seed=3, clients=0.4, crash=0.3, nan=0.2, huge=0.1)
    assert len(plan.faulty) == 20
    draws = Counter(plan.fault(r, p) for r in range(1, 201) for p in range(50))
    faulty_draws = 200 * 20
    for kind, probability in [("crash", 0.3), ("nan", 0.2), ("huge", 0.1)]:
        assert draws[kind] / faulty_draws == pytest.approx(probability, abs=0.03)
    healthy = set(range(50)) - plan.faulty
    assert all(plan.fault(r, p) is None for r in range(1, 201) for p in healthy)
    assert draws["slow"] == 0
    again = FaultPlan(50, seed=3, clients=0.4, crash=0.3, nan=0.2, huge=0.1)
    other = FaultPlan(50, seed=4, clients=0.4, crash=0.3, nan=0.2, huge=0.1)
    assert again.faulty == plan.faulty != other.faulty
    assert [again.fault(5, p) for p in range(50)] == [plan.fault(5, p) for p in range(50)]
    with pytest.raises(ConfigError, match="faults: the fault probabilities sum to 1.2"):
        FaultPlan(10, crash=0.6, nan=0.6)


def test_every_fault_is_left_out_with_its_reason_and_counted(tmp_path):
    cfg = config("num_clients=20", "clients_per_round=10", "num_rounds=6", "plot=false",
                 "faults.crash=0.12", "faults.disconnect=0.1", "faults.slow=0.1",
                 "faults.slow_seconds=0.01", "faults.nan=0.12", "faults.malformed=0.2",
                 "faults.huge=0.1")
    experiment, grid, records = run_on_grid(cfg, tmp_path)
    plan = FaultPlan.from_config(cfg["faults"], 20, 0)
    seen = Counter()
    for report in experiment.strategy.reports:
        r = report.server_round
        got = {grid.partition_id(int(node)): reason for node, reason, _ in report.rejected}
        used = {grid.partition_id(int(node)) for node in report.clients_used}
        for pid in got.keys() | used:
            fault = plan.fault(r, pid)
            seen[fault] += 1
            if fault is None or fault == "slow":
                assert pid in used, (r, pid, fault, got.get(pid))
            elif fault == "malformed":
                assert got[pid] == MALFORMED[(r + pid) % 3], (r, pid)
            else:
                assert got[pid] == REASON[fault], (r, pid, fault)
        assert len(got) + len(used) == 10  # every sampled client is accounted for
        history = records[r]
        assert history["num_rejected"] == len(got) and history["num_clients"] == len(used)
        assert sum(history["rejected"].values()) == len(got)
    assert set(seen) == {None, *FAULT_KINDS}, seen  # the test saw every kind of fault
    assert records[-1]["accuracy"] > records[0]["accuracy"] + 0.2  # and training went on


def test_training_converges_with_30_percent_crashing_clients(tmp_path):
    common = ("num_clients=20", "clients_per_round=10", "num_rounds=30", "plot=false", "checkpoint_every=0")
    healthy = run_experiment(config(*common), tmp_path / "healthy")
    experiment, grid, crashing = run_on_grid(
        config(*common, "faults.clients=0.3", "faults.crash=1.0"), tmp_path / "crashing")
    faulty = FaultPlan(20, 0, clients=0.3, crash=1.0).faulty
    assert len(faulty) == 6
    for report in experiment.strategy.reports:
        crashed = {grid.partition_id(int(node)) for node, reason, _ in report.rejected}
        assert {grid.partition_id(int(n)) for n in report.clients_used}.isdisjoint(faulty)
        assert crashed <= faulty and report.rejected_counts().keys() <= {"client_error"}
    assert sum(r["rejected"].get("client_error", 0) for r in crashing) == \
        sum(len(rep.rejected) for rep in experiment.strategy.reports) > 30
    assert crashing[-1]["accuracy"] > 0.8
    assert crashing[-1]["accuracy"] > healthy[-1]["accuracy"] - 0.05


def test_rounds_without_enough_valid_updates_keep_the_global_model(tmp_path):
    cfg = config("num_clients=10", "clients_per_round=5", "num_rounds=3", "min_valid_updates=2",
                 "faults.nan=1.0", "plot=false")  # every update holds NaN
    experiment, _, records = run_on_grid(cfg, tmp_path)
    with np.load(tmp_path / "final_weights.npz") as final:
        weights = [final[k] for k in final.files]
    for a, b in zip(weights, experiment.initial_arrays.to_numpy_ndarrays()):
        assert a.tobytes() == b.tobytes()
    for record in records[1:]:
        assert record["skipped"] and record["num_clients"] == 0
        assert record["rejected"] == {"non_finite": 5}
        assert record["accuracy"] == records[0]["accuracy"]


def test_a_slow_client_past_the_round_timeout_counts_as_no_reply(tmp_path):
    cfg = config("num_clients=5", "clients_per_round=5", "num_rounds=2", "round_timeout=0.4",
                 "faults.clients=0.2", "faults.slow=1.0", "faults.slow_seconds=0.6", "plot=false")
    experiment, grid, records = run_on_grid(cfg, tmp_path)
    (slow,) = FaultPlan.from_config(cfg["faults"], 5, 0).faulty
    for report in experiment.strategy.reports:
        late = {grid.partition_id(int(n)) for n, reason, _ in report.rejected if reason == "no_reply"}
        assert slow in late
        assert len(late) + len(report.clients_used) == 5
    assert all(r["rejected"].get("no_reply", 0) >= 1 for r in records[1:])


def test_absurd_norm_guard_leaves_out_garbage_but_not_large_honest_updates():
    reference = [np.zeros(4, np.float32)]
    updates = [ClientUpdate(str(k), [np.full(4, 1.0 + 0.1 * k, np.float32)], 1) for k in range(5)]
    updates.append(ClientUpdate("x10", [np.full(4, 10.0, np.float32)], 1))
    updates.append(ClientUpdate("x1e6", [np.full(4, 1e6, np.float32)], 1))
    result = Pipeline(WeightBy("uniform"))(reference, updates, guards=absurd_norm_guards(1000.0))
    assert [(r.client_id, r.reason) for r in result.rejected] == [("x1e6", "absurd_norm")]
    assert "x10" in result.used
    unguarded = Pipeline(WeightBy("uniform"))(reference, updates)
    assert unguarded.weights[0][0] > 1e5  # one garbage update owns a plain mean
    # alone in its round (no median to compare with), garbage is still refused: it
    # moves the model by more than 1000 times the model's own size
    alone = Pipeline(WeightBy("uniform"))(reference, updates[-1:], guards=absurd_norm_guards(1000.0))
    assert alone.weights is None and alone.rejected[0].reason == "absurd_norm"
