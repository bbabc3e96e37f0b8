"""Cache-sized blocks across clients: the streaming core of every reducer.

A model is a list of arrays. Reducers work one array at a time, and within an array on
blocks of coordinates: the block of every client is copied into one
``(num_clients, block)`` buffer, reduced, and written to the output. The buffer holds
about ``BLOCK_BUDGET_BYTES`` (4 MiB, one 1M-parameter float32 model), so extra memory
stays near one model whatever the number of clients; the client arrays are read once
and never copied whole.

A block has at least ``MIN_BLOCK`` coordinates while that fits in ``MAX_BUFFER_BYTES``
(up to 2,048 float64 rows): fewer, longer rows keep the per-row Python overhead small.
With more clients the block shrinks below ``MIN_BLOCK`` so the buffer stays within
``MAX_BUFFER_BYTES`` (16 MiB; at least one column, ``num_clients`` values): 10,000
clients would otherwise need 10,000 x 1,024 x 8 bytes = 82 MB. Many very short blocks
cost more time per value; that is the price of bounded memory at that scale.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_BUDGET_BYTES = 4 * 1024 * 1024
MAX_BUFFER_BYTES = 16 * 1024 * 1024
MIN_BLOCK, MAX_BLOCK = 1024, 65536


def block_size_for(num_clients: int, dtype: np.dtype | type) -> int:
    """Coordinates per block so that ``num_clients`` rows fit the buffer budget.

    ``BLOCK_BUDGET_BYTES`` per buffer, raised to ``MIN_BLOCK`` coordinates as long as
    that stays within ``MAX_BUFFER_BYTES``; never above ``MAX_BLOCK``, never below 1.
    """
    per_column = max(1, num_clients) * np.dtype(dtype).itemsize
    block = BLOCK_BUDGET_BYTES // per_column
    if block < MIN_BLOCK:
        block = max(1, min(MIN_BLOCK, MAX_BUFFER_BYTES // per_column))
    return int(min(block, MAX_BLOCK))


def flat_views(updates: Sequence[Sequence[np.ndarray]], index: int) -> list[np.ndarray]:
    """Array ``index`` of every update as a 1-D view (a copy only if not contiguous)."""
    return [np.ravel(update[index]) for update in updates]


def iter_blocks(
    flats: Sequence[np.ndarray],
    *,
    dtype: np.dtype | type = np.float64,
    block_size: int | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, block)`` with ``block[k] = flats[k][start:stop]`` cast to ``dtype``.

    ``block`` has shape ``(len(flats), stop - start)`` and is a reused buffer: consume it
    before asking for the next block.
    """
    size = flats[0].size
    block_size = block_size or block_size_for(len(flats), dtype)
    buffer = np.empty((len(flats), min(block_size, size)), dtype=dtype)
    for start in range(0, size, block_size):
        stop = min(start + block_size, size)
        block = buffer[:, : stop - start]
        for row, flat in zip(block, flats):
            row[...] = flat[start:stop]
        yield start, stop, block


def reduce_blocks(
    updates: Sequence[Sequence[np.ndarray]], reduce_block: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray]:
    """Apply a per-coordinate reduction across clients, block by block, to every array.

    ``reduce_block`` gets a float64 ``(num_clients, block)`` buffer (it may reorder it
    in place) and returns ``(block,)`` float64 values; they are written straight into
    the result in the first update's dtypes, so the only memory besides the result is
    the buffer.
    """
    result = []
    for index, like in enumerate(updates[0]):
        out = np.empty(like.size, dtype=like.dtype)
        for start, stop, block in iter_blocks(flat_views(updates, index)):
            out[start:stop] = cast_like(reduce_block(block), like)
        result.append(out.reshape(like.shape))
    return result


def cast_like(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Cast float64 results back to ``like.dtype`` (integers are rounded, not truncated)."""
    if np.issubdtype(like.dtype, np.integer):
        values = np.rint(values)
    return values.astype(like.dtype, copy=False)


# ----------------------------------------------------------------------------- threads
# numpy releases the GIL inside its array loops, so blocks of one array can be reduced
# by several threads at once (``benchmarks/aggregation.py`` compares 1 thread with the
# default).
STREAM_BLOCK = 65_536  # coordinates per block for streaming reducers (256 KiB of float32)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def num_threads() -> int:
    """Threads for block reductions: ``FEDLOOM_AGGREGATION_THREADS`` or min(4, cores)."""
    configured = os.environ.get("FEDLOOM_AGGREGATION_THREADS")
    return max(1, int(configured)) if configured else min(4, os.cpu_count() or 1)


def for_each_block(
    jobs: Sequence[tuple[int, Callable[[int, int], None]]], block: int = STREAM_BLOCK
) -> None:
    """For each ``(size, fn)`` in ``jobs``, call ``fn(start, stop)`` on every block of
    ``range(size)``; all blocks of all jobs share one thread pool. ``fn`` must only
    write its own block."""
    tasks = [(fn, start, min(start + block, size))
             for size, fn in jobs for start in range(0, size, block)]
    threads = min(num_threads(), len(tasks))
    if threads <= 1:
        for fn, start, stop in tasks:
            fn(start, stop)
        return
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < threads:
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fedloom-agg")
    # largest blocks first keeps the threads evenly busy
    tasks.sort(key=lambda task: task[2] - task[1], reverse=True)
    for future in [_POOL.submit(fn, start, stop) for fn, start, stop in tasks]:
        future.result()
