"""What a benchmark measured on: commit, versions, machine, threads and date.

Every benchmark script stores :func:`provenance` under the ``"provenance"`` key of its
JSON, so a figure can be traced to the code and machine that produced it and a stale
JSON (one that predates the code it describes) can be recognised by its commit.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flwr", "tensorflow", "tensorflow-cpu", "keras", "numpy")


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    """Installed version of each of ``PACKAGES`` (``None`` when not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def blas_threads() -> list[dict] | None:
    """numpy's BLAS/OpenMP libraries and their thread counts (threadpoolctl), or ``None``
    when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl then reports)

    return [{"api": info.get("internal_api"), "library": Path(info.get("filepath", "")).name,
             "num_threads": info.get("num_threads")} for info in threadpool_info()]


def provenance() -> dict:
    """Commit, dirty flag, package versions, CPU, threads and UTC date of this run.

    ``dirty`` is true when the work tree differs from the commit (tracked files changed
    or untracked files present): the figures then come from uncommitted code. Files under
    ``benchmarks/results/`` do not count: they are what benchmarks write, not code, and a
    sweep of several invocations would otherwise mark all but its first run dirty.
    ``fedloom_aggregation_threads`` is the thread count fedloom's block reductions use.
    """
    try:
        from fedloom.aggregation._blocks import num_threads

        aggregation_threads: int | None = num_threads()
    except ImportError:  # fedloom not importable from this process
        aggregation_threads = None
    status = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), **package_versions()},
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "fedloom_aggregation_threads": aggregation_threads,
        "blas_threads": blas_threads(),
        "thread_env": {name: os.environ.get(name) for name in (
            "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
            "FEDLOOM_AGGREGATION_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(provenance(), indent=2))
