"""Scale benchmark, section ``shakespeare``: FedAvg on LEAF's Shakespeare with natural
clients, rounds and wall time to 40% and 50% next-character accuracy (issue 17).

``dataset=shakespeare partition=natural model=char_lstm`` (one client per speaking role:
1,234 with LEAF's ``min_samples=64``), 10 clients per round, E=1, B=10, SGD step 0.8
(LEAF's Shakespeare setting, Caldas et al. 2018), FedAvg (``strategy=fedavg``), the
server's test set subsampled to ``dataset.limit_test`` (20,000) examples; one fresh
process (``scale_clients.run_child``), the partition cache off. The run stops when the
highest target is reached (``early_stop.target_accuracy``) or after ``max_rounds``.

Rounds to a target are read off the best-so-far accuracy curve, interpolated linearly
between rounds (``fedloom.report.rounds_to_target``, as McMahan et al. 2017); the wall
time to a target is the rounds' cumulative seconds interpolated at that round (start-up
not included; it is reported apart).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ["dataset=shakespeare", "partition=natural", "model=char_lstm", "strategy=fedavg",
            "clients_per_round=10", "local_epochs=1", "batch_size=10", "learning_rate=0.8",
            "plot=false"]
TARGETS = (0.4, 0.5)


def seconds_at(records: list, fractional_round: float) -> float:
    """The rounds' cumulative wall seconds at ``fractional_round``, interpolated linearly
    (``records``: ``[round, accuracy, seconds, ...]`` per round, round 0 first)."""
    cumulative, total = {}, 0.0
    for record in records:
        total += record[2]
        cumulative[record[0]] = total
    low = math.floor(fractional_round)
    high = min(math.ceil(fractional_round), max(cumulative))
    if low == high:
        return cumulative[low]
    return cumulative[low] + (fractional_round - low) * (cumulative[high] - cumulative[low])


def to_targets(records: list, targets=TARGETS) -> dict:
    """Per target: rounds (interpolated) and the rounds' wall seconds to reach it, or
    ``None`` for both when the run never reached it."""
    sys.path.insert(0, str(ROOT))
    from fedloom.report import rounds_to_target

    curve = [{"round": r[0], "accuracy": r[1]} for r in records]
    out = {}
    for target in targets:
        rounds = rounds_to_target(curve, target)
        out[f"{target:g}"] = {"rounds": None if rounds is None else round(rounds, 2),
                              "seconds": None if rounds is None else round(seconds_at(records, rounds), 1)}
    return out


def run(max_rounds: int, extra: list[str], timeout: float, targets=TARGETS) -> dict:
    """The ``shakespeare`` section: one run of :data:`WORKLOAD` (plus ``extra`` overrides)."""
    from provenance import provenance  # sibling modules of the benchmarks
    from scale_clients import run_child, startup_phases

    overrides = [*WORKLOAD, f"num_rounds={max_rounds}",
                 f"early_stop.target_accuracy={max(targets)}", *extra]
    section = {"provenance": provenance(), "load_before": list(os.getloadavg()),
               "overrides": overrides, "max_rounds": max_rounds}
    result, memory = run_child(overrides, timeout)
    records, stamps = result["records"], result["stamps"]
    later = [r[2] for r in records if r[0] >= 2] or [r[2] for r in records if r[0] >= 1]
    section.update({
        "num_clients": result["num_clients"],
        "clients_per_round": result["clients_per_round"],
        "workers": result.get("workers"),
        "examples_per_client": result["examples_per_client"],
        "targets": to_targets(records, targets),
        "rounds_run": records[-1][0],
        "final_accuracy": records[-1][1],
        "best_accuracy": max(r[1] for r in records),
        "startup_seconds": round(records[0][3] - stamps["launched"], 2),
        "phases": startup_phases(stamps, records[0][3]),
        "median_round_seconds": round(statistics.median(later), 3) if later else None,
        "training_seconds": round(sum(r[2] for r in records), 1),
        "curve": [[r[0], round(r[1], 4), round(r[2], 3)] for r in records],
        **memory,
        "load_after": list(os.getloadavg()),
    })
    return section
