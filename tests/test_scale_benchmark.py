"""``benchmarks/scale.py``'s new sections: rounds and seconds to a target, the goals of
the client-count sweep, sections that keep each other's results, and their README tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scale  # noqa: E402
import scale_clients  # noqa: E402
import scale_figures  # noqa: E402
import scale_shakespeare  # noqa: E402

MB = 2**20


def test_rounds_and_seconds_to_a_target_follow_the_best_so_far_curve():
    # [round, accuracy, seconds of the round]; round 3 dips below round 2's best.
    records = [[0, 0.01, 0.0], [1, 0.30, 10.0], [2, 0.45, 20.0], [3, 0.35, 10.0], [4, 0.55, 40.0]]
    reached = scale_shakespeare.to_targets(records, targets=(0.4, 0.5, 0.6))
    # 0.4: between round 1 (0.30) and round 2 (0.45): 1 + 0.1/0.15 rounds.
    assert reached["0.4"]["rounds"] == pytest.approx(1 + 0.1 / 0.15, abs=0.01)
    assert reached["0.4"]["seconds"] == pytest.approx(10 + (0.1 / 0.15) * 20, abs=0.1)
    # 0.5: the best stays 0.45 through round 3, then 0.55 in round 4: 3.5 rounds.
    assert reached["0.5"] == {"rounds": 3.5, "seconds": pytest.approx(40 + 0.5 * 40, abs=0.1)}
    assert reached["0.6"] == {"rounds": None, "seconds": None}


def _run(num_clients: int, round_seconds: float, pss_mb: float | None, startup: float = 20.0) -> dict:
    return {"num_clients": num_clients, "median_round_seconds": round_seconds, "startup_seconds": startup,
            "peak_tree_pss_bytes": None if pss_mb is None else int(pss_mb * MB)}


def test_client_sweep_goals_compare_each_size_with_the_smallest():
    checks = scale_clients.goals([_run(100, 2.0, 800), _run(1000, 2.1, 900), _run(10_000, 2.5, 1100, 35.0)])
    assert checks["round_1000_over_100"] == 1.05 and checks["round_1000_at_most_10%_slower"]
    assert not checks["round_10000_at_most_10%_slower"]
    assert checks["pss_1000_within_200mb"] and not checks["pss_10000_within_200mb"]
    assert checks["pss_10000_minus_100_mb"] == 300.0
    assert not checks["startup_10000_under_30s"]
    faster = scale_clients.goals([_run(100, 2.0, None), _run(10_000, 0.5, None, 12.0)])
    assert faster["round_10000_at_most_10%_slower"] and faster["startup_10000_under_30s"]
    assert "pss_10000_within_200mb" not in faster  # no PSS: no memory verdict


def test_a_section_keeps_the_other_sections_of_the_json(tmp_path):
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"provenance": {"commit": "old"}, "workers": [1], "shakespeare": {"x": 1}}))
    report = scale.merged(path, {"clients": {"runs": []}})
    assert report == {"provenance": {"commit": "old"}, "workers": [1], "shakespeare": {"x": 1},
                      "clients": {"runs": []}}
    assert scale.merged(tmp_path / "none.json", {"clients": {}}) == {"clients": {}}


def test_tables_render_measured_sections_and_say_how_to_measure_missing_ones():
    provenance = {"commit": "abcdef1234567", "dirty": False, "date": "2026-12-01T06:00:00+00:00",
                  "versions": {"flwr": "1.42.0"}, "cpu": "cpu", "cpu_count": 2, "load_average_1min": 0.5}
    run = {"num_clients": 10_000, "examples_per_client": {"mean": 5.4}, "startup_seconds": 21.5,
           "phases": {"dataset": 1.0, "partition": 3.25}, "median_round_seconds": 1.234,
           "round_1_seconds": 2.0, "peak_tree_pss_bytes": 2**30, "peak_tree_rss_bytes": 2**31}
    data = {"clients": {"provenance": provenance, "workload": {"clients_per_round": 100, "rounds": 3},
                        "runs": [run]}}
    text = scale_figures.scale_clients(data)
    assert "| 10,000 | 5.4 | 21.5 s | 1.0 s | 3.2 s | 1.23 s | 2.00 s | 1.00 GiB (RSS sum 2.00) |" in text
    assert "at commit abcdef1234" in text
    assert "Not measured yet" in scale_figures.scale_shakespeare(data)
    data["shakespeare"] = {"provenance": provenance, "overrides": ["dataset=shakespeare", "plot=false"],
                           "num_clients": 1234, "clients_per_round": 10, "rounds_run": 40,
                           "best_accuracy": 0.47, "median_round_seconds": 20.0, "startup_seconds": 30.0,
                           "peak_tree_pss_bytes": 2**30, "peak_tree_rss_bytes": 2**30,
                           "targets": {"0.4": {"rounds": 12.5, "seconds": 300.0},
                                       "0.5": {"rounds": None, "seconds": None}}}
    text = scale_figures.scale_shakespeare(data)
    assert "| 40% | 12.5 | 5.0 min |" in text and "| 50% | not reached in 40 rounds | — |" in text
    assert "`dataset=shakespeare`: 1,234 natural clients" in text


def _workers_run(workload: str, workers: int, seconds: float, digest: str = "ab" * 32) -> dict:
    return {"workload": workload, "workers": workers, "median_round_seconds": seconds,
            "startup_seconds": 5.0, "peak_tree_pss_bytes": 2**30, "peak_tree_rss_bytes": 2**30,
            "final_accuracy": 0.8, "final_weights_sha256": digest}


def test_workers_table_shows_each_engine_the_ratios_and_which_goals_hold():
    provenance = {"commit": "abcdef1234567", "dirty": False, "date": "2026-12-01T06:00:00+00:00",
                  "versions": {"flwr": "1.42.0"}, "cpu": "cpu", "cpu_count": 2, "load_average_1min": 0.1}
    data = {"provenance": provenance,
            "workers": [_workers_run("fashion", 1, 20.0), _workers_run("fashion", 2, 19.0),
                        _workers_run("fashion", scale.RAY, 50.0, "cd" * 32)],
            "ratios": {"fashion_w2_over_w1": 0.95, "fashion_local_over_ray": 0.38},
            "goals": {"fashion_w2_over_w1 <= 1.0": True, "fashion_local_over_ray <= 0.333": False},
            "bit_identical": {"fashion": True}}
    text = scale_figures.scale_workers(data)
    assert "| Ray (`engine=flower`) | 50.000 s |" in text and "| local, W = 2 | 19.000 s |" in text
    assert "fashion_local_over_ray <= 0.333: not met" in text and "fashion_w2_over_w1 <= 1.0: met" in text
    assert "bit-identical across worker counts: fashion yes" in text
    assert "Not measured yet" in scale_figures.scale_workers({})


def test_round_anatomy_splits_rounds_into_client_calls_and_the_rest():
    import scale_anatomy

    anatomy = scale_anatomy.RoundAnatomy()
    # Round 1 (replicas built) is dropped; then rounds of 10 s: 6 s of calls that keep
    # 1.5 cores busy (9 CPU s), 4.5 s of them inside fit, 4 s of server work.
    anatomy.batches = [{"start": 0.0, "calls": 10, "seconds": 9.0, "cpu_seconds": 9.0, "fit_seconds": 8.0}]
    anatomy.batches += [{"start": 20.0 + 10 * i, "calls": 10, "seconds": 6.0, "cpu_seconds": 9.0,
                         "fit_seconds": 4.5} for i in range(4)]
    summary = anatomy.summary(cores=2)
    assert summary["round_seconds"] == 10.0 and summary["client_calls_seconds"] == 6.0
    assert summary["rest_seconds"] == 4.0 and summary["calls_share_of_round"] == 0.6
    assert summary["fit_share_of_calls"] == 0.75 and summary["busy_cores_in_calls"] == 1.5
    assert summary["overlap_bound"] == 0.7  # (4 + 6 / 2) / 10: perfect overlap on 2 cores
    assert summary["cpu_bound"] == 0.85  # (4 + 6 * 1.5 / 2) / 10: the CPU work packed
    anatomy.batches = anatomy.batches[:2]
    assert anatomy.summary(cores=2) is None  # too few rounds to say anything


def test_workers_bounds_come_from_the_serial_run_and_ray_round():
    anatomy = {"overlap_bound": 0.7, "cpu_bound": 0.9}
    runs = [{"workload": "fashion", "workers": 1, "median_round_seconds": 20.0, "anatomy": anatomy},
            {"workload": "fashion", "workers": 2, "median_round_seconds": 19.0, "anatomy": anatomy},
            {"workload": "fashion", "workers": scale.RAY, "median_round_seconds": 24.0},
            {"workload": "digits", "workers": 2, "median_round_seconds": 1.0, "anatomy": anatomy}]
    # digits has no W = 1 run: no bound; fashion's floor is 20 s * 0.9 = 18 s, 0.75 of Ray's.
    assert scale.bounds(runs) == {"fashion_overlap_bound": 0.7, "fashion_cpu_bound": 0.9,
                                  "fashion_local_over_ray_bound": 0.75}
