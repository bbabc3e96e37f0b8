"""Run a benchmark child process and sample the memory of its whole process tree.

Shared by the benchmarks that compare engines (``simulation.py``, ``deployment.py``).
Memory is the peak, over samples, of the summed PSS (proportional set size) of the
child and all its descendants (Ray's raylet and workers, Flower's SuperLink/SuperNodes/
ClientApps): a page shared by n processes counts 1/n in each, so shared libraries
(TensorFlow's alone are hundreds of MB) count once for the tree, as they do in the
machine's memory. The peak summed RSS is kept beside it: it counts a shared page once
per process and so overstates multi-process engines against a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class TreeMemory:
    """Memory of a process tree in bytes: ``pss`` summed PSS, ``rss`` summed RSS.

    ``pss`` is ``None`` where the OS does not report PSS (it needs Linux's
    ``/proc/<pid>/smaps_rollup``, readable for the processes we started).
    """

    pss: int | None
    rss: int


def tree_memory(process: psutil.Process) -> TreeMemory:
    """Summed PSS and RSS (bytes) of ``process`` and its descendants now; 0 if it has ended."""
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.Error:
        return TreeMemory(0, 0)
    pss: int | None = 0
    rss = 0
    for proc in tree:
        try:
            info = proc.memory_full_info()
        except psutil.AccessDenied:
            pss = None  # PSS unreadable: report RSS only rather than a partial sum
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                pass
            continue
        except psutil.Error:  # a child ended between listing and reading
            continue
        rss += info.rss
        if pss is not None:
            value = getattr(info, "pss", None)
            pss = None if value is None else pss + value
    return TreeMemory(pss, rss)


@dataclass(frozen=True)
class SampledRun:
    """A finished child: wall seconds and the peaks of its tree's summed PSS and RSS (bytes)."""

    wall_s: float
    peak_pss: int | None
    peak_rss: int

    def memory(self) -> dict:
        """The JSON fields every benchmark writes for a run's memory."""
        return {"peak_tree_pss_bytes": self.peak_pss, "peak_tree_rss_bytes": self.peak_rss}


def run_sampled(script: str, args: list[str], env: dict[str, str], timeout: float,
                interval: float = 0.1) -> SampledRun:
    """Run ``python script *args`` in a new session; sample its tree's memory every ``interval`` s.

    The child and everything it started are killed if it outlives ``timeout``.

    Raises:
        RuntimeError: the child failed (its last stderr lines are in the message).
    """
    started = time.time()
    proc = subprocess.Popen([sys.executable, script, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    process, stop = psutil.Process(proc.pid), threading.Event()
    peak_pss: int | None = 0
    peak_rss = 0

    def sample() -> None:
        nonlocal peak_pss, peak_rss
        while not stop.is_set():
            now = tree_memory(process)
            peak_rss = max(peak_rss, now.rss)
            peak_pss = None if peak_pss is None or now.pss is None else max(peak_pss, now.pss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        stop.set()
        sampler.join()
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{stderr[-3000:]}")
    return SampledRun(time.time() - started, peak_pss, peak_rss)
