"""What `python simulate.py` prints: one line per round, a summary, each warning once;
Flower's per-round lines only with verbose=true; the full log in the run directory."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["num_rounds=3", "num_clients=20", "clients_per_round=5", "plot=false"]


def simulate(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "simulate.py"), *SMALL, *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's native start-up lines (written before Python runs)."""
    return [line for line in stderr.splitlines()
            if line and "absl::InitializeLog" not in line and "port.cc" not in line]


@pytest.mark.slow
def test_default_run_prints_one_line_per_round_and_a_summary(tmp_path):
    done = simulate(tmp_path / "quiet")
    lines = done.stdout.splitlines()
    assert len(lines) == 3 + 2, done.stdout  # rounds 0..3 and the summary
    assert [line.split()[1] for line in lines[:4]] == ["0/3", "1/3", "2/3", "3/3"]
    summary = lines[-1]
    assert summary.startswith("final accuracy ") and "(best " in summary
    assert str(tmp_path / "quiet") in summary and "plot.png" not in summary  # plot=false
    stderr = logged_lines(done.stderr)
    assert "[ROUND" not in done.stdout + done.stderr
    assert all(n == 1 for n in Counter(stderr).values()), stderr  # no line twice
    assert all("WARNING" in line or "ERROR" in line for line in stderr), stderr
    log = (tmp_path / "quiet" / "simulate.log").read_text()
    assert [f"[ROUND {r}/3]" in log for r in (1, 2, 3)] == [True] * 3  # all kept in the file
    assert log.count("[ROUND 1/3]") == 1


@pytest.mark.slow
def test_verbose_shows_flowers_round_lines_once_on_stderr(tmp_path):
    done = simulate(tmp_path / "loud", "verbose=true")
    assert len(done.stdout.splitlines()) == 5
    assert done.stderr.count("[ROUND 2/3]") == 1
