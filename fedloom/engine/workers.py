"""The worker threads of the local engine: a round's ``ClientApp`` calls on W threads.

Why threads, not processes: a client call is a TensorFlow graph call (which releases
the GIL while it computes) wrapped in a little Python (message copying, mods, record
conversion). Threads share the process's data, partitions and node ``Context``s, need
no pickling of weights or messages, and share TensorFlow's process-wide intra-op and
inter-op thread pools, so W workers never run more TensorFlow threads than one
process would (the pools stay sized to the cores, or to ``FEDLOOM_TF_THREADS``).
Worker processes would each need their own TensorFlow runtime (hundreds of MB),
a copy of the data, weights shipped both ways per call, and their own pool sizes
(``cores // W`` each) to avoid oversubscription. ``benchmarks/scale.py`` measures both.

The pool sizes are the same for every W, and that is part of what keeps results
bit-identical across W: a convolutional model's updates depend on the intra-op thread
count (oneDNN and Eigen split their reductions by it), so sizing the pools by W (e.g.
``cores // W`` threads per worker) would change the weights with W. The price: on a
compute-bound model, where one client's ops already keep the pool busy, W concurrent
graph calls compete for the same cores and gain nothing (``benchmarks/scale.py``
measures it); there ``FEDLOOM_TF_THREADS=1`` with W = cores (one core per client, as one
process per core would be) is the configuration to compare, bit-identical across W too
(but not to a run with TensorFlow's default pools).

Each worker thread trains on its own model replica: :func:`fedloom.clients.get_trainer`
keeps one trainer per thread. A replica holds no client state between calls (each call
loads the weights it is sent), so which thread serves which client does not change
any result.

Pools are process-wide, one per worker count, and live as long as the process (like
the trainer cache): their threads, and so the replicas they built, serve every later
grid with the same W instead of rebuilding models for each experiment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fedloom.errors import ConfigError

__all__ = ["available_cores", "resolve_workers", "run_chains", "shutdown_worker_pools"]

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity (macOS)
        return max(1, os.cpu_count() or 1)


def resolve_workers(value: Any) -> int:
    """``engine.workers`` as a worker count: ``None`` or ``"auto"`` means
    :func:`available_cores`; otherwise a positive integer.

    Raises:
        ConfigError: anything else.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return available_cores()
    try:
        workers = int(value)
        ok = not isinstance(value, bool) and workers == value and workers >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"engine.workers must be a positive integer or null (= the {available_cores()} "
            f"available cores); received engine.workers={value!r}. Use e.g. engine.workers=1 "
            "for the serial engine."
        )
    return workers


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix=f"fedloom-worker-{workers}"
            )
        return pool


def run_chains(
    chains: Sequence[Sequence[T]], call: Callable[[T], R], workers: int
) -> list[list[R]]:
    """``[[call(item) for item in chain] for chain in chains]``, chains on ``workers`` threads.

    The items of one chain run one after another, in order, on one thread (the local
    engine makes one chain per node, so a node's messages never run concurrently and
    its ``Context`` is updated in message order); different chains run concurrently.
    Results come back in the order of ``chains``, whatever order they finished in.
    An exception raised by ``call`` is raised here (after every chain has finished).
    """
    if workers < 1:
        raise ValueError(f"run_chains needs workers >= 1; got {workers}.")
    pool = _pool(workers)
    futures = [pool.submit(lambda chain=chain: [call(item) for item in chain]) for chain in chains]
    results, error = [], None
    try:
        for future in futures:  # wait for all, so no call outlives the round
            try:
                results.append(future.result())
            except Exception as ex:  # re-raised below, after the others
                error = error or ex
                results.append([])
    except BaseException:  # e.g. KeyboardInterrupt while waiting: start no more chains
        for future in futures:
            future.cancel()
        raise
    if error is not None:
        raise error
    return results


def shutdown_worker_pools() -> None:
    """Stop every worker pool's threads (waiting for running calls) and forget the pools;
    the next parallel round starts fresh threads (which build fresh model replicas)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True)
