"""weight_by=server_quality: the server scores each update on its own held-out data, so a
client cannot raise its weight by claiming quality=1.0 (issue 18, "a quality a client
cannot fake").

Real Keras models on real data (scikit-learn digits): honest clients train from a shared
global model on their own shards and report their true validation accuracy; the liar
trains on flipped labels and reports quality=1.0.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.aggregation import ClientUpdate
from fedloom.aggregation.checks import normalise_weights
from fedloom.checkpoint import CHECKPOINT_FILE, FINAL_WEIGHTS_FILE, load_checkpoint, load_weights
from fedloom.clients import get_trainer
from fedloom.data import load_dataset
from fedloom.errors import ConfigError
from fedloom.experiment import builders, prepare_experiment, resume_experiment, run_experiment
from fedloom.experiment.server_validation import keras_quality_scorer, split_server_validation
from fedloom.models import ModelSpec
from fedloom.strategies.methods import robust_weighted, weighted_average

from conftest import config
from grids import CrashingGrid

HONEST = 4


@pytest.fixture(scope="module")
def digits_round():
    """A global model trained a little, 4 honest updates and one label-flipped liar's, the
    trainer, and the server's held-out split of the digits test set."""
    dataset = load_dataset("digits")
    trainer = get_trainer(ModelSpec("mlp", (64,), 10, seed=0))
    global_weights, _ = trainer.fit(trainer.initial_weights(), dataset.x_train, dataset.y_train,
                                    epochs=2, batch_size=32, learning_rate=0.1, seed=0)
    reported, x_val, y_val = split_server_validation(dataset, 0.2, seed=0)
    shards = np.array_split(np.random.default_rng(0).permutation(len(dataset.y_train)), HONEST + 1)
    updates = []
    for k, shard in enumerate(shards):
        x, y = dataset.x_train[shard], dataset.y_train[shard]
        train, val = slice(0, len(shard) - 30), slice(len(shard) - 30, None)
        liar = k == HONEST
        labels = (y + 1) % 10 if liar else y  # the liar poisons its data: every label shifted
        weights, metrics = trainer.fit(global_weights, x[train], labels[train], epochs=3,
                                       batch_size=16, learning_rate=0.1, seed=k,
                                       validation=(x[val], y[val]))
        quality = 1.0 if liar else metrics["val_accuracy"]  # honest clients report the truth
        updates.append(ClientUpdate(f"c{k}", weights, len(shard) - 30, {"quality": quality}))
    return trainer, global_weights, updates, reported, x_val, y_val


def independent_accuracy(weights, x, y) -> float:
    """A fresh Keras model of the same spec, its own predict, numpy's argmax."""
    model = ModelSpec("mlp", (64,), 10, seed=0).build()
    model.set_weights(weights)
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


def test_a_liar_claiming_quality_one_gains_leverage_under_quality_but_not_server_quality(digits_round):
    trainer, global_weights, updates, _, x_val, y_val = digits_round
    honest_claims = [u.metrics["quality"] for u in updates[:HONEST]]
    assert max(honest_claims) < 1.0  # the liar's claim beats every honest report

    claimed = weighted_average("quality")(global_weights, updates)
    scorer = keras_quality_scorer(trainer, x_val, y_val)
    scored = weighted_average("server_quality", quality_scorer=scorer)(global_weights, updates)
    liar_claimed, liar_scored = claimed.coefficients[HONEST], scored.coefficients[HONEST]
    # trusting the claim, the liar outweighs every honest client
    assert liar_claimed > max(claimed.coefficients[:HONEST]) and liar_claimed > 1 / (HONEST + 1)
    # scored by the server, its label-flipped model weighs far below any honest one
    assert liar_scored < 0.1 * min(scored.coefficients[:HONEST])
    assert liar_scored < liar_claimed / 10  # its claim no longer buys anything
    honest_mean = [np.mean([u.weights[i] for u in updates[:HONEST]], axis=0)
                   for i in range(len(global_weights))]

    def distance(weights):
        return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights, honest_mean))))

    assert distance(scored.weights) < 0.1 * distance(claimed.weights)
    # the server's split says the same as the reported test set about the two results
    x_test, y_test = digits_round[3].x_test, digits_round[3].y_test
    assert trainer.evaluate(scored.weights, x_test, y_test)[1] > trainer.evaluate(
        claimed.weights, x_test, y_test)[1]


