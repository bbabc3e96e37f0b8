"""Checkpoints and resume: a run killed at any point continues to the same final weights.

The strongest test kills ``simulate.py`` with SIGKILL (no chance to clean up) after it
has checkpointed, resumes it from the command line and compares its final weights with
an uninterrupted run of the same config, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fedloom.checkpoint import (
    CHECKPOINT_FILE,
    FINAL_WEIGHTS_FILE,
    global_random_state,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    set_global_random_state,
)
from fedloom.engine import LocalGrid
from fedloom.errors import ConfigError
from fedloom.experiment import prepare_experiment, resume_experiment, run_experiment
from fedloom.rounds import run_rounds
from fedloom.strategies import FederatedAveraging, Hybrid

from conftest import config, start_cli
from grids import CrashingGrid
from numpy_apps import INITIAL_WEIGHTS, message_app

def fedavgm(seed: int = 5) -> FederatedAveraging:
    """Samples 3 of 6 nodes (the RNG matters) with server momentum (state matters)."""
    return FederatedAveraging(server_learning_rate=0.7, server_momentum=0.9, fraction_train=0.5,
                              min_train_nodes=3, min_available_nodes=6, fraction_evaluate=0.0,
                              seed=seed)


def final(result) -> list[np.ndarray]:
    return result.arrays.to_numpy_ndarrays()


def test_run_rounds_from_round_one_is_flower_start_bit_for_bit():
    started = fedavgm().start(grid=LocalGrid(message_app, 6, seed=1),
                              initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=5)
    looped = run_rounds(fedavgm(), LocalGrid(message_app, 6, seed=1),
                        ArrayRecord(INITIAL_WEIGHTS), 5)
    for a, b in zip(final(started), final(looped)):
        assert a.tobytes() == b.tobytes()


def test_strategy_state_round_trips_through_a_checkpoint_file(tmp_path):
    whole = run_rounds(fedavgm(), LocalGrid(message_app, 6, seed=1), ArrayRecord(INITIAL_WEIGHTS), 6)

    first = fedavgm()
    saved = {}

    def keep(server_round, arrays, result):
        if server_round == 3:
            saved.update(arrays=arrays.to_numpy_ndarrays(), strategy=first.state_dict())

    run_rounds(first, LocalGrid(message_app, 6, seed=1), ArrayRecord(INITIAL_WEIGHTS), 3,
               on_round_end=keep)
    assert saved["strategy"]["schedule"], "server momentum must be part of the state"
    save_checkpoint(tmp_path / "c.npz", saved)
    loaded = load_checkpoint(tmp_path / "c.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left

    second = fedavgm(seed=999)  # a different seed: only the checkpoint can make it match
    second.load_state_dict(loaded["strategy"])
    rest = run_rounds(second, LocalGrid(message_app, 6, seed=1), ArrayRecord(loaded["arrays"]), 6,
                      first_round=4)
    for a, b in zip(final(whole), final(rest)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    without_state = run_rounds(fedavgm(seed=999), LocalGrid(message_app, 6, seed=1),
                               ArrayRecord(loaded["arrays"]), 6, first_round=4)
    assert not np.array_equal(final(whole)[0], final(without_state)[0])


def test_norm_filter_history_round_trips_through_a_checkpoint_file(tmp_path):
    def robust():
        return Hybrid.robust_weighted("trimmed_mean", beta=0.2, min_available_nodes=6,
                                      fraction_evaluate=0.0)

    first = robust()
    run_rounds(first, LocalGrid(message_app, 6, seed=1), ArrayRecord(INITIAL_WEIGHTS), 3)
    filter_state = first.state_dict()["schedule"]["reject_norm_outliers"]
    assert len(filter_state["recent_medians"]) == 3 and min(filter_state["recent_medians"]) > 0
    save_checkpoint(tmp_path / "c.npz", {"strategy": first.state_dict()})
    second = robust()
    second.load_state_dict(load_checkpoint(tmp_path / "c.npz")["strategy"])
    assert second.state_dict() == first.state_dict()


def test_centred_clipping_resumes_from_its_last_step_bit_for_bit(tmp_path):
    def robust():
        return Hybrid.robust_weighted("centered_clip", min_available_nodes=6, fraction_evaluate=0.0,
                                      seed=5)  # the same sampling order: float sums are order-sensitive

    whole = run_rounds(robust(), LocalGrid(message_app, 6, seed=1), ArrayRecord(INITIAL_WEIGHTS), 6)
    first, saved = robust(), {}

    def keep(server_round, arrays, result):
        if server_round == 3:
            saved.update(arrays=arrays.to_numpy_ndarrays(), strategy=first.state_dict())

    run_rounds(first, LocalGrid(message_app, 6, seed=1), ArrayRecord(INITIAL_WEIGHTS), 3, on_round_end=keep)
    assert "step" in saved["strategy"]["schedule"]["centered_clip"]
    save_checkpoint(tmp_path / "c.npz", saved)
    loaded = load_checkpoint(tmp_path / "c.npz")
    second = robust()
    second.load_state_dict(loaded["strategy"])
    rest = run_rounds(second, LocalGrid(message_app, 6, seed=1), ArrayRecord(loaded["arrays"]), 6,
                      first_round=4)
    for a, b in zip(final(whole), final(rest)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    fresh = run_rounds(robust(), LocalGrid(message_app, 6, seed=1), ArrayRecord(loaded["arrays"]), 6,
                       first_round=4)
    assert not np.array_equal(final(whole)[0], final(fresh)[0])


def test_global_random_state_is_restored_exactly():
    state = global_random_state()
    expected = np.random.normal(size=3)
    np.random.normal(size=10)
    set_global_random_state(state)
    np.testing.assert_array_equal(np.random.normal(size=3), expected)


def test_missing_or_foreign_checkpoint_fails_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"resume: no checkpoint at .*checkpoint_every >= 1"):
        resume_experiment(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="is not a readable fedloom checkpoint"):
        resume_experiment(tmp_path)


def test_dp_run_resumes_with_noise_rng_clipping_norm_and_accountant(tmp_path):
    # bit for bit only when explicitly insecure: a real DP run's noise and sample are
    # secret, never checkpointed (tests/test_privacy.py)
    cfg = config("strategy=simple", "dp=central_adaptive", "num_clients=20", "clients_per_round=10",
                 "num_rounds=6", "checkpoint_every=2", "faults.crash=0.2", "plot=false",
                 "dp.insecure_reproducible=true")
    whole = run_experiment(cfg, tmp_path / "whole")

    experiment = prepare_experiment(cfg, tmp_path / "killed")
    from fedloom.experiment import builders

    grid = CrashingGrid(builders.build_client_app(experiment.settings), 20, seed=0, crash_round=6)
    with pytest.raises(SystemExit):
        experiment.start(grid)
    assert load_checkpoint(tmp_path / "killed" / CHECKPOINT_FILE)["round"] == 4
    resumed = resume_experiment(tmp_path / "killed")

    _, expected = load_weights(tmp_path / "whole" / FINAL_WEIGHTS_FILE)
    _, got = load_weights(tmp_path / "killed" / FINAL_WEIGHTS_FILE)
    for a, b in zip(expected, got):
        assert a.tobytes() == b.tobytes()
    for key in ("accuracy", "dp_noise_multiplier", "dp_clipping_norm", "num_rejected"):
        assert [r.get(key) for r in resumed] == [r.get(key) for r in whole]
    assert all(r["dp_epsilon"] is None for r in whole[1:])  # insecure: no guarantee
    assert len({r["dp_clipping_norm"] for r in whole[1:]}) == len(whole) - 1  # adaptive: moves every round
    assert sum(r["rejected"].get("client_error", 0) for r in whole) > 0  # crashes screened, not fatal


def run_cli(run_dir: Path, *args: str) -> subprocess.Popen:
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    return start_cli(*args, f"hydra.run.dir={run_dir}", log=log)


# Every client stalls 30 ms (fault injection that changes no weight) so that the run
# lasts long enough to be killed in the middle; momentum, sampling 5 of 20 clients and
# injected crashes and NaN updates make every part of the state matter.
RUN = ("strategy=fedavg", "strategy.server_momentum=0.9", "num_clients=20", "clients_per_round=5",
       "num_rounds=30", "checkpoint_every=2", "faults.slow=0.6", "faults.slow_seconds=0.03",
       "faults.crash=0.2", "faults.nan=0.1", "plot=false")


@pytest.mark.slow
def test_sigkilled_simulate_resumes_to_the_uninterrupted_weights(tmp_path):
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    processes = []
    try:
        processes.append(whole := run_cli(whole_dir, *RUN))
        processes.append(killed := run_cli(killed_dir, *RUN))
        deadline = time.monotonic() + 240
        checkpoint = killed_dir / CHECKPOINT_FILE
        while not (checkpoint.exists() and load_checkpoint(checkpoint)["round"] >= 6):
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at round 6 in time"
            time.sleep(0.02)
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert not (killed_dir / FINAL_WEIGHTS_FILE).exists(), "killed after it finished"
        killed_at = load_checkpoint(checkpoint)["round"]
        assert killed_at < 30
        processes.append(resumed := run_cli(tmp_path / "resume-hydra", f"resume={killed_dir}"))
        assert resumed.wait(timeout=240) == 0, (tmp_path / "resume-hydra.log").read_text()[-3000:]
        assert whole.wait(timeout=240) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert f"resuming {killed_dir} after round {killed_at}" in (tmp_path / "resume-hydra.log").read_text()
    keys_a, expected = load_weights(whole_dir / FINAL_WEIGHTS_FILE)
    keys_b, got = load_weights(killed_dir / FINAL_WEIGHTS_FILE)
    assert keys_a == keys_b
    for a, b in zip(expected, got):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    history = json.loads((killed_dir / "history.json").read_text())
    uninterrupted = json.loads((whole_dir / "history.json").read_text())
    assert [r["round"] for r in history] == list(range(31))
    assert [r["accuracy"] for r in history] == [r["accuracy"] for r in uninterrupted]
    assert sum(r["rejected"].get("client_error", 0) for r in history) > 0
