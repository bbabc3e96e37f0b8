"""Differential privacy that holds: the epsilon equals dp-accounting's for the sampler
fedloom uses (computed here with dp-accounting alone), the measured noise equals the
accounted noise (fixed and adaptive clipping, on Flower's wrappers), the noise and the
client sample are secret (not from the config seed, not in checkpoints, fresh after a
resume), every release is composed (fewer clients, count-only rounds), and the budget
withholds a release and stops a real Keras run cleanly.
"""

from __future__ import annotations

import json
import shutil

import dp_accounting
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import strategy as flower

from fedloom.checkpoint import CHECKPOINT_FILE, FINAL_WEIGHTS_FILE, load_checkpoint, load_weights
from fedloom.engine import LocalGrid
from fedloom.errors import ConfigError
from fedloom.experiment import run_experiment
from fedloom.privacy import (
    INSECURE_WARNING,
    PrivacyRun,
    PrivacySettings,
    SampledRdpAccountant,
    full_round_multiplier,
    round_noise_multiplier,
)
from fedloom.strategies import SimpleAverage

from numpy_apps import INITIAL_WEIGHTS, message_app
from test_experiment import config
from test_privacy import clipped_step, settings, simple

# --------------------------------------------------------------------------- accounting
def wor_epsilon(num_clients: int, num_sampled: int, sigmas: list[float], rounds: int, delta: float) -> float:
    """dp-accounting's epsilon, built here without fedloom: ``rounds`` rounds that each
    sample ``num_sampled`` of ``num_clients`` without replacement (replace-one) and
    release Gaussians of std/sensitivity ``sigmas`` (one vector Gaussian)."""
    gaussians = [dp_accounting.GaussianDpEvent(s) for s in sigmas]
    inner = gaussians[0] if len(gaussians) == 1 else dp_accounting.ComposedDpEvent(gaussians)
    accountant = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(num_clients, num_sampled, inner), rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("z, m, n, rounds, delta", [
    (1.0, 10, 100, 100, 1e-5),  # the default DP config
    (0.7, 5, 20, 30, 1e-5),
    (2.0, 32, 1000, 400, 1e-6),
])
def test_epsilon_equals_dp_accounting_for_sampling_m_of_n_without_replacement(z, m, n, rounds, delta):
    accountant = SampledRdpAccountant(settings(noise_multiplier=z, num_sampled=m, num_clients=n, delta=delta))
    multiplier = full_round_multiplier(accountant.settings)
    accountant.compose(multiplier, count=rounds - 2)
    accountant.compose(multiplier)  # one round at a time, as a run does
    accountant.compose(multiplier)
    # replace-one: one client's clipped update moves the sum by up to 2C; noise z C on it
    expected = wor_epsilon(n, m, [z / 2], rounds, delta)
    assert accountant.epsilon() == pytest.approx(expected, rel=1e-9)
    restored = SampledRdpAccountant(accountant.settings)
    restored.load_state_dict(accountant.state_dict())
    assert restored.epsilon() == pytest.approx(expected, rel=1e-9)
    assert restored.num_releases == rounds and len(accountant.state_dict()["compositions"]) == 1


def test_the_default_epsilon_is_not_the_poisson_one():
    accountant = SampledRdpAccountant(settings())  # z = 1, 10 of 100
    accountant.compose(full_round_multiplier(accountant.settings), count=100)
    poisson = dp_accounting.rdp.RdpAccountant()
    poisson.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 100)
    assert accountant.epsilon() > 5 * poisson.get_epsilon(1e-5)  # 83.9 against 7.9
    with pytest.raises(ConfigError, match=r"dp.accounting=poisson is not allowed: fedloom samples exactly"):
        settings(accounting="poisson")


def test_no_amplification_accounting_composes_the_plain_gaussian():
    accountant = SampledRdpAccountant(settings(accounting="no_amplification", noise_multiplier=3.0))
    accountant.compose(full_round_multiplier(accountant.settings), count=20)
    plain = dp_accounting.rdp.RdpAccountant()
    plain.compose(dp_accounting.GaussianDpEvent(1.5), 20)
    assert accountant.epsilon() == pytest.approx(plain.get_epsilon(1e-5), rel=1e-9)


