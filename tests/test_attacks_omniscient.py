"""Omniscient attacks in the run: the server-side grid gives the marked attackers' replies
each paper's crafted update (checked against the formulas, computed here with numpy and
scipy), the robust reducers' behaviour under ALIE and IPM, lying metadata with and
without a weight cap, label flipping, and ``simulate.py attack=alie
strategy=robust_centered_clip`` end to end."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from scipy.stats import norm

from fedloom.aggregation import (
    ClientUpdate,
    Pipeline,
    TrimmedMean,
    WeightBy,
    coordinate_median,
    trimmed_mean,
    unweighted_mean,
    weighted_mean,
)
from fedloom.aggregation.weight_cap import cap_weights
from fedloom.attacks import ATTACKER_RECORD, AttackPlan, flip_labels
from fedloom.data import ClientData
from fedloom.engine import LocalGrid
from fedloom.errors import ConfigError
from fedloom.omniscient import OmniscientAttackGrid, attack_grid

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(40, 20), (20,)]  # 820 coordinates
SIGNAL, SPREAD = 1.0, 1.0  # honest deltas: a shared direction mu plus client noise


def honest_delta(partition_id: int) -> list[np.ndarray]:
    """Client ``k``'s update: ``mu + SPREAD * noise_k`` (float32), mu shared by all."""
    mu_rng, rng = np.random.default_rng(1234), np.random.default_rng(partition_id)
    return [(SIGNAL * mu_rng.normal(size=s) + SPREAD * rng.normal(size=s)).astype(np.float32)
            for s in SHAPES]


GLOBAL = [np.random.default_rng(99).normal(size=s).astype(np.float32) for s in SHAPES]


