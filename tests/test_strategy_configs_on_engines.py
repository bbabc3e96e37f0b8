"""The strategy configs of the non-IID and robust methods on both simulation engines.

``python simulate.py strategy=X engine=flower`` runs the experiment through
``flwr.simulation.run_simulation``: every ClientApp call in a Ray actor, per-node state
in the contexts Flower's engine keeps. A Ray start costs far more than two rounds of
digits, so SCAFFOLD (whose clients need that per-node state) runs through the command
line, and the other configs share one ``run_simulation``: its ServerApp runs their
experiments one after another on the same Ray nodes. fedloom's local engine (the
default) runs them all with the same checks.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import config, run_cli
from fedloom.checkpoint import CHECKPOINT_FILE, FINAL_WEIGHTS_FILE, load_checkpoint, load_weights
from fedloom.experiment import RunSettings, builders, prepare_experiment, run_experiment
from fedloom.records import arrayrecord_num_bytes, ndarrays_to_arrayrecord

NUM_CLIENTS = 10  # Bulyan (f=1) needs 7 updates; the trimmed mean of pairs (beta=0.2) 5 pairs
SMALL = [f"num_clients={NUM_CLIENTS}", f"clients_per_round={NUM_CLIENTS}", "num_rounds=2",
         "plot=false"]
#: configs sharing one Ray start; ``fedavg`` is the reference FedProx must differ from
SHARED = ["fedavg", "fedadam", "fedyogi", "fedadagrad", "fedprox", "robust_bulyan",
          "robust_geomed", "robust_trimmed_adam", "robust_centered_clip_uniform"]
ADAPTIVE = ["fedadam", "fedyogi", "fedadagrad", "robust_trimmed_adam"]


def initial_model(cfg: dict) -> list[np.ndarray]:
    """The global model every run of ``cfg`` starts from (seeded by ``cfg["seed"]``)."""
    from fedloom.clients import get_trainer

    settings = RunSettings.from_config(cfg)
    dataset, _ = builders.federated_data(builders.data_key(settings))
    return get_trainer(builders.model_spec(settings, dataset)).initial_weights()


def largest_change(before, after) -> float:
    return max(float(np.abs(np.asarray(a, np.float64) - b).max()) for a, b in zip(after, before, strict=True))


@pytest.mark.slow
def test_simulate_cli_runs_scaffold_on_flowers_ray_engine_like_the_local_engine(tmp_path):
    done = run_cli("strategy=scaffold", "engine=flower", *SMALL, f"hydra.run.dir={tmp_path / 'ray'}")
    assert done.returncode == 0, done.stderr[-3000:]
    ray = json.loads((tmp_path / "ray" / "history.json").read_text())
    assert [(r["round"], r["num_clients"]) for r in ray] == [(0, 0), (1, NUM_CLIENTS), (2, NUM_CLIENTS)]

    # Every reply carries the model and delta_c: twice FedAvg's arrays up.
    keys, final = load_weights(tmp_path / "ray" / FINAL_WEIGHTS_FILE)
    model_bytes = arrayrecord_num_bytes(ndarrays_to_arrayrecord(final, keys))
    for record in ray[1:]:
        assert record["payload_up"] == 2 * NUM_CLIENTS * model_bytes
        assert record["bytes_up"] >= record["payload_up"]
    check_run("scaffold", tmp_path / "ray", initial_model(config("strategy=scaffold", *SMALL)))

    # Round 2's local steps are corrected by c - c_i, with each Ray node's c_i from round 1:
    # the run equals the local engine's, whose nodes keep c_i in their contexts.
    local = run_experiment(config("strategy=scaffold", *SMALL), tmp_path / "local")
    for got, want in zip(ray, local, strict=True):
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    _, final_local = load_weights(tmp_path / "local" / FINAL_WEIGHTS_FILE)
    assert largest_change(final_local, final) < 1e-5


@pytest.mark.slow
def test_every_new_strategy_config_runs_on_flowers_ray_engine(tmp_path):
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    experiments = {name: prepare_experiment(config(f"strategy={name}", "engine=flower", *SMALL),
                                            tmp_path / name) for name in SHARED}
    settings = experiments["fedavg"].settings
    # One ClientApp serves them all: same data, model, seed and client mods.
    assert {builders.data_key(e.settings) for e in experiments.values()} == {builders.data_key(settings)}
    server = ServerApp()
    finished = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        for name, experiment in experiments.items():
            experiment.start(grid)
            finished.append(name)

    run_simulation(server, builders.build_client_app(settings), NUM_CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert finished == SHARED

    finals = {name: check_run(name, tmp_path / name, e.initial_arrays.to_numpy_ndarrays())
              for name, e in experiments.items()}
    # FedProx's clients got proximal-mu through Ray: the same run without it ends elsewhere.
    gap = largest_change(finals["fedavg"], finals["fedprox"])
    assert gap > 1e-4, f"proximal_mu changed the final weights by only {gap:g}"


def test_every_new_strategy_config_runs_on_the_local_engine(tmp_path):
    """The same checks on fedloom's engine (``simulate.py``'s default), where SCAFFOLD
    joins the others: its replies carry twice FedAvg's arrays."""
    finals, records = {}, {}
    for name in [*SHARED, "scaffold"]:
        cfg = config(f"strategy={name}", *SMALL)
        records[name] = run_experiment(cfg, tmp_path / name)
        finals[name] = check_run(name, tmp_path / name, initial_model(cfg))
    for scaffold, fedavg in zip(records["scaffold"][1:], records["fedavg"][1:], strict=True):
        assert scaffold["payload_up"] == 2 * fedavg["payload_up"]
        assert 1.9 < scaffold["bytes_up"] / fedavg["bytes_up"] < 2.05
    gap = largest_change(finals["fedavg"], finals["fedprox"])
    assert gap > 1e-4, f"proximal_mu changed the final weights by only {gap:g}"


def check_run(name: str, run_dir, initial: list[np.ndarray]) -> list[np.ndarray]:
    """What every 2-round run of these configs must show (its final weights returned):
    both rounds aggregated, finite accuracy, bytes counted, a changed finite model, and
    the state the method keeps between rounds in its checkpoint."""
    records = json.loads((run_dir / "history.json").read_text())
    assert [r["round"] for r in records] == [0, 1, 2], name
    for record in records[1:]:
        assert record["num_clients"] >= 1 and not record["skipped"], (name, record)
        assert math.isfinite(record["accuracy"]) and math.isfinite(record["loss"]), name
        assert record["bytes_up"] >= record["payload_up"] > 0, name
    _, final = load_weights(run_dir / FINAL_WEIGHTS_FILE)
    assert all(np.isfinite(w).all() for w in final), name
    assert largest_change(initial, final) > 1e-3, f"{name} left the model unchanged"
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)["strategy"]["own"]
    if name in ADAPTIVE:  # the server optimiser's moments after two steps
        moments = state["schedule"]["adaptive_server_step"]
        assert moments["count"] == 2, name
        assert [m.shape for m in moments["second_moment"]] == [w.shape for w in initial], name
        assert max(np.abs(m).max() for m in moments["second_moment"]) > 0, name
    if name == "scaffold":  # the server's control variate, set from the clients' delta_c
        c = state["scaffold"]["c"]
        assert [a.shape for a in c] == [w.shape for w in initial] and max(np.abs(a).max() for a in c) > 0
    return final
