"""``benchmarks/process_tree.py``: memory of a whole process tree, as PSS and RSS sums."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from process_tree import run_sampled, tree_memory  # noqa: E402

MIB = 2**20
# A parent that starts a child; the child touches 200 MiB of its own and both wait.
PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import time; block = bytearray(200 * 2**20); block[::4096] = b\"x\" * len(block[::4096]); "
    "print(\"ready\", flush=True); time.sleep(60)'], stdout=subprocess.PIPE, text=True)\n"
    "print(child.stdout.readline().strip(), flush=True)\n"
    "time.sleep(60)\n"
)


def test_tree_memory_counts_the_descendants_memory_once_in_pss():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        process = psutil.Process(parent.pid)
        assert len(process.children(recursive=True)) == 1
        memory = tree_memory(process)
        own = process.memory_full_info()
        assert memory.rss >= own.rss + 200 * MIB  # the child's 200 MiB are in the sum
        assert memory.pss is not None and memory.pss >= 200 * MIB
        # shared pages (the Python binary and libraries of two processes) count once in PSS
        assert memory.pss < memory.rss
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait(timeout=10)


def test_run_sampled_reports_the_peak_and_raises_with_the_childs_error(tmp_path):
    script = tmp_path / "grow.py"
    script.write_text("import sys, time\nblock = bytearray(100 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\n"
                      "time.sleep(1.0)\nsys.exit(int(sys.argv[1]))\n")
    run = run_sampled(str(script), ["0"], {}, timeout=60, interval=0.05)
    assert run.peak_rss >= 100 * MIB and run.peak_pss >= 90 * MIB
    assert run.memory() == {"peak_tree_pss_bytes": run.peak_pss, "peak_tree_rss_bytes": run.peak_rss}
    started = time.time()
    with pytest.raises(RuntimeError, match="grow.py 3 failed"):
        run_sampled(str(script), ["3"], {}, timeout=60)
    assert time.time() - started < 30