def make_app(plan: AttackPlan) -> ClientApp:
    app = ClientApp(mods=[plan.mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        sent = msg.content["arrays"].to_numpy_ndarrays()
        new = [g + d for g, d in zip(sent, honest_delta(pid))]
        metrics = MetricRecord({"num-examples": 10 * (pid + 1), "quality": 0.5})
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)

    return app


def attacked_round(plan: AttackPlan):
    """One train round of real Flower messages through ``LocalGrid`` wrapped in the
    attack grid: ``{partition id: reply}``."""
    local = LocalGrid(make_app(plan), plan.num_clients, seed=0)
    grid = OmniscientAttackGrid(local, plan)
    messages = [
        grid.create_message(RecordDict({"arrays": ArrayRecord(GLOBAL),
                                        "config": ConfigRecord({"server-round": 1})}),
                            MessageType.TRAIN, node, group_id="1")
        for node in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages)
    return {local.partition_id(r.metadata.src_node_id): r for r in replies}


def sent_delta(reply: Message) -> list[np.ndarray]:
    return [w.astype(np.float64) - g.astype(np.float64)
            for w, g in zip(reply.content["arrays"].to_numpy_ndarrays(), GLOBAL)]


def honest_of(plan, replies):
    return [sent_delta(replies[k]) for k in sorted(replies) if k not in plan.attackers]


def expected_weights(delta) -> list[np.ndarray]:
    return [(g.astype(np.float64) + d).astype(np.float32) for g, d in zip(GLOBAL, delta)]


def check_attackers_sent(plan, replies, delta):
    """Every attacker sent ``global + delta``, keeping keys, dtypes, shapes and metrics;
    the honest replies are untouched; no mark is left."""
    assert len(plan.attackers) >= 1 and set(replies) == set(range(plan.num_clients))
    for pid, reply in replies.items():
        assert ATTACKER_RECORD not in reply.content
        arrays = reply.content["arrays"]
        assert list(arrays.keys()) == list(ArrayRecord(GLOBAL).keys())
        got = arrays.to_numpy_ndarrays()
        assert [a.dtype for a in got] == [np.float32] * 2 and [a.shape for a in got] == SHAPES
        assert reply.content["metrics"]["num-examples"] == 10 * (pid + 1)
        want = expected_weights(delta) if pid in plan.attackers else [
            g + d for g, d in zip(GLOBAL, honest_delta(pid))]
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def stacked(updates) -> np.ndarray:
    """``(K, 820)``: each update flattened."""
    return np.stack([np.concatenate([np.ravel(a) for a in u]) for u in updates])


def unflatten(vector: np.ndarray) -> list[np.ndarray]:
    return [vector[:800].reshape(SHAPES[0]), vector[800:]]


# ----------------------------------------------------------------------------- the formulas
@pytest.mark.parametrize("z", [None, 1.5])
def test_alie_attackers_send_mean_minus_z_std(z):
    plan = AttackPlan("alie", 10, seed=0, fraction=0.2, z=z)
    replies = attacked_round(plan)
    honest = stacked(honest_of(plan, replies))
    n, f = 10, 2
    if z is None:  # Baruch et al.: s = floor(n/2 + 1) - f supporters, z = Phi^-1((n - s)/n)
        z = norm.ppf((n - (np.floor(n / 2 + 1) - f)) / n)
        assert z == pytest.approx(0.2533, abs=1e-4)
    crafted = honest.mean(axis=0) - z * honest.std(axis=0, ddof=1)
    check_attackers_sent(plan, replies, unflatten(crafted))


@pytest.mark.parametrize("eps", [0.1, 100.0])
def test_ipm_attackers_send_minus_eps_times_the_honest_mean(eps):
    plan = AttackPlan("ipm", 10, seed=1, fraction=0.3, eps=eps)
    replies = attacked_round(plan)
    honest = stacked(honest_of(plan, replies))
    crafted = -eps * honest.mean(axis=0)
    check_attackers_sent(plan, replies, unflatten(crafted))


def _direction(honest: np.ndarray, kind: str) -> np.ndarray:
    mean = honest.mean(axis=0)
    return {"std": -honest.std(axis=0, ddof=1), "unit_vec": -mean / np.linalg.norm(mean),
            "sign": -np.sign(mean)}[kind]


@pytest.mark.parametrize("name", ["minmax", "minsum"])
@pytest.mark.parametrize("direction", ["std", "unit_vec", "sign"])
def test_min_max_and_min_sum_send_the_largest_perturbation_within_the_honest_distances(name, direction):
    """Shejwalkar & Houmansadr: ``mean + gamma p`` with the largest gamma whose distances
    (max, or sum of squares) to the honest updates stay within the honest ones'."""
    plan = AttackPlan(name, 10, seed=2, fraction=0.2, direction=direction)
    replies = attacked_round(plan)
    honest = stacked(honest_of(plan, replies))
    mean, p = honest.mean(axis=0), _direction(honest, direction)
    sent = stacked([sent_delta(replies[k]) for k in sorted(plan.attackers)])
    np.testing.assert_array_equal(sent[0], sent[-1])  # all attackers send the same update
    gamma = float((sent[0] - mean) @ p / (p @ p))
    np.testing.assert_allclose(sent[0], mean + gamma * p, atol=1e-5)  # along p only
    pairwise = ((honest[:, None] - honest[None]) ** 2).sum(axis=-1)

    def distance(g):
        squared = ((mean + g * p - honest) ** 2).sum(axis=1)
        if name == "minmax":
            return squared.max(), pairwise.max()
        return squared.sum(), pairwise.sum(axis=1).max()

    assert gamma > 0
    within, limit = distance(gamma * (1 - 1e-4))
    assert within <= limit
    beyond, limit = distance(gamma * (1 + 1e-4))
    assert beyond > limit  # the largest such gamma


def test_mimic_attackers_copy_the_honest_update_farthest_along_the_main_direction():
    plan = AttackPlan("mimic", 10, seed=3, fraction=0.2)
    replies = attacked_round(plan)
    honest_ids = [k for k in sorted(replies) if k not in plan.attackers]
    honest = stacked(honest_of(plan, replies))
    centred = honest - honest.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # first principal component
    target = honest_ids[int(np.argmax(np.abs(centred @ vt[0])))]
    for pid in plan.attackers:
        for got, want in zip(replies[pid].content["arrays"].to_numpy_ndarrays(),
                             replies[target].content["arrays"].to_numpy_ndarrays()):
            np.testing.assert_array_equal(got, want)


def test_too_few_honest_updates_leave_the_attackers_own_updates(caplog):
    plan = AttackPlan("alie", 2, seed=0, fraction=0.5)  # one attacker, one honest client
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        replies = attacked_round(plan)
    (attacker,) = plan.attackers
    for got, want in zip(replies[attacker].content["arrays"].to_numpy_ndarrays(),
                         [g + d for g, d in zip(GLOBAL, honest_delta(attacker))]):
        np.testing.assert_array_equal(got, want)
    assert ATTACKER_RECORD not in replies[attacker].content
    assert "ALIE needs at least 2 honest updates" in caplog.text


def test_attack_grid_wraps_only_for_omniscient_attacks_and_options_are_checked():
    local = LocalGrid(ClientApp(), 10, seed=0)
    wrapped = attack_grid(local, AttackPlan.from_config({"name": "ipm", "eps": 100.0}, 10, 0))
    assert isinstance(wrapped, OmniscientAttackGrid) and wrapped.grid is local
    for section in ({"name": "sign_flip"}, {"name": "label_flip"}, {"name": "none"}):
        assert attack_grid(local, AttackPlan.from_config(section, 10, 0)) is local
    with pytest.raises(ConfigError, match="attack.direction='up' is not allowed"):
        AttackPlan.from_config({"name": "minmax", "direction": "up"}, 10, 0)
    with pytest.raises(ConfigError, match="attack.eps is not a setting of attack 'alie'"):
        AttackPlan.from_config({"name": "alie", "eps": 1.0}, 10, 0)
    with pytest.raises(ConfigError, match="attack.lie_num_examples=-1 is not allowed"):
        AttackPlan.from_config({"name": "alie", "lie_num_examples": -1}, 10, 0)


def test_omniscient_attacks_refuse_compressed_replies():
    from test_experiment import config

    from fedloom.experiment import RunSettings

    with pytest.raises(ConfigError, match="attack=alie is not allowed with compression=int8"):
        RunSettings.from_config(config("attack=alie", "compression=int8"))
    RunSettings.from_config(config("attack=sign_flip", "compression=int8"))  # a client-side attack may


# ----------------------------------------------------------------------------- the reducers
def _shift(aggregate: np.ndarray, honest: np.ndarray) -> float:
    """Distance of an aggregate to the honest mean, in units of the honest updates' RMS
    distance to their mean (1.0: as far off as a typical honest client)."""
    mean = honest.mean(axis=0)
    spread = np.sqrt(((honest - mean) ** 2).sum(axis=1).mean())
    return float(np.linalg.norm(aggregate - mean) / spread)


REDUCERS = {"mean": unweighted_mean, "median": coordinate_median,
            "trimmed": lambda updates: trimmed_mean(updates, 0.2)}


def _aggregates(plan):
    replies = attacked_round(plan)
    everyone = [sent_delta(replies[k]) for k in sorted(replies)]
    honest = stacked(honest_of(plan, replies))
    return {name: stacked([reduce(everyone)])[0] for name, reduce in REDUCERS.items()}, honest


def test_ipm_eps_100_reverses_the_plain_mean_but_not_the_robust_reducers():
    aggregates, honest = _aggregates(AttackPlan("ipm", 10, seed=1, fraction=0.2, eps=100.0))
    mean = honest.mean(axis=0)
    assert _shift(aggregates["mean"], honest) > 10 and aggregates["mean"] @ mean < 0
    for name in ("median", "trimmed"):
        assert _shift(aggregates[name], honest) < 0.6, name
        assert aggregates[name] @ mean > 0.8 * np.linalg.norm(aggregates[name]) * np.linalg.norm(mean), name


def test_ipm_eps_small_shrinks_the_plain_mean_toward_zero():
    """eps=0.1 reverses nothing with 2 of 10 attackers: the plain mean keeps
    ``(n_h - eps f) / n`` of the honest mean (0.78), the robust reducers similar."""
    aggregates, honest = _aggregates(AttackPlan("ipm", 10, seed=1, fraction=0.2, eps=0.1))
    np.testing.assert_allclose(aggregates["mean"], honest.mean(axis=0) * (8 - 0.2) / 10, atol=1e-5)
    for name in ("median", "trimmed"):
        assert _shift(aggregates[name], honest) < 0.6, name


def test_alie_pulls_the_robust_reducers_further_than_the_plain_mean():
    """Baruch et al.'s point: ALIE's update sits inside the honest spread, so the median
    and trimmed mean keep it and move along ``-std`` by more than the plain mean, which
    it moves by only ``f/n * z * std``. Neither rule defends on its own; the benchmark
    measures what bucketing, centred clipping and momentum add."""
    aggregates, honest = _aggregates(AttackPlan("alie", 10, seed=0, fraction=0.2))
    mean, std = honest.mean(axis=0), honest.std(axis=0, ddof=1)

    def pull(aggregate):  # how far along -std, per unit of std
        return float((mean - aggregate) @ std / (std @ std))

    z = norm.ppf((10 - (np.floor(10 / 2 + 1) - 2)) / 10)
    assert pull(aggregates["mean"]) == pytest.approx(0.2 * z, rel=1e-3)
    assert pull(aggregates["median"]) > 2 * pull(aggregates["mean"])
    assert pull(aggregates["trimmed"]) > 1.5 * pull(aggregates["mean"])


# ----------------------------------------------------------------------------- lying metadata
def test_attackers_report_lying_metadata_with_any_attack():
    for name in ("alie", "sign_flip", "label_flip", "none"):
        plan = AttackPlan(name, 10, seed=4, fraction=0.2, lie_num_examples=1e9, lie_quality=1.0)
        assert len(plan.attackers) == 2
        replies = attacked_round(plan) if plan.omniscient else _plain_round(plan)
        for pid, reply in replies.items():
            metrics = reply.content["metrics"]
            lying = pid in plan.attackers
            assert metrics["num-examples"] == (10**9 if lying else 10 * (pid + 1)), name
            assert metrics["quality"] == (1.0 if lying else 0.5), name


def _plain_round(plan):
    local = LocalGrid(make_app(plan), plan.num_clients, seed=0)
    messages = [local.create_message(RecordDict({"arrays": ArrayRecord(GLOBAL),
                                                 "config": ConfigRecord({"server-round": 1})}),
                                     MessageType.TRAIN, node, group_id="1") for node in local.get_node_ids()]
    return {local.partition_id(r.metadata.src_node_id): r for r in local.send_and_receive(messages)}


def test_a_client_claiming_1e9_examples_takes_over_the_weighted_mean_not_a_capped_robust_rule():
    """One IPM attacker (eps 0.1: its update sits inside the honest range, so trimming
    keeps it) reports num_examples=1e9. The weighted mean becomes its update (reversed);
    the weighted trimmed mean moves more than twice as far from the honest mean as with
    its true count; with :func:`cap_weights` the lie adds less than a quarter of that."""
    plan = AttackPlan("ipm", 10, seed=5, fraction=0.1, eps=0.1, lie_num_examples=1e9)
    replies = attacked_round(plan)
    (liar,) = plan.attackers
    order = sorted(replies)
    updates = [sent_delta(replies[k]) for k in order]
    reported = np.array([replies[k].content["metrics"]["num-examples"] for k in order], float)
    assert reported[order.index(liar)] == 1e9
    true = np.array([10.0 * (k + 1) for k in order])
    honest = stacked(honest_of(plan, replies))
    mean = honest.mean(axis=0)
    crafted = stacked([updates[order.index(liar)]])[0]
    plain = stacked([weighted_mean(updates, reported)])[0]
    np.testing.assert_allclose(plain, crafted, atol=1e-5)  # the 540 true examples weigh 5e-7
    assert plain @ mean < 0

    def trimmed_shift(weights):
        return _shift(stacked([trimmed_mean(updates, 0.2, weights=weights)])[0], honest)

    honest_report, lie = trimmed_shift(true), trimmed_shift(reported)
    capped = trimmed_shift(cap_weights(reported))
    assert lie > 2 * honest_report
    assert capped - honest_report < 0.25 * (lie - honest_report)


    # the same through a robust pipeline (no norm filter) reading the replies' metadata
    client_updates = [ClientUpdate(str(k), replies[k].content["arrays"].to_numpy_ndarrays(),
                                   replies[k].content["metrics"]["num-examples"]) for k in order]
    for cap, expected in ((None, lie), (3.0, capped)):
        pipeline = Pipeline(WeightBy("num_examples", cap=cap), TrimmedMean(0.2, weighted=True))
        result = pipeline(GLOBAL, client_updates)
        delta = stacked([[w.astype(np.float64) - g for w, g in zip(result.weights, GLOBAL)]])[0]
        assert _shift(delta, honest) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ConfigError, match="weight cap must be a multiple >= 1 of the round's median weight"):
        WeightBy("num_examples", cap=0.5)


