"""Scale benchmark, section ``clients``: how start-up, round time and memory grow with the
number of clients when the number sampled per round stays fixed (issue 17).

Fashion-MNIST, Dirichlet(0.5) (the default partition), the default model (MLP 64-64),
``clients_per_round=100``, ``num_clients`` 100, 1,000 and 10,000, a few rounds each, every
run in a fresh process on ``simulate.py``'s path (``RunSettings`` -> ``run_experiment``,
local engine, defaults otherwise) with the partition cache off, so that each start-up
loads and splits the data. The dataset is the same at every size: with more clients each
holds fewer examples (about 540 training examples at 100 clients, 5 at 10,000), so a
round trains on fewer examples; what must not grow is what the unsampled clients cost.

Per run:

- ``startup_seconds``: from the parent's launch of the process to the start of round 1
  (the end of round 0, the initial model's evaluation), and its parts (``phases``):
  Python and fedloom's imports, the settings, loading the dataset, the partition
  (Dirichlet split, per-client train/val split, statistics), and the rest (TensorFlow's
  import, the model, round 0's evaluation);
- ``median_round_seconds``: median wall time of rounds 2.. (round 1 also traces the
  model; it is kept apart as ``round_1_seconds``); a round includes the central
  evaluation on the 10,000 test images;
- ``peak_tree_pss_bytes`` / ``peak_tree_rss_bytes``: peak summed PSS (RSS) of the process
  tree, sampled every 0.1 s (``process_tree.py``).

Goals (issue 17): rounds at most 10% slower and peak PSS at most 200 MB above the
100-client run's (a faster round, from fewer examples per client, passes); start-up
under 30 s at 10,000 clients.

This module is also the child process: ``scale_clients.py --child --out F overrides...``
runs one experiment and writes its stamps and records to ``F``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_PYTHON_STARTED = time.time()  # the child's first statement (imports below are light)

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20
SWEEP = ["dataset=fashion_mnist", "partition=dirichlet", "plot=false"]
GOALS = {"round_ratio_max": 1.10, "pss_growth_max_mb": 200.0, "startup_at_10000_max_s": 30.0}


def compose(overrides: list[str]) -> dict:
    """``conf/config.yaml`` with ``overrides``, resolved to plain dicts."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


# ----------------------------------------------------------------------------- child
def child(overrides: list[str], out: Path) -> None:
    """Run one experiment of ``overrides``; write its time stamps (Unix seconds), the
    partition statistics' summary and per round ``[round, accuracy, seconds, time]``."""
    stamps = {"launched": float(os.environ["FEDLOOM_BENCH_LAUNCHED"]), "python_started": _PYTHON_STARTED}
    sys.path.insert(0, str(ROOT))
    from fedloom.data import load_dataset
    from fedloom.experiment import RunSettings, builders, run_experiment

    stamps["imported"] = time.time()
    settings = RunSettings.from_config(compose(overrides))
    stamps["settings"] = time.time()
    load_dataset(settings.data.name, **settings.data.options)  # cached in-process: federated_data reuses it
    stamps["dataset"] = time.time()
    builders.federated_data(builders.data_key(settings))  # the split, cached for the experiment
    stamps["partition"] = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        records = run_experiment(settings, run_dir)
        partition = json.loads((Path(run_dir) / "partition.json").read_text())
    import psutil

    out.write_text(json.dumps({
        "stamps": stamps,
        "num_clients": settings.num_clients,
        "clients_per_round": settings.clients_per_round,
        "workers": settings.engine.workers,
        "examples_per_client": {k: partition[k] for k in ("min", "mean", "max")},
        "records": [[r["round"], r["accuracy"], r["seconds"], r["time"], r.get("num_clients", 0)]
                    for r in records],
        "rss_after_run_bytes": psutil.Process().memory_info().rss,
    }))


def run_child(overrides: list[str], timeout: float) -> tuple[dict, dict]:
    """``(what the child wrote, its tree's memory and wall time)`` of a fresh process
    running ``overrides``, with the partition cache off."""
    from process_tree import run_sampled  # sibling module of the benchmarks

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDLOOM_CACHE_DIR": "off",
               "FEDLOOM_BENCH_LAUNCHED": repr(time.time())}
        run = run_sampled(__file__, ["--child", "--out", str(out), *overrides], env, timeout)
        result = json.loads(out.read_text())
    return result, {"wall_seconds": round(run.wall_s, 2), **run.memory()}


