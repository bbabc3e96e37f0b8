"""Deployment speed: seconds per round of a real 3-SuperNode deployment vs simulation.

Workload: scikit-learn digits split over 3 clients (Dirichlet(0.5) label skew), all 3
train every round, MLP 64-64-10, SGD lr 0.1, batch 10, 1 local epoch, weighted average,
central evaluation on the test split after every round (``num_clients=3
clients_per_round=3``; every other setting is ``conf/config.yaml``'s default). Variants,
each in a fresh process tree:

- ``simulation-local``: ``simulate.py``'s path on fedloom's engine (``engine=local``);
- ``simulation-ray``: the same on Flower's Ray engine (``engine=flower``);
- ``deployment-secure``: ``deploy.py``'s path: one ``flower-superlink`` and three
  ``flower-supernode`` processes on 127.0.0.1 with TLS and SuperNode authentication,
  the app started by ``flwr run``;
- ``deployment-insecure``: the same without TLS and authentication (``--insecure``);
- ``deployment-numpy-floor``: the same secure deployment running a trivial numpy app
  (``benchmarks/floor_app``: Flower's ``FedAvg``, a ClientApp that adds 0.01 to 8,970
  weights, no fedloom and no TensorFlow in its processes): Flower's own cost of a
  deployed round (a ClientApp process per message, polling, transfers), the floor
  under fedloom's rows.

For each: median seconds per round (rounds 2..R, from ``history.json``: training,
aggregation and central evaluation), round 1 (the first message of a run also loads
and caches each node's data), start-up (launch until the round-0 evaluation), wall
time, peak memory of the process tree (summed PSS, sampled every 0.2 s; summed RSS beside
it, see ``process_tree.py``), final accuracy.

Then what one deployment message costs, by part, each measured in fresh processes:

- ``clientapp_imports_s``: a new Python process importing Flower's ClientApp and
  fedloom's Keras client (TensorFlow): every message pays it, because Flower 1.42 starts
  one ``flwr-clientapp`` process per message in both SuperNode isolation modes;
  ``clientapp_imports_flower_only_s``: the same with only Flower and numpy (the floor app);
- ``node_data_first_s`` / ``node_data_cached_s``: :func:`fedloom.deploy.node_data.load_node`
  on the first message of a run (Hydra, dataset, partitioning, cache write) and on later
  ones (``context.state`` + one ``.npz``).

Run: ``python benchmarks/deployment.py [--rounds 8]`` (about 10 minutes on 2 cores; the
3 s polls of Flower's SuperNode and ServerApp make single rounds vary by a few seconds);
prints a table and writes ``benchmarks/results/deployment.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_tree import SampledRun, run_sampled  # noqa: E402  (sibling module of the benchmarks)
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("simulation-local", "simulation-ray", "deployment-secure", "deployment-insecure",
            "deployment-numpy-floor")
FLOOR_APP = ROOT / "benchmarks" / "floor_app"
NUM_NODES = 3
OVERRIDES = ["num_clients=3", "clients_per_round=3", "plot=false"]


# ----------------------------------------------------------------------------- children
def child(variant: str, rounds: int, out: Path) -> None:
    """Run one variant; its history.json ends up in ``out``."""
    overrides = [*OVERRIDES, f"num_rounds={rounds}"]
    if variant.startswith("simulation"):
        from fedloom.deploy.config import compose_experiment
        from fedloom.experiment import run_experiment

        engine = "local" if variant == "simulation-local" else "flower"
        run_experiment(compose_experiment([*overrides, f"engine={engine}"]), out)
    elif variant == "deployment-numpy-floor":
        from fedloom.deploy.launch import LocalDeployment

        with LocalDeployment(out / "deployment", secure=True, app_dir=FLOOR_APP) as deployment:
            deployment.start_superlink()
            for i in range(NUM_NODES):
                deployment.start_supernode(f"supernode-{i}", {"partition-id": i,
                                                              "num-partitions": NUM_NODES})
            deployment.run(f"num_clients={NUM_NODES} num_rounds={rounds}", out, on_line=lambda line: None)
    else:
        from fedloom.deploy.launch import deploy

        deploy(overrides, secure=variant == "deployment-secure", run_dir=out,
               on_line=lambda line: None)


def child_node_data(out: Path) -> None:
    """Time ``load_node`` on a first message (empty state and cache), then on a later one."""
    from flwr.app import Context, RecordDict

    from fedloom.deploy.node_data import load_node

    cache = Path(tempfile.mkdtemp())
    context = Context(run_id=1, node_id=1, state=RecordDict(),
                      node_config={"partition-id": 0, "num-partitions": 3, "cache-dir": str(cache)},
                      run_config={"overrides": " ".join(OVERRIDES)})
    started = time.perf_counter()
    load_node(context)
    first = time.perf_counter() - started
    started = time.perf_counter()
    load_node(context)
    cached = time.perf_counter() - started
    out.write_text(json.dumps({"first": first, "cached": cached, "cache": str(cache)}))


# ----------------------------------------------------------------------------- parent
def run_child(args: list[str], timeout: float = 1200) -> SampledRun:
    """Run this script with ``args`` in a new session; return its wall time and peak memory."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return run_sampled(__file__, args, env, timeout, interval=0.2)


