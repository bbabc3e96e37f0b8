"""Per-client datasets: partition a :class:`Dataset`, split each client into train/val, report."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedloom.data._core import Dataset, check_fraction
from fedloom.data.client_sequence import ClientData, ClientDatasets, index_dtype
from fedloom.data.partitioning import (
    _check_num_partitions,
    _check_options,
    _check_scheme,
    partition_groups,
)
from fedloom.errors import DataError

__all__ = [
    "ClientData",
    "ClientDatasets",
    "client_partition_stats",
    "client_datasets",
    "log_partition_stats",
    "partition_stats",
    "train_val_split",
]


def train_val_split(
    indices: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, val) at random, reproducibly.

    ``n_val = round(val_fraction * n)``, but at least 1 when ``val_fraction > 0`` and
    ``n >= 2``, and at most ``n - 1`` so training keeps an example. A client with 0 or 1
    examples gets an empty validation set; ``val_fraction == 0`` always does.

    Args:
      indices: shape ``(n,)``, the client's example indices.
      val_fraction: in [0, 1).
      seed: seeds the shuffle (``np.random.default_rng``).

    Returns:
      ``(train_indices, val_indices)``: disjoint int64 arrays that together hold ``indices``.
    """
    val_fraction = check_fraction(val_fraction, "val_fraction", example=0.1)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(indices)
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    shuffled = np.random.default_rng(seed).permutation(indices)
    return shuffled[n_val:], shuffled[:n_val]


def client_datasets(
    dataset: Dataset,
    scheme: str,
    num_clients: int,
    seed: int,
    val_fraction: float = 0.1,
    *,
    cache_dir: str | Path | None = None,
    **options,
) -> ClientDatasets:
    """Partition ``dataset``'s training set across clients and split each into train/val.

    Args:
      dataset: the loaded dataset; only its training part is partitioned (the test part
        stays on the server).
      scheme: a partitioning scheme (see ``partition``): ``iid``, ``dirichlet``,
        ``pathological``, ``shards`` or ``natural`` (uses ``dataset.train_client_ids``).
      num_clients: number of clients.
      seed: seeds the partition and every client's train/val split.
      val_fraction: fraction of each client's examples kept for local validation, in [0, 1).
      cache_dir: if given, the clients' index arrays are kept there (one ``.npz`` per
        distinct request, keyed by a hash of the labels, natural ids, settings and the
        flwr-datasets version); a later identical request reads them instead of
        partitioning again, and so never imports ``flwr_datasets`` (about 1.6 s here).
      **options: the scheme's options, e.g. ``alpha=0.5`` for ``dirichlet``.

    Returns:
      A :class:`ClientDatasets` of ``num_clients`` clients (client ``i`` is element ``i``;
      for ``natural``, the ``i``-th smallest natural id). It holds index arrays only and
      builds a client's :class:`ClientData` when it is accessed.

    Raises:
      DataError: before any work, for an impossible request (``num_clients`` out of range,
        ``partition.alpha <= 0``, ``partition.num_classes_per_partition`` out of range,
        ``num_clients`` different from the number of natural clients, ...).
    """
    if not isinstance(dataset, Dataset):
        raise DataError(
            f"client_datasets needs a fedloom.data.Dataset; got {type(dataset).__name__}. "
            f"Load one with fedloom.data.load_dataset(name)."
        )
    val_fraction = check_fraction(val_fraction, "val_fraction", example=0.1)
    key = _check_scheme(scheme)
    _check_options(key, options)
    _check_num_partitions(num_clients, len(dataset.y_train))
    cache_file = None
    if cache_dir is not None:
        settings = [key, num_clients, seed, val_fraction, sorted(options.items())]
        cache_file = Path(cache_dir) / f"{_cache_key(dataset, settings)}.npz"
    splits = _read_splits(cache_file, num_clients)
    if splits is None:
        order, offsets = partition_groups(
            dataset.y_train,
            key,
            num_clients,
            seed,
            client_ids=dataset.train_client_ids,
            **options,
        )
        splits = _train_val_splits(order, offsets, val_fraction, seed)
        _write_splits(cache_file, splits)
    return ClientDatasets(dataset, *splits)


