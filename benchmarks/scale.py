"""Scale benchmarks (issue 17): the local engine's worker sweep, the client-count sweep
and Shakespeare with natural clients.

Sections (``--sections``; each rewrites only its own keys of the JSON, so a run of one
section keeps the others' results):

- ``workers`` (W = 1, 2 by default; ``--workers 1 2 4``), each variant in a fresh
  process through ``simulate.py``'s path (``run_experiment``) on the local engine:

  - ``digits``: the default workload of ``python simulate.py`` (digits, 100 clients,
    Dirichlet(0.5), 10 per round, MLP 64-64, E=1, B=10) for ``--digits-rounds`` rounds:
    bound by per-call dispatch (a client update is about a millisecond of arithmetic);
  - ``fashion``: Fashion-MNIST, ``model=mcmahan_cnn``, 100 clients, 10 per round, E=5,
    B=10, for ``--fashion-rounds`` rounds: compute-bound (TensorFlow already spreads one
    client's convolutions over the cores).

  For each: median seconds per round over rounds 2.. (round 1 also builds the worker
  replicas), start-up seconds (launch to the end of round 1 minus one median round),
  peak memory of the process tree (summed PSS and RSS, sampled every 0.1 s; W threads
  hold W model replicas), final test accuracy, and a hash of the final weights (equal
  for every W: the engine is bit-identical across worker counts). ``--workers 0`` adds
  the same workload on Flower's Ray engine (``engine=flower``, same client code, one CPU
  per client actor): the goal compares the fastest local round with Ray's. Each local
  run also records the anatomy of its rounds (``scale_anatomy.py``: the client calls
  against the server's work between them, the cores the calls keep busy); ``bounds``
  gives the least W-over-1 and local-over-Ray ratios the W = 1 run's anatomy allows.
- ``interleaved``: the engine's part of a digits round alone (10 real client calls per
  batch), W = 1 and W = 2 alternating batch by batch in one process, so that a changing
  load on a shared machine hits both alike.
- ``probe`` answers "threads or processes?" on this machine: the same client updates
  (digits MLP, E=1, B=10, one after another from the global model) run serially, on W
  threads (one trainer replica per thread, TensorFlow's shared pools), and on W worker
  processes (each its own TensorFlow with ``cores // W`` threads, weights pickled both
  ways per call, data loaded once per process); seconds per client update.
- ``clients`` (``scale_clients.py``): Fashion-MNIST Dirichlet(0.5) with ``--clients``
  100,1000,10000 clients, ``--clients-per-round`` 100, ``--rounds`` 3 each, a fresh
  process per size: start-up (and its phases), median round, peak PSS and RSS.
- ``shakespeare`` (``scale_shakespeare.py``): FedAvg, ``char_lstm``, natural clients, 10
  per round, E=1, until 50% next-character accuracy or ``--shakespeare-rounds``: rounds
  and wall time to 40% and 50%.

Run: ``python benchmarks/scale.py`` runs ``workers interleaved probe clients`` (about 7
minutes on 2 idle cores); ``--sections shakespeare`` is long (rounds of tens of seconds
each on 2 cores; see the README). ``--table`` prints the Markdown tables of the JSON
without running anything. Writes ``benchmarks/results/scale.json``: each section with
the commit, versions, CPU and the load average before and after (the numbers mean little
on a loaded machine: see ``load``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from process_tree import run_sampled  # noqa: E402  (sibling module of the benchmarks)

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "digits": [],  # simulate.py's defaults
    "fashion": ["dataset=fashion_mnist", "model=mcmahan_cnn", "local_epochs=5", "batch_size=10"],
}
GOALS = {"digits": 0.65, "fashion": 1.0}  # W=2 round / W=1 round at most (issue 17)
RAY_GOAL = {"fashion": 1 / 3}  # best local round / Ray round at most (issue 17)
RAY = 0  # the ``--workers`` value that runs the workload on Flower's Ray engine instead


# ----------------------------------------------------------------------------- children
def workload_config(workload: str, workers: int, rounds: int) -> dict:
    """The workload's config on the local engine with ``workers`` threads, or on Flower's
    Ray engine for ``workers=0`` (same client code, one CPU per client actor)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    engine = ["engine=flower"] if workers == RAY else ["engine=local", f"engine.workers={workers}"]
    overrides = [*WORKLOADS[workload], *engine, f"num_rounds={rounds}", "plot=false",
                 "checkpoint_every=0"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def weights_hash(path: Path) -> str:
    import numpy as np

    digest = hashlib.sha256()
    with np.load(path) as saved:
        for key in sorted(saved.files):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(saved[key]).tobytes())
    return digest.hexdigest()


