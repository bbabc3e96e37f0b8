"""SCAFFOLD end to end with the real Keras ClientApp on digits (local engine): the
server's control variate goes into checkpoints and a restarted server continues bit
for bit, while the clients keep their own variates ``c_i`` in their contexts (as
SuperNodes do when only the server restarts)."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.checkpoint import CHECKPOINT_FILE, FINAL_WEIGHTS_FILE, load_checkpoint, load_weights
from fedloom.experiment import builders, prepare_experiment, run_experiment

from test_experiment import config
from test_resume import CrashingGrid

NUM_CLIENTS = 8


def scaffold_config():
    return config("strategy=scaffold", f"num_clients={NUM_CLIENTS}", "clients_per_round=4",
                  "num_rounds=3", "checkpoint_every=1", "plot=false", "local_epochs=1")


def control_variate(run_dir):
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    return checkpoint["round"], checkpoint["strategy"]["own"]["scaffold"]["c"]


def test_scaffold_resumes_bit_for_bit_from_a_checkpoint_with_the_real_keras_client(tmp_path):
    cfg = scaffold_config()
    whole = run_experiment(cfg, tmp_path / "whole")
    assert [r["num_clients"] for r in whole[1:]] == [4, 4, 4]

    killed = prepare_experiment(cfg, tmp_path / "killed")
    grid = CrashingGrid(builders.build_client_app(killed.settings), NUM_CLIENTS, seed=int(cfg["seed"]),
                        crash_round=3)
    with pytest.raises(SystemExit):
        killed.start(grid)
    round_done, c_after_two = control_variate(tmp_path / "killed")
    assert round_done == 2 and max(np.abs(c).max() for c in c_after_two) > 0

    restarted = prepare_experiment(load_checkpoint(tmp_path / "killed" / CHECKPOINT_FILE)["config"],
                                   tmp_path / "killed")
    restarted.checkpoint = load_checkpoint(tmp_path / "killed" / CHECKPOINT_FILE)
    grid.crash_round = None  # the same nodes, with their c_i: only the server restarted
    resumed = restarted.start(grid)

    _, expected = load_weights(tmp_path / "whole" / FINAL_WEIGHTS_FILE)
    _, got = load_weights(tmp_path / "killed" / FINAL_WEIGHTS_FILE)
    for a, b in zip(expected, got):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    for a, b in zip(control_variate(tmp_path / "whole")[1], control_variate(tmp_path / "killed")[1]):
        assert a.tobytes() == b.tobytes()
    assert [r["accuracy"] for r in resumed] == [r["accuracy"] for r in whole]


def test_scaffold_moves_bytes_both_ways_about_twice_fedavgs(tmp_path):
    scaffold = run_experiment(scaffold_config(), tmp_path / "scaffold")
    fedavg_cfg = scaffold_config()
    fedavg_cfg["strategy"] = {k: v for k, v in fedavg_cfg["strategy"].items()}
    fedavg_cfg["strategy"]["_target_"] = "fedloom.strategies.FederatedAveraging"
    fedavg = run_experiment(fedavg_cfg, tmp_path / "fedavg")
    for s, f in zip(scaffold[2:], fedavg[2:]):  # from round 2, c is no longer all zeros
        assert s["payload_up"] == 2 * f["payload_up"] and s["payload_down"] == 2 * f["payload_down"]
        assert 1.9 < s["bytes_up"] / f["bytes_up"] < 2.05
        assert 1.9 < s["bytes_down"] / f["bytes_down"] < 2.05
        assert s["bytes_up"] >= s["payload_up"] and f["bytes_up"] >= f["payload_up"]


@pytest.mark.slow
def test_simulate_cli_runs_scaffold_on_the_local_engine(tmp_path):
    import json

    from test_experiment import run_cli

    done = run_cli("strategy=scaffold", "num_rounds=3", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["num_clients"] for r in history] == [0, 10, 10, 10]
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.05
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    c = checkpoint["strategy"]["own"]["scaffold"]["c"]
    assert [a.shape for a in c] == [a.shape for a in checkpoint["arrays"]["values"]]
    assert all(np.isfinite(a).all() for a in c) and max(np.abs(a).max() for a in c) > 0
