"""The comparison report: rounds to target, table, plot, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedloom.report import find_runs, rounds_to_target, write_report


def history(accuracies, bytes_per_round=1_000_000):
    return [{"round": r, "accuracy": a, "loss": 1 - a, "bytes_up": 0 if r == 0 else bytes_per_round,
             "bytes_down": 0 if r == 0 else 2 * bytes_per_round, "seconds": 0.0 if r == 0 else 0.5}
            for r, a in enumerate(accuracies)]


def test_rounds_to_target_reads_the_best_so_far_curve_with_interpolation():
    records = history([0.1, 0.5, 0.4, 0.7, 0.9])
    assert rounds_to_target(records, 0.6) == pytest.approx(2.5)   # best 0.5 at r2, 0.7 at r3
    assert rounds_to_target(records, 0.5) == pytest.approx(1.0)
    assert rounds_to_target(records, 0.95) is None
    assert rounds_to_target(history([0.8, 0.9]), 0.5) == 0.0


def test_report_writes_plot_table_and_json(tmp_path):
    for name, accuracies in {"a": [0.1, 0.5, 0.9], "b": [0.1, 0.2, 0.3]}.items():
        (tmp_path / "multirun" / name).mkdir(parents=True)
        (tmp_path / "multirun" / name / "history.json").write_text(json.dumps(history(accuracies)))
    summaries = write_report([tmp_path / "multirun"], tmp_path / "out", target=0.7)
    assert [s.label for s in summaries] == ["a", "b"]
    assert summaries[0].rounds_to_target == pytest.approx(1.5)
    assert summaries[0].megabytes_up == pytest.approx(2.0) and summaries[0].megabytes_down == pytest.approx(4.0)
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| a | 0.9000 | 0.9000 | 1.5 | 2.00 | 4.00 | 1.0 |" in table
    assert "| b | 0.3000 | 0.3000 | — |" in table
    assert (tmp_path / "out" / "report.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "report.json").read_text())["target"] == 0.7


def test_report_cli_refuses_a_directory_without_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no history.json"):
        find_runs([tmp_path])
    done = subprocess.run([sys.executable, "-m", "fedloom.report", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "no history.json" in done.stderr
