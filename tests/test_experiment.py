"""Hydra configs, config validation, and `simulate.py` end to end on real digits data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import CONF, config, run_cli
from fedloom.errors import ConfigError
from fedloom.experiment import RunSettings, builders, run_experiment
from fedloom.strategies import FedloomStrategy

__all__ = ["config"]  # other test modules import it from here too

STRATEGIES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_config_composes_and_instantiates(name):
    cfg = config(f"strategy={name}")
    strategy = builders.build_strategy(RunSettings.from_config(cfg))
    assert isinstance(strategy, FedloomStrategy)
    assert strategy.min_train_nodes == cfg["clients_per_round"]
    assert strategy.fraction_train * cfg["num_clients"] == pytest.approx(cfg["clients_per_round"])


def test_fedavg_config_sends_e_and_b_to_clients():
    cfg = config("strategy=fedavg", "local_epochs=5", "batch_size=20")
    pipeline = builders.build_strategy(RunSettings.from_config(cfg)).schedule.at(1)
    assert pipeline.client_config == {"local-epochs": 5, "batch-size": 20}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_rounds=-1"], "num_rounds=-1 is not allowed: it must be an integer >= 1"),
        (["clients_per_round=200"], "clients_per_round=200 is not allowed: it must be <= num_clients=100"),
        (["learning_rate=0"], "learning_rate=0 is not allowed"),
        (["val_fraction=1.5"], "val_fraction=1.5 is not allowed"),
        (["+unknown_key=3"], "unknown_key is not a fedloom setting"),
        (["strategy=robust_trimmed", "strategy.beta=0.6"], "strategy.beta=0.6 is not allowed"),
        (["strategy=robust_krum", "strategy.num_byzantine=9"], "strategy.num_byzantine=9 needs clients_per_round >= 12"),
        (["min_valid_updates=11"], "min_valid_updates=11 is not allowed"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunSettings.from_config(config(*overrides))


def test_unknown_strategy_option_fails_with_our_message():
    cfg = config("strategy=weighted", "+strategy.wieght_by=quality")
    with pytest.raises(ConfigError, match="strategy=fedloom.strategies.WeightedAverage cannot be built.*wieght_by"):
        RunSettings.from_config(cfg)


def test_hydra_refuses_keys_outside_the_tree():
    with pytest.raises(Exception, match="Could not override 'num_round'"):
        config("num_round=3")


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_shipped_strategy_runs_and_writes_history_and_plot(name, tmp_path):
    cfg = config(f"strategy={name}", "num_rounds=3", "num_clients=20", "clients_per_round=10")
    records = run_experiment(cfg, tmp_path)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved == records
    for record in saved[1:]:
        assert {"round", "accuracy", "loss", "num_clients", "bytes_up", "bytes_down", "seconds"} <= set(record)
        assert record["bytes_up"] > 0 and record["bytes_down"] > 0 and record["seconds"] > 0
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "config.json").read_text())["strategy"] == cfg["strategy"]


@pytest.mark.slow
def test_simulate_cli_trains_and_accuracy_rises(tmp_path):
    done = run_cli("num_rounds=15", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 16
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.2
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(r["num_clients"] == 10 for r in history[1:])
    assert "round  15/15  accuracy" in done.stdout
    assert (tmp_path / "plot.png").exists() and (tmp_path / ".hydra" / "config.yaml").exists()


@pytest.mark.slow
def test_simulate_cli_exits_nonzero_with_one_line_error(tmp_path):
    done = run_cli("num_rounds=0", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 2
    assert "error: num_rounds=0 is not allowed: it must be an integer >= 1." in done.stderr
    missing = run_cli("dataset=fashion_mnist", "dataset.path=/nonexistent/fmnist",
                      f"hydra.run.dir={tmp_path}")
    assert missing.returncode == 2
    assert "/nonexistent/fmnist" in missing.stderr


@pytest.mark.slow
def test_simulate_multirun_gives_one_directory_per_strategy(tmp_path):
    done = run_cli("-m", "strategy=simple,weighted,fedavg", "num_rounds=2", f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/history.json"))
    assert len(runs) == 3
    targets = {json.loads((r / "config.json").read_text())["strategy"]["_target_"] for r in runs}
    assert targets == {"fedloom.strategies.SimpleAverage", "fedloom.strategies.WeightedAverage",
                       "fedloom.strategies.FederatedAveraging"}
    report = subprocess.run([sys.executable, "-m", "fedloom.report", str(tmp_path), "--target", "0.3"],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    table = (tmp_path / "report.md").read_text().splitlines()
    assert len(table) == 2 + 3 and any(line.startswith("| strategy=fedavg") for line in table)
    assert (tmp_path / "report.png").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["fraction_train=0.3", "strategy=robust_trimmed", "model=cnn", "partition=iid"],
        ["dp=central_adaptive", "strategy=simple", "faults=flaky", "absurd_norm_ratio=null"],
        ["attack=sign_flip", "compression=topk", "engine=flower", "checkpoint_every=0", "plot=false"],
    ],
)
def test_settings_round_trip_through_their_dict(overrides):
    parsed = RunSettings.from_config(config(*overrides))
    saved = json.loads(json.dumps(parsed.to_dict()))  # as config.json and checkpoints hold it
    assert RunSettings.from_config(saved) == parsed
    assert saved == {**config(*overrides), "clients_per_round": parsed.clients_per_round}


def test_rules_between_settings_are_decided_once():
    plain = RunSettings.from_config(config("absurd_norm_ratio=50"))
    assert plain.absurd_norm_guard == 50.0
    assert builders.build_strategy(plain).absurd_norm_ratio == 50.0
    private = RunSettings.from_config(config("absurd_norm_ratio=50", "dp=central_fixed", "strategy=simple"))
    assert private.absurd_norm_guard is None and private.to_dict()["absurd_norm_ratio"] == 50
    assert builders.build_strategy(private).absurd_norm_ratio is None
    simulated = RunSettings.from_config(config("num_clients=20", "clients_per_round=5"))
    deployed = RunSettings.from_config(config("num_clients=20", "clients_per_round=5"), deployed=True)
    assert builders.build_strategy(simulated).min_available_nodes == 20
    assert builders.build_strategy(deployed).min_available_nodes == 5
    with pytest.raises(ConfigError, match="resume=/tmp/run continues a simulation; a deployment starts at round 1"):
        RunSettings.from_config(config("resume=/tmp/run"), deployed=True)


def test_central_evaluation_only_evaluates_and_the_round_end_records(tmp_path):
    from fedloom.engine import LocalGrid
    from fedloom.experiment import prepare_experiment

    cfg = config("dp=central_fixed", "strategy=simple", "num_clients=10", "clients_per_round=5",
                 "num_rounds=2", "plot=false")
    experiment = prepare_experiment(cfg, tmp_path)
    metrics = experiment.evaluate_fn(1, experiment.initial_arrays)
    assert set(metrics) == {"accuracy", "loss"} and 0 <= metrics["accuracy"] <= 1
    assert experiment.history.records == [] and experiment.privacy.accountant.epsilon() == 0
    grid = LocalGrid(builders.build_client_app(experiment.settings), 10, seed=0)
    records = experiment.start(grid)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[0]["accuracy"] == pytest.approx(metrics["accuracy"])  # same model, same data
    assert [r["num_clients"] for r in records] == [0, 5, 5]
    assert 0 < records[1]["dp_epsilon"] < records[2]["dp_epsilon"] == experiment.privacy.accountant.epsilon()


def test_run_writes_the_final_model_as_a_keras_file(tmp_path):
    import keras
    import numpy as np

    from fedloom.checkpoint import FINAL_WEIGHTS_FILE, load_weights

    cfg = config("num_clients=10", "clients_per_round=5", "num_rounds=2", "plot=false")
    records = run_experiment(cfg, tmp_path)
    model = keras.models.load_model(tmp_path / "model.keras")
    _, final = load_weights(tmp_path / FINAL_WEIGHTS_FILE)
    for saved, loaded in zip(final, model.get_weights(), strict=True):
        assert saved.tobytes() == np.asarray(loaded).tobytes()
    dataset, _ = builders.federated_data(builders.data_key(RunSettings.from_config(cfg)))
    predicted = np.argmax(model.predict(dataset.x_test, verbose=0), axis=1)
    assert np.mean(predicted == dataset.y_test) == pytest.approx(records[-1]["accuracy"], abs=1e-6)
