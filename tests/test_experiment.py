"""Hydra configs, config validation, and `simulate.py` end to end on real digits data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedloom.errors import ConfigError
from fedloom.experiment import run_experiment, settings, setup
from fedloom.strategies import FedloomStrategy

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
STRATEGIES = sorted(p.stem for p in (CONF / "strategy").glob("*.yaml"))


def config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_config_composes_and_instantiates(name):
    cfg = config(f"strategy={name}")
    settings.validate(cfg)
    strategy = setup.build_strategy(cfg)
    assert isinstance(strategy, FedloomStrategy)
    assert strategy.min_train_nodes == cfg["clients_per_round"]
    assert strategy.fraction_train * cfg["num_clients"] == pytest.approx(cfg["clients_per_round"])


def test_fedavg_config_sends_e_and_b_to_clients():
    cfg = config("strategy=fedavg", "local_epochs=5", "batch_size=20")
    pipeline = setup.build_strategy(cfg).schedule.at(1)
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
        settings.validate(config(*overrides))


def test_unknown_strategy_option_fails_with_our_message():
    cfg = config("strategy=weighted", "+strategy.wieght_by=quality")
    with pytest.raises(ConfigError, match="strategy=fedloom.strategies.WeightedAverage cannot be built.*wieght_by"):
        setup.build_strategy(cfg)


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


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "simulate.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


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
