"""The launcher's process tree (fedloom.deploy.processes, read with psutil): stopping a
command stops its children and grandchildren, also those in a session of their own."""

from __future__ import annotations

import os
import sys
import time

import psutil

from fedloom.deploy.processes import Processes, descendants

# a child that starts a grandchild in a new session (as flower-superlink starts
# flower-superexec), then both wait; SIGTERM is ignored by the grandchild
# (it touches the file named by its argument once SIGTERM is ignored)
TREE = (
    "import signal, subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import pathlib, signal, sys, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path(sys.argv[1]).touch(); "
    "time.sleep(120)', sys.argv[1]], start_new_session=True)\n"
    "time.sleep(120)\n"
)


def wait_for(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stop_ends_the_whole_tree_and_kill_is_immediate(tmp_path):
    with Processes(tmp_path) as processes:
        for name in ("graceful", "crash"):
            processes.start(name, [sys.executable, "-c", TREE, str(tmp_path / f"{name}.ready")])
        trees = {}
        for name in ("graceful", "crash"):
            root = processes.process(name).pid
            wait_for(lambda: (tmp_path / f"{name}.ready").exists())
            trees[name] = [psutil.Process(p) for p in (root, *descendants(root))]
            assert os.getsid(trees[name][1].pid) != os.getsid(root)  # its own session
        started = time.monotonic()
        assert processes.stop("graceful", grace=1.0) is not None
        assert 0.9 < time.monotonic() - started < 10  # the grandchild ignored SIGTERM: SIGKILL
        processes.kill("crash")
        for handle in trees["graceful"] + trees["crash"]:
            wait_for(lambda: not handle.is_running() or handle.status() == psutil.STATUS_ZOMBIE)
        assert processes.names() == []


def test_descendants_of_a_gone_process_is_empty():
    gone = psutil.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert descendants(gone.pid) == []
