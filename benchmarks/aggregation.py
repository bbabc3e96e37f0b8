"""Aggregation speed, memory and accuracy: fedloom's WeightedAverage vs Flower's FedAvg.

Workload (issue 2): 100 client replies of 1,000,000 float32 parameters in 5 arrays,
weighted by example count. Both Flower APIs: Message API (``aggregate_train`` on
``Message`` replies) and legacy API (``aggregate_fit`` on ``FitRes`` results). Each
strategy aggregates the very same replies; we time ``repeats`` calls and keep the
median, measure the peak extra memory of one call with ``tracemalloc`` (numpy reports
its buffers to it), and compare both results with a float64 reference.

Each comparison runs twice in the same process: with one thread (fedloom's block
reductions on one thread, ``FEDLOOM_AGGREGATION_THREADS=1``, and numpy's BLAS/OpenMP
pools limited to one thread with threadpoolctl, so that neither side can use a second
core) and with the default (fedloom's ``min(4, cores)`` threads, BLAS untouched).
Flower's mean is single-threaded numpy either way, so the 1-thread ratio is the
like-for-like one and the default ratio what a user gets out of the box.

Run: ``python benchmarks/aggregation.py`` (about a minute on 2 cores; writes
``benchmarks/results/aggregation.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp.strategy import FedAvg

from fedloom.aggregation._blocks import num_threads
from fedloom.engine import LocalGrid
from fedloom.strategies import WeightedAverage, legacy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

SHAPES = [(784, 1000), (1000,), (1000, 200), (200,), (200, 74)]  # 1,000,000 parameters
MODEL_BYTES = 4 * sum(int(np.prod(s)) for s in SHAPES)
ABSURD_NORM_RATIO = None  # set by --absurd-norm-ratio: the optional distance guard


def make_updates(num_clients: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    global_weights = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    updates = [[w + 0.01 * rng.standard_normal(w.shape).astype(np.float32) for w in global_weights]
               for _ in range(num_clients)]
    num_examples = rng.integers(10, 1000, size=num_clients)
    return global_weights, updates, num_examples


def reference(updates, num_examples) -> list[np.ndarray]:
    weights = num_examples / num_examples.sum()
    return [sum(w * u[i].astype(np.float64) for u, w in zip(updates, weights)) for i in range(len(SHAPES))]


@contextlib.contextmanager
def thread_setting(setting: str) -> Iterator[int]:
    """``"1"``: fedloom and numpy's BLAS on one thread; ``"default"``: as configured.

    Yields the number of threads fedloom's block reductions use inside the block.
    """
    if setting == "default":
        yield num_threads()
        return
    from threadpoolctl import threadpool_limits

    before = os.environ.get("FEDLOOM_AGGREGATION_THREADS")
    os.environ["FEDLOOM_AGGREGATION_THREADS"] = setting  # read by every reduction call
    try:
        with threadpool_limits(limits=int(setting)):
            yield num_threads()
    finally:
        if before is None:
            del os.environ["FEDLOOM_AGGREGATION_THREADS"]
        else:
            os.environ["FEDLOOM_AGGREGATION_THREADS"] = before


def peak_extra_memory(fn) -> tuple[int, object]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, result


def measure_pair(ours, theirs, repeats: int) -> tuple[dict, dict, object, object]:
    """Time both side by side (alternating calls, so both see the same machine noise)."""
    ours(), theirs()  # warm-up
    times = {"ours": [], "theirs": []}
    for _ in range(repeats):
        for key, fn in (("ours", ours), ("theirs", theirs)):
            started = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - started)
    stats, outputs = [], []
    for key, fn in (("ours", ours), ("theirs", theirs)):
        peak, result = peak_extra_memory(fn)
        stats.append({"median_s": statistics.median(times[key]), "min_s": min(times[key]),
                      "peak_extra_bytes": peak, "peak_extra_models": peak / MODEL_BYTES})
        outputs.append(result)
    return stats[0], stats[1], outputs[0], outputs[1]


def accuracy(result: list[np.ndarray], ref: list[np.ndarray]) -> dict:
    return {
        "max_abs_diff_vs_float64": max(float(np.max(np.abs(r - f))) for r, f in zip(result, ref)),
        "max_rel_diff_vs_float64": max(float(np.max(np.abs(r - f)) / np.max(np.abs(f)))
                                       for r, f in zip(result, ref)),
    }


def message_api(global_weights, updates, num_examples, repeats):
    grid = LocalGrid(ClientApp(), len(updates))  # only for node ids and message metadata
    arrays = ArrayRecord(global_weights)
    ours = WeightedAverage(min_available_nodes=len(updates), min_train_nodes=len(updates), seed=0,
                           absurd_norm_ratio=ABSURD_NORM_RATIO)
    requests = list(ours.configure_train(1, arrays, ConfigRecord(), grid))
    replies = [
        Message(RecordDict({"arrays": ArrayRecord(u), "metrics": MetricRecord({"num-examples": int(n)})}),
                reply_to=req)
        for req, u, n in zip(requests, updates, num_examples)
    ]
    flower = FedAvg(min_available_nodes=len(updates))
    fedloom_stats, flower_stats, fedloom_out, flower_out = measure_pair(
        lambda: ours.aggregate_train(1, replies)[0], lambda: flower.aggregate_train(1, replies)[0],
        repeats)
    return fedloom_stats, flower_stats, fedloom_out.to_numpy_ndarrays(), flower_out.to_numpy_ndarrays()


def legacy_api(global_weights, updates, num_examples, repeats):
    grid = LocalGrid(ClientApp(), len(updates))
    manager = SimpleClientManager()
    proxies = [GridClientProxy(node_id, grid, grid.run.run_id) for node_id in grid.get_node_ids()]
    for proxy in proxies:
        manager.register(proxy)
    ours = legacy.WeightedAverage(min_available_clients=len(updates), min_fit_clients=len(updates),
                                  absurd_norm_ratio=ABSURD_NORM_RATIO)
    ours.configure_fit(1, ndarrays_to_parameters(global_weights), manager)

    fixed = [(p, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(u), int(n), {}))
             for p, u, n in zip(proxies, updates, num_examples)]
    flower = LegacyFedAvg(min_available_clients=len(updates))
    fedloom_stats, flower_stats, fedloom_out, flower_out = measure_pair(
        lambda: ours.aggregate_fit(1, fixed, [])[0], lambda: flower.aggregate_fit(1, fixed, [])[0],
        repeats)
    return fedloom_stats, flower_stats, parameters_to_ndarrays(fedloom_out), parameters_to_ndarrays(flower_out)


def compare_apis(global_weights, updates, num_examples, ref, repeats: int) -> dict:
    """Both Flower APIs: fedloom vs Flower on the same replies, with their errors vs ``ref``."""
    apis = {}
    for name, run in (("message", message_api), ("legacy", legacy_api)):
        ours, flower, ours_out, flower_out = run(global_weights, updates, num_examples, repeats)
        entry = {
            "fedloom": {**ours, **accuracy(ours_out, ref)},
            "flower": {**flower, **accuracy(flower_out, ref)},
            "time_ratio_fedloom_over_flower": ours["median_s"] / flower["median_s"],
            "max_abs_diff_fedloom_vs_flower": max(float(np.max(np.abs(a - b)))
                                                   for a, b in zip(ours_out, flower_out)),
        }
        entry["targets_met"] = {
            "time_at_most_half_of_flower": entry["time_ratio_fedloom_over_flower"] <= 0.5,
            "extra_memory_at_most_3_models": ours["peak_extra_models"] <= 3.0,
            "matches_float64_to_1e-6": entry["fedloom"]["max_rel_diff_vs_float64"] <= 1e-6,
        }
        apis[name] = entry
        print(f"{name:8s} fedloom {ours['median_s'] * 1e3:7.1f} ms  flower {flower['median_s'] * 1e3:7.1f} ms"
              f"  ratio {entry['time_ratio_fedloom_over_flower']:.2f}"
              f"  extra memory fedloom {ours['peak_extra_models']:.2f} models"
              f" (flower {flower['peak_extra_models']:.2f})"
              f"  max|fedloom-flower| {entry['max_abs_diff_fedloom_vs_flower']:.2e}"
              f"  rel err vs float64: fedloom {entry['fedloom']['max_rel_diff_vs_float64']:.1e}"
              f" flower {entry['flower']['max_rel_diff_vs_float64']:.1e}", flush=True)
    return apis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "aggregation.json"))
    parser.add_argument("--absurd-norm-ratio", type=float, default=None,
                        help="also screen updates by distance (the strategies' optional guard)")
    parser.add_argument("--threads", default="1,default",
                        help="comma-separated thread settings to compare: 1 and/or default")
    args = parser.parse_args()
    global ABSURD_NORM_RATIO
    ABSURD_NORM_RATIO = args.absurd_norm_ratio

    global_weights, updates, num_examples = make_updates(args.clients)
    ref = reference(updates, num_examples)
    report = {"provenance": provenance(), "clients": args.clients, "repeats": args.repeats,
              "parameters": MODEL_BYTES // 4, "model_bytes": MODEL_BYTES,
              "absurd_norm_ratio": ABSURD_NORM_RATIO, "threads": {}}
    for setting in args.threads.split(","):
        with thread_setting(setting) as threads:
            print(f"threads: {setting} (fedloom {threads})", flush=True)
            report["threads"][setting] = {
                "fedloom_aggregation_threads": threads,
                "blas_threads": "default" if setting == "default" else int(setting),
                "apis": compare_apis(global_weights, updates, num_examples, ref, args.repeats)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