def run_workload(workload: str, workers: int, rounds: int) -> dict:
    from fedloom.engine import available_cores
    from fedloom.experiment import run_experiment
    from scale_anatomy import RoundAnatomy  # sibling module of the benchmarks

    anatomy = RoundAnatomy().install() if workers != RAY else None
    with tempfile.TemporaryDirectory() as out:
        records = run_experiment(workload_config(workload, workers, rounds), out)
        digest = weights_hash(Path(out) / "final_weights.npz")
    import psutil

    return {"round_end": [r["time"] for r in records], "final_accuracy": records[-1]["accuracy"],
            "final_weights_sha256": digest,
            "rss_after_run_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            **({"anatomy": anatomy.summary(available_cores())} if anatomy else {})}


def measure_workload(workload: str, workers: int, rounds: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDLOOM_BENCH_LAUNCHED": repr(time.time())}
        run = run_sampled(__file__, ["--child", workload, "--workers", str(workers),
                                     "--child-rounds", str(rounds), "--out", str(out)], env, timeout)
        result = json.loads(out.read_text())
    launched = float(result.pop("launched"))
    ends = result.pop("round_end")  # [initial evaluation, round 1, round 2, ...]
    per_round = [b - a for a, b in zip(ends[1:], ends[2:])]
    median = statistics.median(per_round) if per_round else ends[1] - ends[0]
    return {"workload": workload, "workers": workers, "rounds": rounds,
            "median_round_seconds": round(median, 4),
            "round_seconds": [round(s, 4) for s in per_round],
            "startup_seconds": round(ends[1] - launched - median, 2),
            "wall_seconds": round(run.wall_s, 2), **run.memory(), **result}


# ----------------------------------------------------------------------------- probe
@functools.cache
def _probe_data():
    sys.path.insert(0, str(ROOT))
    from fedloom.experiment import RunSettings, builders

    settings = RunSettings.from_config(workload_config("digits", 1, 1), build_check=False)
    dataset, clients = builders.federated_data(builders.data_key(settings))
    return builders.model_spec(settings, dataset), clients


def _probe_fit(index: int, weights=None):
    """One client update of the probe (runs in a thread or a worker process)."""
    from fedloom.clients import get_trainer

    spec, clients = _probe_data()
    trainer = get_trainer(spec)
    data = clients[index % len(clients)]
    start = trainer.initial_weights() if weights is None else weights
    return trainer.fit(start, data.x_train, data.y_train, epochs=1, batch_size=10,
                       learning_rate=0.1, seed=index)[0]


def _probe_process_init(threads: int) -> None:
    os.environ["FEDLOOM_TF_THREADS"] = str(threads)
    _probe_fit(0)  # import TensorFlow, load data, build and trace the replica


def probe(workers: int, calls: int, repeats: int = 3) -> dict:
    """Seconds per client update: serial, ``workers`` threads, ``workers`` processes
    (each mode ``repeats`` times, interleaved, so that a changing load hits all alike;
    the median is reported)."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    from fedloom.engine import available_cores

    weights = _probe_fit(0)  # a realistic global model, shipped to processes per call
    threads = max(1, available_cores() // workers)
    timings: dict[str, list[float]] = {}

    def timed(name: str, run) -> None:
        started = time.perf_counter()
        run()
        timings.setdefault(name, []).append((time.perf_counter() - started) / calls)

    context = multiprocessing.get_context("spawn")
    with ThreadPoolExecutor(workers) as threads_pool, context.Pool(
            workers, initializer=_probe_process_init, initargs=(threads,)) as process_pool:
        for _ in range(2):  # build every thread's replica; warm the processes
            list(threads_pool.map(lambda i: _probe_fit(i, weights), range(4 * workers)))
            process_pool.starmap(_probe_fit, [(i, weights) for i in range(4 * workers)])
        for _ in range(repeats):
            timed("serial", lambda: [_probe_fit(i, weights) for i in range(calls)])
            timed(f"threads_{workers}",
                  lambda: list(threads_pool.map(lambda i: _probe_fit(i, weights), range(calls))))
            timed(f"processes_{workers}", lambda: process_pool.starmap(
                _probe_fit, [(i, weights) for i in range(calls)], chunksize=1))
    return {"calls": calls, "repeats": repeats, "workers": workers,
            "tf_threads_per_process": threads,
            "seconds_per_update": {k: round(statistics.median(v), 5) for k, v in timings.items()},
            "all_seconds_per_update": {k: [round(x, 5) for x in v] for k, v in timings.items()}}


def interleaved(workers: list[int], batches: int) -> dict:
    """Milliseconds per batch of one round's client calls (the digits workload's first 10
    clients, real ClientApp) on LocalGrids with each worker count, alternating batch by
    batch in one process: the engine's part of a round, with no server work, and a
    changing machine load spread evenly over the worker counts."""
    from flwr.app import ArrayRecord, Message, RecordDict

    from fedloom.clients import get_trainer
    from fedloom.engine import LocalGrid
    from fedloom.experiment import RunSettings, builders

    settings = RunSettings.from_config(workload_config("digits", 1, 1), build_check=False)
    dataset, _ = builders.federated_data(builders.data_key(settings))
    app = builders.build_client_app(settings)
    arrays = ArrayRecord(get_trainer(builders.model_spec(settings, dataset)).initial_weights())
    config = builders.train_config(settings)
    config["server-round"] = 1
    grids = {w: LocalGrid(app, settings.num_clients, seed=0, workers=w) for w in workers}
    nodes = list(grids[workers[0]].get_node_ids())[: settings.clients_per_round]
    seconds: dict[int, list[float]] = {w: [] for w in workers}
    for batch in range(batches + 2):  # two warm-up batches build every replica
        for w, grid in grids.items():
            messages = [Message(RecordDict({"arrays": arrays, "config": config}), n, "train")
                        for n in nodes]
            started = time.perf_counter()
            replies = list(grid.send_and_receive(messages))
            if batch >= 2:
                seconds[w].append(time.perf_counter() - started)
            assert len(replies) == len(nodes) and not any(r.has_error() for r in replies)
    return {"batches": batches, "calls_per_batch": len(nodes),
            "median_ms_per_batch": {str(w): round(statistics.median(v) * 1e3, 2)
                                    for w, v in seconds.items()},
            "min_ms_per_batch": {str(w): round(min(v) * 1e3, 2) for w, v in seconds.items()}}


# ----------------------------------------------------------------------------- report
def provenance() -> dict:
    """The shared provenance record (benchmarks/provenance.py) plus TensorFlow's thread
    setting, which decides how W workers share the cores."""
    from provenance import provenance as shared  # noqa: E402  (sibling module of the benchmarks)

    return {**shared(), "FEDLOOM_TF_THREADS": os.environ.get("FEDLOOM_TF_THREADS")}


SECTIONS = ("workers", "interleaved", "probe", "clients", "shakespeare")
DEFAULT_SECTIONS = ("workers", "interleaved", "probe", "clients")
#: Top-level keys of the JSON written by the workers, interleaved and probe sections.
WORKER_KEYS = ("provenance", "load_before", "workers", "ratios", "bit_identical", "bounds", "goals",
               "interleaved", "probe", "load_after")


def bounds(runs: list[dict]) -> dict:
    """From each workload's W = 1 run (``scale_anatomy.py``): the least W-over-1 ratio of
    rounds that overlapping the client calls could give (``overlap_bound``), the least
    that packing their CPU work onto every core could give (``cpu_bound``), and where
    Ray ran, the least local-over-Ray ratio the latter allows."""
    out = {}
    for workload in WORKLOADS:
        mine = {r["workers"]: r for r in runs if r["workload"] == workload}
        anatomy = mine.get(1, {}).get("anatomy")
        if not anatomy:
            continue
        out[f"{workload}_overlap_bound"] = anatomy["overlap_bound"]
        out[f"{workload}_cpu_bound"] = anatomy["cpu_bound"]
        if RAY in mine:
            floor = mine[1]["median_round_seconds"] * max(anatomy["overlap_bound"], anatomy["cpu_bound"])
            out[f"{workload}_local_over_ray_bound"] = round(floor / mine[RAY]["median_round_seconds"], 3)
    return out


def workers_sections(args) -> dict:
    """The top-level keys the ``workers``, ``interleaved`` and ``probe`` sections write."""
    report = {"provenance": provenance(), "load_before": list(os.getloadavg())}
    if "workers" in args.sections:
        runs = []
        rounds_of = {"digits": args.digits_rounds, "fashion": args.fashion_rounds}
        for workload in args.workloads:
            rounds = rounds_of[workload]
            for workers in args.workers:
                runs.append(measure_workload(workload, workers, rounds, args.timeout))
                print(json.dumps(runs[-1]), flush=True)
        report["workers"] = runs
        report["ratios"], report["bit_identical"] = {}, {}
        for workload in WORKLOADS:
            mine = {r["workers"]: r for r in runs if r["workload"] == workload}
            serial = mine.get(1)
            if serial is None:
                continue
            local = {w: r for w, r in mine.items() if w != RAY}
            for workers, run in local.items():
                if workers != 1:
                    ratio = run["median_round_seconds"] / serial["median_round_seconds"]
                    report["ratios"][f"{workload}_w{workers}_over_w1"] = round(ratio, 3)
            if RAY in mine:  # the fastest local round against Ray's (Ray samples other nodes)
                best = min(r["median_round_seconds"] for r in local.values())
                report["ratios"][f"{workload}_local_over_ray"] = round(
                    best / mine[RAY]["median_round_seconds"], 3)
            report["bit_identical"][workload] = len(
                {r["final_weights_sha256"] for r in local.values()}) == 1
        report["bounds"] = bounds(runs)
        report["goals"] = {f"{w}_w2_over_w1 <= {g}": report["ratios"][f"{w}_w2_over_w1"] <= g
                           for w, g in GOALS.items() if f"{w}_w2_over_w1" in report["ratios"]}
        report["goals"].update({f"{w}_local_over_ray <= {g:.3f}": report["ratios"][f"{w}_local_over_ray"] <= g
                                for w, g in RAY_GOAL.items() if f"{w}_local_over_ray" in report["ratios"]})
        print(json.dumps({k: report.get(k) for k in ("ratios", "bit_identical", "bounds", "goals")}, indent=1))
    if "interleaved" in args.sections:
        report["interleaved"] = interleaved(sorted(w for w in args.workers if w != RAY), args.interleaved_batches)
        print(json.dumps(report["interleaved"]), flush=True)
    if "probe" in args.sections:
        report["probe"] = probe(max(args.workers), args.probe_calls)
        print(json.dumps(report["probe"]), flush=True)
    report["load_after"] = list(os.getloadavg())
    return report


def merged(path: Path, update: dict) -> dict:
    """The JSON at ``path`` (if any) with the keys of ``update`` replaced: a section that
    did not run keeps its earlier results."""
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(update)
    return report


def tables(path: Path) -> str:
    """The Markdown tables of the ``clients`` and ``shakespeare`` sections (as the README
    shows them, ``readme_figures.py``)."""
    import readme_figures  # sibling module of the benchmarks

    data = json.loads(path.read_text())
    return readme_figures.scale_clients(data) + "\n" + readme_figures.scale_shakespeare(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(DEFAULT_SECTIONS), choices=SECTIONS)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2],
                        help="worker counts of the workers sweep; 0 runs the workload on Flower's Ray engine")
    parser.add_argument("--workloads", nargs="+", default=sorted(WORKLOADS), choices=sorted(WORKLOADS))
    parser.add_argument("--digits-rounds", type=int, default=20)
    parser.add_argument("--fashion-rounds", type=int, default=3)
    parser.add_argument("--probe-calls", type=int, default=100)
    parser.add_argument("--interleaved-batches", type=int, default=50)
    parser.add_argument("--clients", type=lambda text: [int(n) for n in text.split(",")],
                        default=[100, 1000, 10_000], help="client counts of the clients sweep, e.g. 100,1000")
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run of the clients sweep")
    parser.add_argument("--shakespeare-rounds", type=int, default=100,
                        help="cap on the Shakespeare run's rounds (it stops at 50%% accuracy)")
    parser.add_argument("--shakespeare-overrides", nargs="*", default=[],
                        help="extra overrides of the Shakespeare run, e.g. dataset.plays=[hamlet]")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per variant")
    parser.add_argument("--shakespeare-timeout", type=float, default=4 * 3600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    parser.add_argument("--table", action="store_true", help="print the JSON's tables; run nothing")
    parser.add_argument("--child", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--child-rounds", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(tables(args.out))
        return
    if args.child:
        result = run_workload(args.child, args.workers[0], args.child_rounds)
        result["launched"] = os.environ["FEDLOOM_BENCH_LAUNCHED"]
        Path(args.out).write_text(json.dumps(result))
        return

    update = {}
    if set(args.sections) & {"workers", "interleaved", "probe"}:
        update.update(workers_sections(args))
    if "clients" in args.sections:
        import scale_clients

        update["clients"] = scale_clients.sweep(args.clients, args.clients_per_round, args.rounds,
                                                args.timeout)
    if "shakespeare" in args.sections:
        import scale_shakespeare

        update["shakespeare"] = scale_shakespeare.run(args.shakespeare_rounds, args.shakespeare_overrides,
                                                      args.shakespeare_timeout)
        print(json.dumps({k: v for k, v in update["shakespeare"].items() if k != "curve"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged(args.out, update), indent=1))
    print(tables(args.out))


if __name__ == "__main__":
    main()