def test_server_scores_are_an_independent_evaluation_of_each_update(digits_round):
    trainer, global_weights, updates, _, x_val, y_val = digits_round
    scores = keras_quality_scorer(trainer, x_val, y_val)([u.weights for u in updates])
    expected = [independent_accuracy(u.weights, x_val, y_val) for u in updates]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
    losses = keras_quality_scorer(trainer, x_val, y_val, kind="loss")([u.weights for u in updates])
    assert (losses > 0).all() and np.argmax(losses) == HONEST  # the liar's model is the worst
    # the weighting turns them into max(accuracy, floor), normalised; claims are not read
    result = weighted_average("server_quality", quality_scorer=keras_quality_scorer(
        trainer, x_val, y_val))(global_weights, updates)
    share = normalise_weights(np.maximum(expected, 0.01), len(expected))
    np.testing.assert_allclose(result.coefficients, share, rtol=1e-12)


def test_server_quality_never_reads_the_clients_quality_metric(digits_round):
    trainer, global_weights, updates, _, x_val, y_val = digits_round
    scorer = keras_quality_scorer(trainer, x_val, y_val)
    silent = [ClientUpdate(u.client_id, u.weights, u.num_examples, {}) for u in updates]
    lying = [ClientUpdate(u.client_id, u.weights, u.num_examples, {"quality": 1.0}) for u in updates]
    for make in (lambda: weighted_average("server_quality", quality_scorer=scorer),
                 lambda: robust_weighted("trimmed_mean", weight_by="num_examples*server_quality",
                                         max_norm_ratio=None, quality_scorer=scorer)):
        results = [make()(global_weights, batch) for batch in (updates, silent, lying)]
        assert all(r.rejected == [] for r in results)  # no missing_metric rejection
        for r in results[1:]:
            assert r.coefficients == results[0].coefficients
            assert all(a.tobytes() == b.tobytes() for a, b in zip(r.weights, results[0].weights))
    assert weighted_average("quality")(global_weights, silent).rejected[0].reason == "missing_metric"


def test_server_quality_without_a_scorer_or_with_a_wrong_one_says_what_to_do(digits_round):
    _, global_weights, updates, _, _, _ = digits_round
    with pytest.raises(ConfigError, match="needs the server's quality scorer.*quality_scorer="):
        weighted_average("server_quality")(global_weights, updates)
    with pytest.raises(ValueError, match="one value per update; it returned 2 values for 5"):
        weighted_average("server_quality", quality_scorer=lambda u: np.ones(2))(global_weights, updates)
    # a model the server cannot evaluate (NaN loss) weighs the floor, not NaN
    result = weighted_average("server_quality", quality_kind="loss", quality_scorer=lambda u: np.array(
        [0.5, 1.0, np.nan, 1.0, np.inf]))(global_weights, updates)
    expected = normalise_weights(np.array([1 / 1.5, 0.5, 0.01, 0.5, 0.01]), 5)
    np.testing.assert_allclose(result.coefficients, expected, rtol=1e-12)


def test_server_split_is_stratified_disjoint_and_left_out_of_the_reported_accuracy(tmp_path):
    dataset = load_dataset("digits")
    reported, x_val, y_val = split_server_validation(dataset, 0.2, seed=3)
    assert len(y_val) + len(reported.y_test) == len(dataset.y_test)
    assert abs(len(y_val) - 0.2 * len(dataset.y_test)) <= 10  # rounded per class
    rows = {row.tobytes() for row in dataset.x_test}
    held = {row.tobytes() for row in x_val}
    assert held <= rows and not held & {row.tobytes() for row in reported.x_test}
    assert set(np.unique(y_val)) == set(range(10))  # every class scored
    with pytest.raises(ConfigError, match="server_val_fraction=0.001 .* leaves 0 to score"):
        split_server_validation(dataset, 0.001, seed=3)

    cfg = config("strategy=weighted_server_quality", "num_clients=10", "clients_per_round=4",
                 "num_rounds=1", "plot=false", "server_val_fraction=0.2", "seed=3")
    experiment = prepare_experiment(cfg, tmp_path / "run")
    assert experiment.settings.server_quality and experiment.settings.server_val_fraction == 0.2
    metrics = experiment.evaluate_fn(0, experiment.initial_arrays)
    loss, accuracy = experiment.trainer.evaluate(experiment.trainer.initial_weights(),
                                                 reported.x_test, reported.y_test)
    assert metrics["accuracy"] == accuracy and metrics["loss"] == loss
    with pytest.raises(ConfigError, match=r"server_val_fraction=1.5 is not allowed.*\(0.0, 1.0\)"):
        prepare_experiment(config("strategy=weighted_server_quality", "server_val_fraction=1.5"),
                           tmp_path / "bad")


