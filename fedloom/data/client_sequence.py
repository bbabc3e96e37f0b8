"""The clients' local data: index arrays for all, arrays built for the clients a round uses.

A federation of 10,000 clients that samples 100 per round should cost what 100 clients
cost. :class:`ClientDatasets` therefore stores the whole partition as two index arrays
(every client's training indices back to back, then validation ones) plus offsets, 4 bytes
per example, and builds a client's :class:`ClientData` (copies of its rows) only when it is
indexed; a few recently built clients are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.data._core import Dataset
from fedloom.errors import DataError

__all__ = ["ClientData", "ClientDatasets", "index_dtype"]


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's local data.

    Attributes:
      x_train: float32, shape ``(n_train, *feature_shape)`` (uint8 token ids of shape
        ``(n_train, sequence_length)`` for token datasets such as Shakespeare).
      y_train: int64, shape ``(n_train,)``.
      x_val: like ``x_train``, shape ``(n_val, *feature_shape)``; ``n_val`` may be 0.
      y_val: int64, shape ``(n_val,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def num_examples(self) -> int:
        """Number of local training examples (the FedAvg weight)."""
        return len(self.x_train)


def index_dtype(n: int) -> np.dtype:
    """int32 when it can index ``n`` examples, else int64."""
    return np.dtype(np.int32 if n < 2**31 else np.int64)


class ClientDatasets(Sequence):
    """``num_clients`` clients' data over one :class:`Dataset`, built on access.

    Client ``i`` trains on ``dataset.x_train[train[train_offsets[i]:train_offsets[i + 1]]]``
    and validates on the rows ``val[val_offsets[i]:val_offsets[i + 1]]``. Indexing with an
    int returns its :class:`ClientData` (the last :attr:`CACHED_CLIENTS` built are kept);
    a slice returns a list. Safe to index from several threads.

    Args:
      dataset: the dataset whose training rows the indices point at.
      train, val: int32/int64 of shapes ``(M_train,)`` and ``(M_val,)``.
      train_offsets, val_offsets: int64 of shape ``(num_clients + 1,)``, non-decreasing,
        starting at 0 and ending at ``M_train`` and ``M_val``.
    """

    CACHED_CLIENTS = 32

    def __init__(
        self,
        dataset: Dataset,
        train: np.ndarray,
        train_offsets: np.ndarray,
        val: np.ndarray,
        val_offsets: np.ndarray,
    ) -> None:
        self.dataset = dataset
        self.train = np.asarray(train)
        self.val = np.asarray(val)
        self.train_offsets = np.asarray(train_offsets, dtype=np.int64)
        self.val_offsets = np.asarray(val_offsets, dtype=np.int64)
        for name, index, offsets in (("train", self.train, self.train_offsets),
                                     ("val", self.val, self.val_offsets)):
            if (len(offsets) != len(self.train_offsets) or offsets[0] != 0
                    or offsets[-1] != len(index) or np.any(np.diff(offsets) < 0)):
                raise DataError(
                    f"ClientDatasets: {name}_offsets must rise from 0 to {len(index)} with "
                    f"one entry per client plus one; got {len(offsets)} entries from "
                    f"{int(offsets[0])} to {int(offsets[-1])}. Rebuild with client_datasets."
                )
        self._built: OrderedDict[int, ClientData] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.train_offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        try:
            client = int(np.asarray(index).item()) if not isinstance(index, int) else index
        except (TypeError, ValueError):
            raise TypeError(
                f"clients are indexed by an int or a slice; got {type(index).__name__}."
            ) from None
        if client < 0:
            client += len(self)
        if not 0 <= client < len(self):
            raise IndexError(f"client {index} is out of range: there are {len(self)} clients.")
        with self._lock:
            data = self._built.get(client)
            if data is not None:
                self._built.move_to_end(client)
                return data
        data = self._build(client)
        with self._lock:
            self._built[client] = data
            while len(self._built) > self.CACHED_CLIENTS:
                self._built.popitem(last=False)
        return data

    def indices(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train, val)`` row indices of ``client`` into ``dataset.x_train`` (views)."""
        t, v = self.train_offsets, self.val_offsets
        return (self.train[t[client]:t[client + 1]], self.val[v[client]:v[client + 1]])

    @property
    def num_examples(self) -> np.ndarray:
        """Training examples of every client, int64 of shape ``(num_clients,)``."""
        return np.diff(self.train_offsets)

    def label_histogram(self, num_classes: int) -> np.ndarray:
        """Training labels per client: int64 of shape ``(num_clients, num_classes)``,
        computed from the indices (no client is built)."""
        labels = np.asarray(self.dataset.y_train)[self.train]
        owner = np.repeat(np.arange(len(self), dtype=np.int64), self.num_examples)
        counts = np.bincount(owner * num_classes + labels, minlength=len(self) * num_classes)
        return counts.reshape(len(self), num_classes)

    def _build(self, client: int) -> ClientData:
        train, val = self.indices(client)
        x, y = self.dataset.x_train, self.dataset.y_train
        return ClientData(x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val])

    def __repr__(self) -> str:
        return (
            f"ClientDatasets({len(self)} clients of {self.dataset.name!r}, "
            f"{len(self.train)} train + {len(self.val)} val examples)"
        )