def _train_val_splits(
    order: np.ndarray, offsets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every client's :func:`train_val_split`, concatenated: ``(train, train_offsets,
    val, val_offsets)``."""
    sizes = np.diff(offsets)
    num_val = np.zeros(len(sizes), dtype=np.int64)
    if val_fraction > 0:
        wanted = np.maximum(1, np.round(val_fraction * sizes).astype(np.int64))
        num_val = np.where(sizes >= 2, np.minimum(sizes - 1, wanted), 0)
    dtype = index_dtype(len(order))
    train = np.empty(len(order) - int(num_val.sum()), dtype=dtype)
    val = np.empty(int(num_val.sum()), dtype=dtype)
    train_offsets = _offsets(sizes - num_val)
    val_offsets = _offsets(num_val)
    for i, (start, stop) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        # train_val_split's shuffle, with the seed it is given for this client
        shuffled = np.random.default_rng(_client_seed(seed, i)).permutation(order[start:stop])
        k = int(num_val[i])
        val[val_offsets[i]:val_offsets[i + 1]] = shuffled[:k]
        train[train_offsets[i]:train_offsets[i + 1]] = shuffled[k:]
    return train, train_offsets, val, val_offsets


def _offsets(sizes: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


def _cache_key(dataset: Dataset, settings: list) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(dataset.y_train).tobytes())
    if dataset.train_client_ids is not None:
        digest.update(np.ascontiguousarray(dataset.train_client_ids).tobytes())
    try:
        flwr_datasets_version = importlib.metadata.version("flwr-datasets")
    except importlib.metadata.PackageNotFoundError:
        flwr_datasets_version = "?"
    digest.update(json.dumps([_CACHE_FORMAT, flwr_datasets_version, settings], default=str).encode())
    return digest.hexdigest()[:32]


_SPLIT_KEYS = ("train", "train_offsets", "val", "val_offsets")


def _read_splits(path: Path | None, num_clients: int) -> tuple[np.ndarray, ...] | None:
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            splits = tuple(saved[key] for key in _SPLIT_KEYS)
    except (OSError, KeyError, ValueError):  # a damaged or foreign file: partition again
        return None
    if len(splits[1]) != num_clients + 1 or len(splits[3]) != num_clients + 1:
        return None
    return splits


def _write_splits(path: Path | None, splits: tuple[np.ndarray, ...]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(temporary, **dict(zip(_SPLIT_KEYS, splits)))
    os.replace(temporary, path)  # atomic: concurrent runs never read half a file


_CACHE_FORMAT = 2  # 2: one array per kind (train, val) plus offsets, not one per client


def _client_seed(seed: int, client: int) -> int:
    # Independent of the partition's own stream and of the number of clients.
    return int(np.random.SeedSequence([int(seed), 1, client]).generate_state(1)[0])


def partition_stats(
    labels: np.ndarray, partitions: list[np.ndarray], num_classes: int
) -> dict:
    """Sizes and label histograms of a partition, as plain Python numbers (JSON-ready).

    Args:
      labels: shape ``(N,)``, int labels in ``0..num_classes-1``.
      partitions: one index array into ``labels`` per client.
      num_classes: ``K``.

    Returns:
      ``{"num_clients": C, "num_examples": total assigned, "examples_per_client": [C ints],
      "label_histogram": [[K ints] per client], "classes_per_client": [C ints] (distinct
      labels held), "min", "max": ints, "mean": float}`` (min/max/mean of examples per client).
    """
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"partition_stats: labels must lie in 0..{num_classes - 1}; got "
            f"{labels.min()}..{labels.max()}. Pass the dataset's num_classes."
        )
    rows = [
        np.bincount(labels[np.asarray(p, dtype=np.int64)], minlength=num_classes)
        for p in partitions
    ]
    histogram = np.array(rows, dtype=np.int64).reshape(len(partitions), num_classes)
    return _stats(histogram)


def client_partition_stats(clients: Sequence[ClientData], num_classes: int) -> dict:
    """:func:`partition_stats` of the clients' training splits.

    For :class:`ClientDatasets` the histogram comes from the index arrays (no client is
    built, milliseconds for 10,000 clients); any other sequence of :class:`ClientData` is
    read client by client.
    """
    if isinstance(clients, ClientDatasets):
        return _stats(clients.label_histogram(num_classes))
    labels = np.concatenate([np.asarray(c.y_train, dtype=np.int64) for c in clients])
    sizes = np.array([len(c.y_train) for c in clients], dtype=np.int64)
    return partition_stats(labels, np.split(np.arange(len(labels)), np.cumsum(sizes)[:-1]),
                           num_classes)


def _stats(histogram: np.ndarray) -> dict:
    sizes = histogram.sum(axis=1)
    return {
        "num_clients": len(histogram),
        "num_examples": int(sizes.sum()),
        "examples_per_client": sizes.tolist(),
        "label_histogram": histogram.tolist(),
        "classes_per_client": (histogram > 0).sum(axis=1).tolist(),
        "min": int(sizes.min()) if len(sizes) else 0,
        "max": int(sizes.max()) if len(sizes) else 0,
        "mean": float(sizes.mean()) if len(sizes) else 0.0,
    }


_PER_CLIENT_LINES = 10  # beyond this many clients, summarise instead of one line per client


def log_partition_stats(stats: dict, logger: logging.Logger, level: int = logging.INFO) -> None:
    """Log :func:`partition_stats` in a few lines (one per client only up to 10 clients)."""
    histogram = np.asarray(stats["label_histogram"], dtype=np.int64)
    sizes = np.asarray(stats["examples_per_client"], dtype=np.int64)
    classes = np.asarray(stats["classes_per_client"], dtype=np.int64)
    num_clients = stats["num_clients"]
    if num_clients == 0:
        logger.log(level, "partition: no clients")
        return
    num_classes = histogram.shape[1]
    logger.log(
        level,
        "partition: %d clients, %d examples; per client min %d, mean %.1f, max %d",
        num_clients, stats["num_examples"], stats["min"], stats["mean"], stats["max"],
    )
    logger.log(
        level,
        "classes per client: min %d, mean %.1f, max %d (of %d)",
        classes.min(), classes.mean(), classes.max(), num_classes,
    )
    if num_clients <= _PER_CLIENT_LINES:
        for i in range(num_clients):
            logger.log(
                level, "  client %d: %d examples, labels %s", i, sizes[i], histogram[i].tolist()
            )
        return
    smallest, largest = int(sizes.argmin()), int(sizes.argmax())
    if sizes[smallest] == sizes[largest]:
        logger.log(level, "  e.g. client 0: labels %s", histogram[0].tolist())
        return
    logger.log(
        level,
        "  smallest client %d: labels %s; largest client %d: labels %s",
        smallest, histogram[smallest].tolist(), largest, histogram[largest].tolist(),
    )
