"""The Hydra config's ``early_stop`` section end to end on real digits data (Keras)."""

from __future__ import annotations

import json

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedloom.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fedloom.experiment import run_experiment
from test_experiment import CONF


def config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)),
                                      resolve=True)


def test_target_accuracy_ends_the_run_checkpoints_it_and_says_why(tmp_path):
    cfg = config("num_rounds=40", "num_clients=20", "clients_per_round=10",
                 "early_stop.target_accuracy=0.4", "checkpoint_every=5", "plot=false")
    records = run_experiment(cfg, tmp_path)
    last = records[-1]
    assert 1 <= last["round"] < 40
    assert last["accuracy"] >= 0.4 > max(r["accuracy"] for r in records[:-1])
    assert last["stopped_early"].startswith("accuracy ") and "target 0.4" in last["stopped_early"]
    assert json.loads((tmp_path / "history.json").read_text()) == records
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["round"] == last["round"]
    # resuming a run that stopped early runs nothing more
    assert run_experiment({**cfg, "resume": str(tmp_path)}, tmp_path) == records
