"""Cache-sized blocks across clients: the streaming core of every reducer.

A model is a list of arrays. Reducers work one array at a time, and within an array on
blocks of ``block_size`` coordinates: the block of every client is copied into one
``(num_clients, block)`` buffer (float64 by default), reduced, and written to the output.
Extra memory is one buffer (``num_clients * block_size`` values), never
``num_clients * model``; the client arrays themselves are read once and never copied whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# 100 clients x 16,384 float64 = 12.5 MiB. Measured on the 2-core CI machine
# (2026-11-25, 100 x 1M float32): 4k: 48 ms, 8k: 37 ms, 16k: 36 ms, 32k: 46 ms.
DEFAULT_BLOCK_SIZE = 16_384


def flat_views(updates: Sequence[Sequence[np.ndarray]], index: int) -> list[np.ndarray]:
    """Array ``index`` of every update as a 1-D view (a copy only if not contiguous)."""
    return [np.ravel(update[index]) for update in updates]


def iter_blocks(
    flats: Sequence[np.ndarray],
    *,
    dtype: np.dtype | type = np.float64,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, block)`` with ``block[k] = flats[k][start:stop]``.

    ``block`` has shape ``(len(flats), stop - start)`` and is a reused buffer: consume it
    before asking for the next block.
    """
    size = flats[0].size
    buffer = np.empty((len(flats), min(block_size, size)), dtype=dtype)
    for start in range(0, size, block_size):
        stop = min(start + block_size, size)
        block = buffer[:, : stop - start]
        for row, flat in zip(block, flats):
            row[...] = flat[start:stop]
        yield start, stop, block


def cast_like(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Cast float64 results back to ``like.dtype`` (integers are rounded, not truncated)."""
    if np.issubdtype(like.dtype, np.integer):
        values = np.rint(values)
    return values.astype(like.dtype, copy=False)