def test_adaptive_clipping_composes_the_model_and_the_noised_count():
    adaptive = PrivacySettings.from_config(
        {"mode": "central_adaptive", "noise_multiplier": 0.8, "clipped_count_stddev": 2.0}, 10, 100)
    flower_wrapper = flower.DifferentialPrivacyServerSideAdaptiveClipping(
        simple(), 0.8, 10, clipped_count_stddev=2.0)
    z_update = flower_wrapper.noise_multiplier  # the model's multiplier as Flower derives it
    accountant = SampledRdpAccountant(adaptive)
    accountant.compose(full_round_multiplier(adaptive), count=20)
    assert accountant.epsilon() == pytest.approx(wor_epsilon(100, 10, [z_update / 2, 2.0], 20, 1e-5), rel=1e-9)
    with pytest.raises(ConfigError, match=r"dp.noise_multiplier=1.2 is not allowed with dp.clipped_count_stddev=0.5"):
        PrivacySettings.from_config({"mode": "central_adaptive", "noise_multiplier": 1.2}, 10, 100)


def test_fewer_clients_used_means_a_smaller_round_multiplier():
    full = round_noise_multiplier(model_std=1.0 * 2.0 / 10, clipped_to=2.0, num_used=10, count_std=None)
    crashed = round_noise_multiplier(model_std=1.0 * 2.0 / 10, clipped_to=2.0, num_used=7, count_std=None)
    assert full == pytest.approx(0.5) and crashed == pytest.approx(0.35)  # z m_used / (2 m)
    assert round_noise_multiplier(model_std=None, clipped_to=None, num_used=0, count_std=None) is None
    assert round_noise_multiplier(model_std=None, clipped_to=None, num_used=0, count_std=1.5) == 1.5


#: A client that moves every one of 100,000 coordinates by STEP (update norm 0.03, under
#: every clipping norm here): whatever the DP wrapper releases beyond ``global + STEP`` is
#: its noise. (A zero update would crash Flower's clipping, which divides by its norm.)
STEP = np.float32(1e-4)
SMALL_STEP_WEIGHTS = [np.zeros(100_000, np.float32)]
small_step_app = ClientApp()


@small_step_app.train()
def _small_step(msg: Message, context: Context) -> Message:
    moved = ArrayRecord([w + STEP for w in msg.content["arrays"].to_numpy_ndarrays()])
    content = RecordDict({"arrays": moved, "metrics": MetricRecord({"num-examples": 1})})
    return Message(content, reply_to=msg)


def secure_simple(num_nodes=3, **options):
    return SimpleAverage(min_available_nodes=num_nodes, min_train_nodes=num_nodes, fraction_evaluate=0.0,
                         absurd_norm_ratio=None, secure_sampling=True, **options)


def dp_round(options, app=message_app, num_nodes=3, weights=INITIAL_WEIGHTS, seed=0, **strategy_options):
    """One DP round of a fedloom strategy behind :class:`PrivacyRun` on the local engine:
    ``(released arrays, history fields, privacy run, fedloom strategy)``."""
    privacy = PrivacyRun(PrivacySettings.from_config(options, num_nodes, num_nodes), seed=seed)
    inner = secure_simple(num_nodes, **strategy_options)
    result = privacy.wrap(inner).start(grid=LocalGrid(app, num_nodes, seed=0),
                                       initial_arrays=ArrayRecord(weights), num_rounds=1)
    fields = privacy.record_round(inner.reports[-1])
    return result.arrays.to_numpy_ndarrays(), fields, privacy, inner


FIXED = {"mode": "central_fixed", "noise_multiplier": 1.0, "clipping_norm": 2.0}
# target quantile 1 and learning rate 1 move the norm far (C(t+1) ~ e C(t)) after a
# round in which no update is clipped, so noise scaled to C(t+1) cannot pass for noise at C(t)
ADAPTIVE = {"mode": "central_adaptive", "noise_multiplier": 0.5, "clipped_count_stddev": 0.5,
            "initial_clipping_norm": 2.0, "target_clipped_quantile": 1.0, "clip_norm_lr": 1.0}


@pytest.mark.parametrize("options", [FIXED, ADAPTIVE], ids=["fixed", "adaptive"])
def test_measured_noise_std_matches_the_accounted_one(options):
    (released,), fields, privacy, inner = dp_round(options, small_step_app, weights=SMALL_STEP_WEIGHTS)
    assert len(inner.reports[-1].clients_used) == 3 and released.size == 100_000
    noise = released - STEP
    clipped_to, m_used = 2.0, 3  # round 1 clips to the initial norm
    z_round = fields["dp_noise_multiplier"]
    # the std the accountant assumed: z_round = std * m_used / (2 C), after removing the
    # count's share (sigma_b) for adaptive clipping
    model_inverse_square = z_round ** -2 - (0.5 ** -2 if options is ADAPTIVE else 0.0)
    accounted = 2 * clipped_to / (m_used * model_inverse_square ** 0.5)
    assert float(np.std(noise)) == pytest.approx(accounted, rel=0.05)
    # and what Flower documents: z_model * C / m, at the norm the updates were clipped to
    assert float(np.std(noise)) == pytest.approx(privacy.wrapper.noise_multiplier * clipped_to / 3, rel=0.05)
    if options is ADAPTIVE:
        assert privacy.wrapper.clipping_norm > 2.0 * 1.3  # the norm did move before the noise


