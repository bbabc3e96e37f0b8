"""Robust aggregation speed, memory and agreement: fedloom's rules vs Flower's.

Workload: K client models of 1,000,000 float32 parameters in 5 arrays (the workload of
``benchmarks/aggregation.py``), for K = 10 (a typical round of a robust hybrid) and
K = 100. Rules, each against the function Flower's strategies call
(``flwr.server.strategy.aggregate``, used by ``FedMedian``, ``FedTrimmedAvg``, ``Krum``
and ``MultiKrum`` of both Flower APIs):

- coordinate-wise median: ``coordinate_median`` vs ``aggregate_median``;
- trimmed mean, beta 0.2: ``trimmed_mean`` vs ``aggregate_trimmed_avg``;
- Multi-Krum with ``f = K // 5`` and ``m = K - f``, then the example-weighted mean of
  the selected: ``multi_krum`` + ``weighted_mean`` vs ``aggregate_krum``.

Both sides get the very same arrays; calls alternate (same machine noise), the median
of ``repeats`` is kept, the peak extra memory of one call is measured with
``tracemalloc``, and the results are compared with each other.

Run: ``python benchmarks/robust_aggregation.py`` (writes
``benchmarks/results/robust_aggregation.json``; a few minutes on 2 cores, most of it in
Flower's Krum at K = 100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregation import MODEL_BYTES, make_updates, measure_pair  # noqa: E402
from provenance import provenance  # noqa: E402

from fedloom.aggregation import coordinate_median, multi_krum, trimmed_mean, weighted_mean  # noqa: E402

BETA = 0.2


def rules(updates: list, num_examples: np.ndarray) -> dict:
    """name -> (fedloom call, Flower call), both returning a list of arrays."""
    results = list(zip(updates, num_examples.tolist()))
    byzantine = len(updates) // 5
    keep = len(updates) - byzantine

    def fedloom_krum():
        selected = multi_krum(updates, byzantine, keep)
        return weighted_mean([updates[i] for i in selected], num_examples[selected])

    return {
        "median": (lambda: coordinate_median(updates), lambda: aggregate_median(results)),
        "trimmed_mean": (lambda: trimmed_mean(updates, BETA), lambda: aggregate_trimmed_avg(results, BETA)),
        "multi_krum": (fedloom_krum, lambda: aggregate_krum(results, byzantine, keep)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,100", help="comma-separated K values")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "robust_aggregation.json"))
    args = parser.parse_args()

    report = {"provenance": provenance(), "repeats": args.repeats,
              "parameters": MODEL_BYTES // 4, "trimmed_mean_beta": BETA, "runs": {}}
    for num_clients in (int(k) for k in args.clients.split(",")):
        _, updates, num_examples = make_updates(num_clients)
        for name, (ours, theirs) in rules(updates, num_examples).items():
            mine, flower, my_out, flower_out = measure_pair(ours, theirs, args.repeats)
            scale = max(float(np.max(np.abs(f))) for f in flower_out)
            entry = {
                "fedloom": mine, "flower": flower,
                "time_ratio_fedloom_over_flower": mine["median_s"] / flower["median_s"],
                "max_rel_diff_fedloom_vs_flower": max(
                    float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(my_out, flower_out)) / scale,
                "same_dtypes": [a.dtype for a in my_out] == [u.dtype for u in updates[0]],
            }
            report["runs"][f"{name}/K={num_clients}"] = entry
            print(f"K={num_clients:<4d} {name:13s} fedloom {mine['median_s'] * 1e3:8.1f} ms"
                  f"  flower {flower['median_s'] * 1e3:8.1f} ms"
                  f"  ratio {entry['time_ratio_fedloom_over_flower']:.2f}"
                  f"  extra memory {mine['peak_extra_models']:.2f} vs {flower['peak_extra_models']:.2f} models"
                  f"  max rel diff {entry['max_rel_diff_fedloom_vs_flower']:.1e}"
                  f"  float32 kept: {entry['same_dtypes']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