def test_a_server_quality_run_resumes_bit_for_bit(tmp_path):
    cfg = config("strategy=robust_centered_clip", "strategy.weight_by=server_quality",
                 "num_clients=10", "clients_per_round=5", "num_rounds=4", "checkpoint_every=1",
                 "attack=label_flip", "attack.fraction=0.2", "attack.lie_quality=1.0", "plot=false")
    whole = run_experiment(cfg, tmp_path / "whole")
    experiment = prepare_experiment(cfg, tmp_path / "killed")
    settings = experiment.settings
    grid = CrashingGrid(builders.build_client_app(settings), settings.num_clients, seed=settings.seed,
                        workers=settings.engine.workers, crash_round=3)
    with pytest.raises(SystemExit):
        experiment.start(grid)
    assert load_checkpoint(tmp_path / "killed" / CHECKPOINT_FILE)["round"] == 2
    resumed = resume_experiment(tmp_path / "killed")
    _, expected = load_weights(tmp_path / "whole" / FINAL_WEIGHTS_FILE)
    _, got = load_weights(tmp_path / "killed" / FINAL_WEIGHTS_FILE)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(expected, got))
    assert [r["accuracy"] for r in resumed] == [r["accuracy"] for r in whole]


def test_client_momentum_is_a_setting_sent_only_when_on():
    from fedloom.experiment.settings import RunSettings

    plain = RunSettings.from_config(config("num_rounds=1"))
    assert "client-momentum" not in builders.train_config(plain)
    on = RunSettings.from_config(config("num_rounds=1", "client_momentum=0.9"))
    assert builders.train_config(on)["client-momentum"] == 0.9
    assert RunSettings.from_config(on.to_dict()) == on
    with pytest.raises(ConfigError, match=r"client_momentum=1.0 is not allowed.*\[0.0, 1.0\)"):
        RunSettings.from_config(config("client_momentum=1.0"))


@pytest.mark.slow
def test_a_deployed_server_scores_updates_on_its_own_split(tmp_path):
    """The deployment ServerApp builds its experiment with ``prepare_experiment`` from the
    data it loads on the server machine (here digits; ``dataset=file dataset.path=...`` for
    a file only the server has): it holds out the same split, so round by round it matches
    the simulation of the same config, and its reported accuracy is measured on the rest."""
    from fedloom.deploy.config import compose_experiment
    from fedloom.deploy.launch import LocalDeployment

    overrides = "num_clients=3 clients_per_round=3 num_rounds=2 strategy=weighted_server_quality"
    with LocalDeployment(tmp_path / "deploy", secure=False) as deployment:
        deployment.start_superlink()
        for i in range(3):
            deployment.start_supernode(f"supernode-{i}", {"partition-id": i, "num-partitions": 3})
        result = deployment.run(overrides, tmp_path / "out", on_line=lambda line: None, timeout=240)
    records = result.records
    assert [r["round"] for r in records] == [0, 1, 2] and records[2]["num_clients"] == 3
    simulated = run_experiment(compose_experiment(overrides), tmp_path / "simulation")
    for deployed, local in zip(records, simulated, strict=True):
        assert deployed["accuracy"] == pytest.approx(local["accuracy"], abs=1e-6)
    from fedloom.experiment.settings import RunSettings

    settings = RunSettings.from_config(compose_experiment(overrides))
    dataset = load_dataset("digits")
    reported, _, _ = split_server_validation(dataset, settings.server_val_fraction, seed=settings.seed)
    _, final = load_weights(tmp_path / "out" / FINAL_WEIGHTS_FILE)
    trainer = get_trainer(builders.model_spec(settings, dataset))
    assert trainer.evaluate(final, reported.x_test, reported.y_test)[1] == pytest.approx(
        records[2]["accuracy"], abs=1e-6)


def test_client_momentum_from_the_config_scales_the_first_round_update(tmp_path):
    """Round 1 from an empty buffer: every client sends ``g + (1 - beta) delta``, so the
    weighted mean moves ``1 - beta`` as far as without momentum (same sampling, same
    local training)."""
    common = ("strategy=weighted", "num_clients=10", "clients_per_round=4", "num_rounds=1", "plot=false")
    run_experiment(config(*common), tmp_path / "plain")
    run_experiment(config(*common, "client_momentum=0.75"), tmp_path / "momentum")
    start = prepare_experiment(config(*common), tmp_path / "start").trainer.initial_weights()
    _, plain = load_weights(tmp_path / "plain" / FINAL_WEIGHTS_FILE)
    _, momentum = load_weights(tmp_path / "momentum" / FINAL_WEIGHTS_FILE)
    for g, p, m in zip(start, plain, momentum):
        assert np.abs(p - g).max() > 1e-3  # the round moved the model
        np.testing.assert_allclose(m - g, 0.25 * (p - g), rtol=0, atol=1e-6)