def test_dp_noise_comes_from_secret_randomness_not_the_seed_or_numpys_global_rng():
    def noise(**extra):
        np.random.seed(7)
        global_state = np.random.get_state()[1].copy()
        released, fields, _, _ = dp_round({**FIXED, **extra}, seed=0)
        assert np.array_equal(np.random.get_state()[1], global_state)  # never drawn from
        clean = np.mean([clipped_step(k, 2.0) for k in range(3)])
        return released[0] - clean, fields

    first, fields = noise()
    second, _ = noise()
    assert np.all(first != 0) and not np.allclose(first, second)  # same seed, other noise
    assert fields["dp_epsilon"] > 0 and "dp_warning" not in fields
    # only when explicitly insecure does the seed decide the noise, and epsilon is withheld
    first, fields = noise(insecure_reproducible=True)
    second, _ = noise(insecure_reproducible=True)
    np.testing.assert_array_equal(first, second)
    assert fields["dp_epsilon"] is None and fields["dp_warning"] == INSECURE_WARNING


def test_dp_client_sampling_does_not_follow_the_seed():
    grid = LocalGrid(message_app, 100, seed=0)

    def samples(secure):
        strategy = SimpleAverage(fraction_train=0.1, min_train_nodes=10, min_available_nodes=100,
                                 fraction_evaluate=0.0, seed=0, secure_sampling=secure)
        return [sorted(msg.metadata.dst_node_id for msg in strategy.configure_train(
            r, ArrayRecord(INITIAL_WEIGHTS), ConfigRecord(), grid)) for r in (1, 2, 3)]

    assert samples(secure=False) == samples(secure=False)  # seeded: anyone with the seed knows
    assert samples(secure=True) != samples(secure=True)
    assert "rng" not in SimpleAverage(seed=0, secure_sampling=True).state_dict()
    from fedloom.experiment import RunSettings, builders

    def built(*overrides):
        return builders.build_strategy(RunSettings.from_config(config(*overrides)))

    assert built("strategy=simple", "dp=central_fixed").secure_sampling
    assert not built("strategy=simple", "dp=central_fixed", "dp.insecure_reproducible=true").secure_sampling
    with pytest.raises(ConfigError, match=r"its client sampling follows a seed"):
        PrivacyRun(settings()).wrap(simple())


def test_rounds_with_fewer_clients_or_only_a_count_release_are_composed():
    # 4 nodes, node 3 sends NaN: screened, so 3 of the 4 sampled updates are averaged
    _, fields, _, inner = dp_round(FIXED, num_nodes=4)
    assert len(inner.reports[-1].clients_used) == 3
    assert fields["dp_noise_multiplier"] == pytest.approx(1.0 * 3 / (2 * 4))
    assert fields["dp_epsilon"] == pytest.approx(wor_epsilon(4, 4, [3 / 8], 1, 1e-5), rel=1e-9)
    # adaptive, and the strategy skips the round (3 valid < 4 needed): no model, but the
    # noised clipped count was released and moved the norm
    _, fields, privacy, inner = dp_round(ADAPTIVE, num_nodes=4, min_valid_updates=4)
    assert inner.reports[-1].skipped_reason and privacy.wrapper.clipping_norm != 2.0
    assert fields["dp_noise_multiplier"] == pytest.approx(0.5)
    assert fields["dp_epsilon"] == pytest.approx(wor_epsilon(4, 4, [0.5], 1, 1e-5), rel=1e-9)