def startup_phases(stamps: dict, round_0_end: float) -> dict:
    """Seconds of each start-up phase from the child's stamps."""
    marks = [("python_and_imports", "imported"), ("settings", "settings"), ("dataset", "dataset"),
             ("partition", "partition")]
    phases, previous = {}, stamps["launched"]
    for name, key in marks:
        phases[name] = round(stamps[key] - previous, 2)
        previous = stamps[key]
    phases["model_and_round_0"] = round(round_0_end - previous, 2)
    return phases


def round_times(records: list) -> tuple[float, list[float]]:
    """``(median seconds of rounds 2.., every round's seconds)``; round 1 alone when it is
    the only one."""
    seconds = [r[2] for r in records if r[0] >= 1]
    later = seconds[1:] or seconds
    return statistics.median(later), seconds


def measure(num_clients: int, per_round: int, rounds: int, timeout: float) -> dict:
    """One fresh-process run of the sweep's workload with ``num_clients`` clients."""
    overrides = [*SWEEP, f"num_clients={num_clients}", f"clients_per_round={per_round}",
                 f"num_rounds={rounds}"]
    result, run = run_child(overrides, timeout)
    records, stamps = result["records"], result["stamps"]
    median, seconds = round_times(records)
    return {
        "num_clients": num_clients, "clients_per_round": per_round, "rounds": rounds,
        "workers": result.get("workers"),
        "startup_seconds": round(records[0][3] - stamps["launched"], 2),
        "phases": startup_phases(stamps, records[0][3]),
        "median_round_seconds": round(median, 4),
        "round_1_seconds": round(seconds[0], 4),
        "round_seconds": [round(s, 4) for s in seconds],
        "examples_per_client": result["examples_per_client"],
        "final_accuracy": records[-1][1],
        "rss_after_run_bytes": result["rss_after_run_bytes"],
        **run,
    }


def goals(runs: list[dict]) -> dict:
    """Issue 17's goals against the smallest run (where the runs needed are present)."""
    by_size = {r["num_clients"]: r for r in runs}
    base = by_size[min(by_size)]
    checks = {}
    for size, run in sorted(by_size.items()):
        if size == base["num_clients"]:
            continue
        ratio = run["median_round_seconds"] / base["median_round_seconds"]
        checks[f"round_{size}_over_{base['num_clients']}"] = round(ratio, 3)
        checks[f"round_{size}_at_most_10%_slower"] = ratio <= GOALS["round_ratio_max"]
        if run["peak_tree_pss_bytes"] is not None and base["peak_tree_pss_bytes"] is not None:
            growth = (run["peak_tree_pss_bytes"] - base["peak_tree_pss_bytes"]) / MB
            checks[f"pss_{size}_minus_{base['num_clients']}_mb"] = round(growth, 1)
            checks[f"pss_{size}_within_200mb"] = growth <= GOALS["pss_growth_max_mb"]
    if 10_000 in by_size:
        checks["startup_10000_under_30s"] = by_size[10_000]["startup_seconds"] < GOALS["startup_at_10000_max_s"]
    return checks


def sweep(sizes: list[int], per_round: int, rounds: int, timeout: float) -> dict:
    """The ``clients`` section: one run per size, in a fresh process each."""
    from provenance import provenance  # sibling module of the benchmarks

    section = {"provenance": provenance(), "load_before": list(os.getloadavg()),
               "workload": {"overrides": SWEEP, "model": "mlp (default)", "clients_per_round": per_round,
                            "rounds": rounds, "partition_cache": "off"}, "runs": []}
    for size in sizes:
        section["runs"].append(measure(size, per_round, rounds, timeout))
        print(json.dumps(section["runs"][-1]), flush=True)
    section["goals"] = goals(section["runs"])
    section["load_after"] = list(os.getloadavg())
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description="child process of benchmarks/scale.py")
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    child(args.overrides, args.out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