def measure_variant(variant: str, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        launched = time.time()
        run = run_child(["--child", variant, "--rounds", str(rounds), "--out", tmp])
        records = json.loads((Path(tmp) / "history.json").read_text())
    seconds = [r["seconds"] for r in records[1:]]
    return {
        "median_round_s": statistics.median(seconds[1:] or seconds),
        "round_1_s": seconds[0],
        "round_s": seconds,
        "startup_s": records[0]["time"] - launched,
        "wall_s": run.wall_s,
        **run.memory(),
        "final_accuracy": records[-1].get("accuracy"),  # the floor app trains nothing
    }


def import_seconds(modules: str, repeats: int) -> float:
    """Median seconds for a fresh Python process to import ``modules``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {modules}"], check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_message_parts(repeats: int = 3, *, fedloom: bool = True) -> dict:
    parts = {"clientapp_imports_flower_only_s": import_seconds("flwr.clientapp, numpy", repeats)}
    if not fedloom:
        return parts
    # fedloom.clients imports TensorFlow lazily (on the first trainer), so import it too
    parts["clientapp_imports_s"] = import_seconds("flwr.clientapp, fedloom.clients, tensorflow, keras", repeats)
    first, cached = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "node_data.json"
            run_child(["--child-node-data", "--out", str(out)])
            timing = json.loads(out.read_text())
        first.append(timing["first"])
        cached.append(timing["cached"])
    return {**parts, "node_data_first_s": statistics.median(first),
            "node_data_cached_s": statistics.median(cached)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "deployment.json")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--child-node-data", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rounds, args.out)
        return
    if args.child_node_data:
        child_node_data(args.out)
        return

    about = provenance()  # before the runs: its load average says whether the machine was idle
    results = {}
    for variant in args.variants.split(","):
        results[variant] = r = measure_variant(variant, args.rounds)
        print(f"{variant:20s} round {r['median_round_s']:7.3f} s (first {r['round_1_s']:6.2f} s)"
              f"   start-up {r['startup_s']:5.1f} s   wall {r['wall_s']:5.1f} s   peak memory PSS "
              f"{(r['peak_tree_pss_bytes'] or 0) / 2**30:5.2f} GiB (RSS {r['peak_tree_rss_bytes'] / 2**30:5.2f})"
              f"   accuracy {r['final_accuracy'] if r['final_accuracy'] is None else round(r['final_accuracy'], 4)}",
              flush=True)
    fedloom_deployed = any(v in results for v in ("deployment-secure", "deployment-insecure"))
    parts = measure_message_parts(fedloom=fedloom_deployed)
    print(f"one deployment message: a fresh process imports Flower's ClientApp and numpy in "
          f"{parts['clientapp_imports_flower_only_s']:.2f} s", flush=True)
    if fedloom_deployed:
        print(f"  and fedloom's Keras client too in {parts['clientapp_imports_s']:.2f} s; node data "
              f"{parts['node_data_first_s']:.2f} s on a run's first message, "
              f"{parts['node_data_cached_s'] * 1e3:.1f} ms later (cached)", flush=True)
    ratios = {}
    for variant in results:
        if variant.startswith("deployment") and "simulation-local" in results:
            ratios[f"{variant}_over_simulation_local"] = (
                results[variant]["median_round_s"] / results["simulation-local"]["median_round_s"])
        if variant.startswith("deployment") and variant != "deployment-numpy-floor" \
                and "deployment-numpy-floor" in results:
            ratios[f"{variant}_over_numpy_floor"] = (
                results[variant]["median_round_s"] / results["deployment-numpy-floor"]["median_round_s"])
    for name, value in ratios.items():
        print(f"{name}: {value:.0f}x", flush=True)
    report = {
        "benchmark": "seconds per round, 3 clients all training every round (median of rounds 2..R)",
        "provenance": about,
        "workload": {"overrides": OVERRIDES, "rounds": args.rounds, "dataset": "digits",
                     "partition": "dirichlet(0.5)", "model": "mlp 64-64-10", "strategy": "weighted",
                     "learning_rate": 0.1, "batch_size": 10, "local_epochs": 1},
        "flower_polling_s": {"supernode_pull_when_idle": 3.0, "serverapp_reply_pull": 3.0,
                             "superexec_task_poll": 0.1},
        "variants": results,
        "message_parts": parts,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