# --------------------------------------------------------------------------- experiments
def walk(value, path=""):
    """Every (path, value) in nested dicts and lists."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}/{index}")


def test_dp_budget_stops_the_run_at_the_last_round_within_it(tmp_path):
    z, n, m = 2.0, 10, 5
    spent = [wor_epsilon(n, m, [z / 2], rounds, 1e-5) for rounds in range(1, 6)]
    budget = (spent[2] + spent[3]) / 2  # three rounds fit, a fourth would not
    cfg = config("strategy=simple", "dp=central_fixed", f"dp.noise_multiplier={z}", f"dp.max_epsilon={budget}",
                 f"num_clients={n}", f"clients_per_round={m}", "num_rounds=5", "checkpoint_every=2", "plot=false")
    records = run_experiment(cfg, tmp_path)

    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for record, expected in zip(records[1:], spent):
        assert record["num_clients"] == m and not record["skipped"]
        assert record["dp_epsilon"] == pytest.approx(expected, rel=1e-9) and record["dp_epsilon"] <= budget
        assert record["dp_noise_multiplier"] == pytest.approx(z / 2)
    assert "stopped_reason" not in records[2]
    assert records[3]["stopped_reason"].startswith("privacy budget: epsilon")
    assert f"dp.max_epsilon={budget:g}" in records[3]["stopped_reason"]
    assert json.loads((tmp_path / "history.json").read_text()) == records

    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_FILE)  # written at the stop, not only every 2
    assert checkpoint["round"] == 3
    keys, final = load_weights(tmp_path / FINAL_WEIGHTS_FILE)
    assert keys == checkpoint["arrays"]["keys"]
    for a, b in zip(final, checkpoint["arrays"]["values"]):
        np.testing.assert_array_equal(a, b)
    # no noise or sampling RNG state anywhere in the checkpoint
    assert checkpoint["random"] is None
    assert set(checkpoint["privacy"]) == {"accountant", "budget_exhausted", "stopped_reason"}
    assert not [path for path, _ in walk(checkpoint["strategy"]) if path.endswith("/rng")]
    assert not [path for path, v in walk(checkpoint) if isinstance(v, np.ndarray) and v.dtype == np.uint32]


def test_two_dp_runs_of_one_config_release_different_noise(tmp_path):
    def final_weights(name, *extra):  # every client takes part: only the noise can differ
        cfg = config("strategy=simple", "dp=central_fixed", "num_clients=5", "clients_per_round=5",
                     "num_rounds=1", "plot=false", *extra)
        run_experiment(cfg, tmp_path / name)
        return load_weights(tmp_path / name / FINAL_WEIGHTS_FILE)[1]

    first, second = final_weights("a"), final_weights("b")
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    # the control: everything else about the run repeats, so the difference is the noise
    first = final_weights("c", "dp.insecure_reproducible=true")
    second = final_weights("d", "dp.insecure_reproducible=true")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_a_release_that_would_exceed_the_budget_is_withheld():
    # 4 nodes, node 3 sends NaN: 3 of 4 updates used, multiplier 3/8 instead of 4/8. A
    # budget between one full round's epsilon and this round's lets a full round pass
    # but not this one: the model and the moved norm stay on the server.
    full, short = wor_epsilon(4, 4, [0.5], 1, 1e-5), wor_epsilon(4, 4, [3 / 8], 1, 1e-5)
    budget = (full + short) / 2
    released, fields, privacy, inner = dp_round({**FIXED, "max_epsilon": budget}, num_nodes=4)
    for array, initial in zip(released, INITIAL_WEIGHTS):
        np.testing.assert_array_equal(array, initial)  # the global model was kept
    assert inner.reports[-1].skipped_reason.startswith("privacy budget: round 1 was withheld")
    assert fields["dp_epsilon"] == 0.0 and fields["dp_noise_multiplier"] == 0.0
    assert fields["stopped_reason"] == inner.reports[-1].skipped_reason and privacy.budget_exhausted
    # a budget below one full round is a config error: the run could release nothing
    with pytest.raises(ConfigError, match=r"dp.max_epsilon=.* is below the epsilon of a single round"):
        dp_round({**FIXED, "max_epsilon": full / 2}, num_nodes=4)


def test_a_resumed_dp_run_draws_fresh_noise(tmp_path):
    from test_resume import CrashingGrid

    from fedloom.experiment import builders, prepare_experiment, resume_experiment

    cfg = config("strategy=simple", "dp=central_fixed", "num_clients=5", "clients_per_round=5",
                 "num_rounds=2", "checkpoint_every=1", "plot=false")
    experiment = prepare_experiment(cfg, tmp_path / "killed")
    grid = CrashingGrid(builders.build_client_app(experiment.settings), 5, seed=0, crash_round=2)
    with pytest.raises(SystemExit):
        experiment.start(grid)
    shutil.copytree(tmp_path / "killed", tmp_path / "again")  # the same checkpoint, twice
    first, second = resume_experiment(tmp_path / "killed"), resume_experiment(tmp_path / "again")
    assert first[2]["dp_epsilon"] == second[2]["dp_epsilon"] == pytest.approx(
        wor_epsilon(5, 5, [0.5], 2, 1e-5), rel=1e-9)  # the accountant resumes
    a = load_weights(tmp_path / "killed" / FINAL_WEIGHTS_FILE)[1]
    b = load_weights(tmp_path / "again" / FINAL_WEIGHTS_FILE)[1]
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))  # round 2's noise is new
