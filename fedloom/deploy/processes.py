"""Start local processes and always stop them, with every process they started.

Flower's deployment commands start process trees: ``flower-superlink`` launches a
``flower-superexec`` in a session of its own, which launches ``flwr-serverapp``;
``flower-supernode`` launches a ``flower-superexec`` that launches one ``flwr-clientapp``
per message. Signalling the command alone can leave the rest running, holding ports
and memory. :class:`Processes` therefore

- starts every command in a new session (its own process group, out of reach of the
  terminal's Ctrl-C, so shutdown happens in order, here);
- stops a command by first listing its whole tree (children, grandchildren, also those
  in other sessions), then sending SIGTERM to the tree and its process groups, and
  SIGKILL to whatever is left after a grace period;
- stops everything it started when leaving its ``with`` block, whatever the reason
  (exception, ``KeyboardInterrupt``, ``SystemExit`` from :func:`exit_on_signals`), and
  from an ``atexit`` hook as a last resort.

Each command's stdout and stderr go to ``<log_dir>/<name>.log``. The process tree is
read with ``psutil`` (portable, and its process handles refuse to signal a process id
that has since been reused by another process).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

__all__ = ["Processes", "descendants", "exit_on_signals"]


class Processes:
    """Named local processes, each with its log file; a context manager that stops all.

    Args:
        log_dir: where ``<name>.log`` files go (created).
        env: environment of every command (default: this process's), updated per
            command by :meth:`start`'s ``env``.
    """

    def __init__(self, log_dir: str | Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self._running: dict[str, subprocess.Popen] = {}
        atexit.register(self.stop_all)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen:
        """Start ``argv`` in a new session, output to ``<log_dir>/<name>.log``."""
        if name in self._running and self._running[name].poll() is None:
            raise ValueError(f"a process named {name!r} is already running; stop it first.")
        with open(self.log_path(name), "ab") as log:
            process = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})}, cwd=cwd, start_new_session=True,
            )
        self._running[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_text(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.is_file() else ""

    def process(self, name: str) -> subprocess.Popen:
        return self._running[name]

    def names(self) -> list[str]:
        """Processes started and not yet stopped (they may have exited on their own)."""
        return list(self._running)

    def alive(self, name: str) -> bool:
        return name in self._running and self._running[name].poll() is None

    def stop(self, name: str, grace: float = 10.0) -> int | None:
        """SIGTERM ``name``'s process tree, SIGKILL it after ``grace`` s; return its exit code."""
        process = self._running.pop(name, None)
        if process is None:
            return None
        _stop_tree(process, grace)
        return process.returncode

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s whole process tree at once, as a crash or power cut would."""
        process = self._running.pop(name, None)
        if process is not None:
            _stop_tree(process, grace=0.0)

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every process still running: all are signalled at once and share one
        ``grace`` period (stopping them one by one could take ``grace`` seconds each)."""
        processes = [self._running.pop(name) for name in reversed(list(self._running))]
        _stop_trees(processes, grace)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first); empty when ``pid`` is gone."""
    return [child.pid for child in _descendant_handles(pid)]


def _descendant_handles(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:  # gone, or not ours to read
        return []


@contextmanager
def exit_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Turn ``signals`` into ``SystemExit`` inside the block, so ``finally`` clauses and
    ``with`` blocks run (Python's default for SIGTERM is to die without cleaning up)."""

    def leave(signum, _frame):
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, leave) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_tree(process: subprocess.Popen, grace: float) -> None:
    """Stop ``process`` and every descendant; SIGKILL what outlives ``grace`` seconds."""
    _stop_trees([process], grace)


def _stop_trees(processes: Sequence[subprocess.Popen], grace: float) -> None:
    """Stop every process of ``processes`` and their descendants together: SIGTERM (or
    SIGKILL when ``grace`` is 0) to all, then SIGKILL to what outlives ``grace`` seconds."""
    own_group = os.getpgrp()
    below = [handle for process in processes for handle in _descendant_handles(process.pid)]
    groups = set()
    for pid in [process.pid for process in processes] + [handle.pid for handle in below]:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    groups.discard(own_group)
    first = signal.SIGTERM if grace > 0 else signal.SIGKILL
    _signal_all(processes, below, groups, first)
    deadline = time.monotonic() + grace

    def any_alive() -> bool:
        return any(p.poll() is None for p in processes) or any(_alive(h) for h in below)

    while grace > 0 and time.monotonic() < deadline and any_alive():
        time.sleep(0.1)
    if grace > 0:
        _signal_all([p for p in processes if p.poll() is None], [h for h in below if _alive(h)],
                    groups, signal.SIGKILL)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            print(f"warning: process {process.pid} survived SIGKILL", file=sys.stderr)


def _signal_all(roots: Sequence[subprocess.Popen], below: Sequence[psutil.Process],
                groups: set[int], signum: int) -> None:
    for group in groups:
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):
            pass
    for root in roots:
        root.send_signal(signum)  # a no-op once it has been reaped
    for handle in below:
        try:
            handle.send_signal(signum)  # refuses a pid reused by another process
        except psutil.Error:
            pass


def _alive(handle: psutil.Process) -> bool:
    """Whether the process still runs (a zombie waiting to be reaped does not count)."""
    try:
        return handle.is_running() and handle.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
