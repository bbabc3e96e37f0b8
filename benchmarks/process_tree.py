"""Run a benchmark child process and sample the memory of its whole process tree.

Shared by the benchmarks that compare engines (``simulation.py``, ``deployment.py``):
memory is the peak, over samples, of the summed RSS of the child and all its
descendants (Ray's raylet and workers, Flower's SuperLink/SuperNodes/ClientApps).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil


def tree_rss(process: psutil.Process) -> int:
    """Summed RSS (bytes) of ``process`` and its descendants now; 0 if it has ended."""
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in tree:
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # a child ended between listing and reading
            pass
    return total


def run_sampled(script: str, args: list[str], env: dict[str, str], timeout: float,
                interval: float = 0.1) -> tuple[float, int]:
    """Run ``python script *args`` in a new session; return (wall seconds, peak tree RSS).

    The child and everything it started are killed if it outlives ``timeout``.

    Raises:
        RuntimeError: the child failed (its last stderr lines are in the message).
    """
    started = time.time()
    proc = subprocess.Popen([sys.executable, script, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak, process, stop = 0, psutil.Process(proc.pid), threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(process))
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
    return time.time() - started, peak