# ----------------------------------------------------------------------------- label flipping
def test_label_flip_attackers_train_on_flipped_labels():
    np.testing.assert_array_equal(flip_labels(np.array([0, 3, 9]), 10), [9, 6, 0])
    with pytest.raises(ValueError, match=r"labels in \[0, 10\)"):
        flip_labels(np.array([10]), 10)
    plan = AttackPlan("label_flip", 10, seed=0, fraction=0.2)
    data = ClientData(np.zeros((4, 2), np.float32), np.array([0, 1, 2, 9]), np.zeros((1, 2), np.float32),
                      np.array([5]))
    for pid in range(10):
        seen = plan.client_data(pid, data, 10)
        if pid in plan.attackers:
            np.testing.assert_array_equal(seen.y_train, [9, 8, 7, 0])
            np.testing.assert_array_equal(seen.y_val, [4])
            assert seen.x_train is data.x_train and seen.y_train.dtype == data.y_train.dtype
        else:
            assert seen is data
    assert AttackPlan("sign_flip", 10, seed=0).client_data(next(iter(plan.attackers)), data, 10) is data


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_simulate_runs_alie_against_the_recommended_hybrid(tmp_path):
    """``python simulate.py attack=alie strategy=robust_centered_clip``: the rule the
    Byzantine benchmark recommends (docs/faults.md)."""
    args = ["attack=alie", "strategy=robust_centered_clip", "num_rounds=2", "num_clients=10",
            "clients_per_round=5", "plot=false", "checkpoint_every=0", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run([sys.executable, str(ROOT / "simulate.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "attack alie in round" in (tmp_path / "simulate.log").read_text()  # the run's full log
    assert "final accuracy" in done.stdout


@pytest.mark.slow
def test_the_attack_grid_works_on_flowers_ray_engine():
    """The attackers' mark survives Flower's transport and the wrapper sees the whole
    round: with IPM eps=100 the plain average is ``(4 m - 100 m) / 5`` of the honest mean."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedloom.strategies import SimpleAverage

    plan = AttackPlan("ipm", 5, seed=1, fraction=0.2, eps=100.0)
    (attacker,) = plan.attackers
    server, out = ServerApp(), {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = SimpleAverage(min_available_nodes=5, min_train_nodes=5, fraction_evaluate=0.0, seed=0)
        out["result"] = strategy.start(grid=attack_grid(grid, plan), initial_arrays=ArrayRecord(GLOBAL),
                                       num_rounds=1)

    run_simulation(server, make_app(plan), num_supernodes=5,
                   backend_config={"client_resources": {"num_cpus": 1}})
    honest = stacked([[w.astype(np.float64) - g.astype(np.float64)
                       for w, g in zip([g + d for g, d in zip(GLOBAL, honest_delta(k))], GLOBAL)]
                      for k in range(5) if k != attacker])
    expected = (4 - 100) / 5 * honest.mean(axis=0)
    got = out["result"].arrays.to_numpy_ndarrays()
    delta = stacked([[w.astype(np.float64) - g for w, g in zip(got, GLOBAL)]])[0]
    np.testing.assert_allclose(delta, expected, rtol=1e-4, atol=1e-4)
