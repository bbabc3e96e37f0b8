"""Where a local-engine round's time goes, for the workers goals of issue 17.

A worker count W can only shorten the part of a round spent in client calls; the rest
(sampling, decoding and aggregating the replies, counting the message bytes, the central
evaluation, the history) runs in the server's thread between the calls. This module
measures both parts inside a workers-sweep child (``scale.py --child``) and derives two
bounds from them:

- ``overlap_bound``: ``(rest + calls / cores) / round`` — the fraction of the W = 1 round
  that remains if W workers overlapped the client calls perfectly on the machine's cores
  and nothing else changed (Amdahl's law). A goal below it cannot be met by running the
  calls concurrently, whether on threads or processes.
- ``busy_cores_in_calls``: CPU seconds of the process over wall seconds during the calls,
  and ``cpu_bound``: ``(rest + calls * busy_cores_in_calls / cores) / round``, the fraction
  left if the calls' CPU work were packed onto every core with none added. Near the core
  count, the calls already keep every core busy (a compute-bound model, whose TensorFlow
  ops spread over the cores inside one call), and no engine running the same arithmetic
  on these cores can make the round much shorter. (TensorFlow's pool threads spin a
  little while they wait for work, which this counts as busy: an upper estimate.)

Instrumentation only: it wraps ``LocalGrid.send_and_receive`` and ``KerasTrainer.fit``
of the child process (which runs nothing else) and leaves their results untouched.
"""

from __future__ import annotations

import statistics
import threading
import time


class RoundAnatomy:
    """Records, for every batch of client calls the local engine delivers: its wall
    seconds, the process's CPU seconds during it, and the seconds spent inside
    ``KerasTrainer.fit`` (summed over the batch's calls, whichever thread ran them)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._fit_seconds = 0.0
        self.batches: list[dict] = []

    def _cpu(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def install(self) -> RoundAnatomy:
        """Wrap the engine's delivery and the trainer's update of this process."""
        from fedloom.clients.trainer import KerasTrainer
        from fedloom.engine import LocalGrid

        deliver, fit, anatomy = LocalGrid.send_and_receive, KerasTrainer.fit, self

        def send_and_receive(grid, messages, **kwargs):
            messages = list(messages)
            if not messages:
                return deliver(grid, messages, **kwargs)
            with anatomy._lock:
                anatomy._fit_seconds = 0.0
            cpu, started = anatomy._cpu(), time.perf_counter()
            replies = deliver(grid, messages, **kwargs)
            anatomy.batches.append({"start": started, "calls": len(messages),
                                    "seconds": time.perf_counter() - started,
                                    "cpu_seconds": anatomy._cpu() - cpu,
                                    "fit_seconds": anatomy._fit_seconds})
            return replies

        def timed_fit(trainer, *args, **kwargs):
            started = time.perf_counter()
            try:
                return fit(trainer, *args, **kwargs)
            finally:
                with anatomy._lock:
                    anatomy._fit_seconds += time.perf_counter() - started

        LocalGrid.send_and_receive = send_and_receive
        KerasTrainer.fit = timed_fit
        return self

    def summary(self, cores: int) -> dict | None:
        """Medians over the rounds after the first (which builds the replicas): the round
        (from one batch's start to the next), its client calls, the rest, the share of
        the calls inside ``fit``, the cores the calls kept busy, and the overlap bound."""
        later = self.batches[1:]
        if len(later) < 2:
            return None
        rounds = [b["start"] - a["start"] for a, b in zip(later, later[1:])]
        calls = [b["seconds"] for b in later[:-1]]
        round_s, calls_s = statistics.median(rounds), statistics.median(calls)
        rest_s = statistics.median(r - c for r, c in zip(rounds, calls))
        busy = sum(b["cpu_seconds"] for b in later[:-1]) / sum(calls)
        return {
            "rounds": len(rounds),
            "round_seconds": round(round_s, 5),
            "client_calls_seconds": round(calls_s, 5),
            "rest_seconds": round(rest_s, 5),
            "calls_share_of_round": round(calls_s / round_s, 3),
            "fit_share_of_calls": round(statistics.median(
                b["fit_seconds"] / b["seconds"] for b in later[:-1]), 3),
            "busy_cores_in_calls": round(busy, 2),
            "cores": cores,
            "overlap_bound": round((rest_s + calls_s / cores) / round_s, 3),
            "cpu_bound": round((rest_s + calls_s * min(busy, cores) / cores) / round_s, 3),
        }
