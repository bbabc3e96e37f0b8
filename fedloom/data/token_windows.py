"""Fixed-length windows of a token stream, built only when indexed.

A next-token dataset holds every window of ``length`` tokens before each target token.
Stored as windows, the 4.5 million examples of LEAF's Shakespeare would take 360 MB as
uint8 (1.4 GB as float32); stored as one stream plus one end position per window they
take about 25 MB, and indexing copies out only the rows asked for (one client's data).
"""

from __future__ import annotations

import numpy as np

from fedloom.errors import DataError

__all__ = ["TokenWindows"]


class TokenWindows:
    """A read-only 2-D array view: row ``i`` is ``stream[ends[i] - length : ends[i]]``.

    Behaves like a numpy array of shape ``(len(ends), length)`` and the stream's dtype
    for what datasets and clients do with features: ``len``, ``shape``, ``dtype``,
    ``ndim``, indexing with an int (one row), a slice, an integer or boolean array (rows
    copied into a new ``np.ndarray``) and ``np.asarray`` (every row copied).

    Args:
      stream: 1-D integer array of token ids.
      ends: 1-D integer array, ``length <= ends[i] <= len(stream)``: row ``i`` ends just
        before position ``ends[i]`` (the row's target, when there is one, is
        ``stream[ends[i]]``).
      length: tokens per row, >= 1.
    """

    __array_priority__ = 10

    def __init__(self, stream: np.ndarray, ends: np.ndarray, length: int) -> None:
        stream = np.asarray(stream)
        ends = np.asarray(ends)
        if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
            raise DataError(
                f"TokenWindows needs a 1-D integer token stream; got dtype {stream.dtype}, "
                f"shape {stream.shape}."
            )
        if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
            raise DataError(
                f"TokenWindows needs 1-D integer end positions; got dtype {ends.dtype}, "
                f"shape {ends.shape}."
            )
        length = int(length)
        if length < 1:
            raise DataError(f"TokenWindows needs length >= 1; got length={length}.")
        if len(ends) and (ends.min() < length or ends.max() > len(stream)):
            raise DataError(
                f"TokenWindows: every end must lie in [{length}, {len(stream)}] so that a "
                f"window of {length} fits in the stream; got {int(ends.min())}.."
                f"{int(ends.max())}."
            )
        self._stream = stream
        self._ends = ends
        self._offsets = np.arange(-length, 0, dtype=np.int64)
        self._stream.flags.writeable = False

    @property
    def stream(self) -> np.ndarray:
        """The token stream, shape ``(T,)`` (read-only)."""
        return self._stream

    @property
    def ends(self) -> np.ndarray:
        """End position of every row, shape ``(N,)``."""
        return self._ends

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self._ends), len(self._offsets))

    @property
    def dtype(self) -> np.dtype:
        return self._stream.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        """Bytes held (stream and ends), not the size the rows would take."""
        return int(self._stream.nbytes + self._ends.nbytes)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, tuple):
            raise DataError(
                "TokenWindows supports indexing rows only (an int, a slice or an index "
                f"array); got a tuple {index!r}. Index rows first, then columns."
            )
        ends = self._ends[index]
        if np.ndim(ends) == 0:
            return self._stream[int(ends) + self._offsets]
        return self._stream[np.asarray(ends, dtype=np.int64)[:, None] + self._offsets]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def subset(self, index) -> TokenWindows:
        """The rows ``index`` as another lazy view over the same stream (no copy)."""
        return TokenWindows(self._stream, self._ends[index], len(self._offsets))

    def __repr__(self) -> str:
        return (
            f"TokenWindows(shape={self.shape}, dtype={self.dtype}, stream={len(self._stream)} "
            f"tokens)"
        )
