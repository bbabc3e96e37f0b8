"""The label-skew schemes computed by ``flwr-datasets`` partitioners themselves.

``pathological`` and ``shards`` run the matching ``flwr_datasets.partitioner`` on a small
Arrow table of ``{"index", "label"}`` built with ``datasets.Dataset.from_dict``: only
indices go through Arrow, never the features. ``datasets`` and ``flwr_datasets`` take over a
second to import, so they are imported inside the functions, after the request has been
validated.
"""

from __future__ import annotations

import warnings

import numpy as np

from fedloom.data._core import as_labels as _as_labels
from fedloom.data._core import check_num_partitions as _check_num_partitions
from fedloom.data._core import encode, is_int
from fedloom.errors import DataError

__all__ = ["pathological_partition", "shard_partition"]


def pathological_partition(
    labels: np.ndarray,
    num_partitions: int,
    num_classes_per_partition: int,
    seed: int,
    class_assignment_mode: str = "first-deterministic",
) -> list[np.ndarray]:
    """Each client holds exactly ``num_classes_per_partition`` classes.

    The "#C = k" label-skew setting of Li, Diao, Chen and He, "Federated Learning on
    Non-IID Data Silos: An Experimental Study", ICDE 2022, via
    ``flwr_datasets.partitioner.PathologicalPartitioner``. Each class's examples are
    divided evenly among the clients that hold that class.

    Args:
      labels: shape ``(N,)``, class labels (any sortable type).
      num_partitions: number of clients, ``1 <= num_partitions <= N``.
      num_classes_per_partition: classes per client, in ``1..C`` (C = distinct labels).
      seed: seeds the class assignment and the within-client shuffle.
      class_assignment_mode: ``"first-deterministic"`` (client ``i`` gets class ``i mod C``
        plus random others, so every class is used once there are at least C clients: the
        paper's mode), ``"random"`` or ``"deterministic"`` (classes ``i .. i+k-1 mod C``).

    Returns:
      ``num_partitions`` int64 index arrays into ``labels``. All examples are used when
      every class is assigned to some client (else flwr-datasets warns which are not).
    """
    labels = _as_labels(labels)
    _check_num_partitions(num_partitions, len(labels))
    codes, classes = encode(labels)
    k = num_classes_per_partition
    if not (is_int(k) and 1 <= k <= len(classes)):
        raise DataError(
            f"partition.num_classes_per_partition must be an integer in 1..{len(classes)} (the "
            f"classes in the training labels); got num_classes_per_partition={k!r}. "
            f"Use e.g. num_classes_per_partition=2."
        )
    modes = ("first-deterministic", "random", "deterministic")
    if class_assignment_mode not in modes:
        raise DataError(
            f"partition.class_assignment_mode must be one of {', '.join(modes)}; got "
            f"class_assignment_mode={class_assignment_mode!r}."
        )
    from flwr_datasets.partitioner import PathologicalPartitioner

    partitioner = PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=int(k),
        class_assignment_mode=class_assignment_mode,
        shuffle=True,
        seed=seed,
    )
    try:
        return _read(partitioner, _index_table({"label": codes}), num_partitions)
    except ValueError as err:  # a class is too small for the clients that need it
        raise DataError(
            f"pathological partitioning with num_clients={num_partitions} and "
            f"partition.num_classes_per_partition={k} is impossible on this data: "
            f"{' '.join(str(err).split())}"
        ) from None


def shard_partition(
    labels: np.ndarray,
    num_partitions: int,
    num_shards_per_partition: int = 2,
    shard_size: int | None = None,
    *,
    seed: int,
) -> list[np.ndarray]:
    """McMahan et al. 2017's pathological non-IID split: sort by label, deal out shards.

    McMahan, Moore, Ramage, Hampson and Agüera y Arcas, "Communication-Efficient Learning
    of Deep Networks from Decentralized Data", AISTATS 2017: the 60,000 MNIST training images
    sorted by label, cut into 200 shards of 300, two shards per client for 100 clients (so
    most clients see two digits). Via ``flwr_datasets.partitioner.ShardPartitioner``.

    Args:
      labels: shape ``(N,)``, class labels (any sortable type).
      num_partitions: number of clients.
      num_shards_per_partition: shards per client, >= 1.
      shard_size: examples per shard. None: ``N // (num_partitions * num_shards_per_partition)``
        (300 for the paper's setting).
      seed: keyword-only; seeds which shards each client gets and the within-client shuffle.

    Returns:
      ``num_partitions`` int64 index arrays of exactly ``num_shards_per_partition *
      shard_size`` examples each, no index repeated. The remaining ``N - num_partitions *
      num_shards_per_partition * shard_size`` examples (fewer than one shard per client when
      ``shard_size`` is None) go to no client.
    """
    labels = _as_labels(labels)
    n = len(labels)
    _check_num_partitions(num_partitions, n)
    s = num_shards_per_partition
    if not (is_int(s) and s >= 1):
        raise DataError(
            f"partition.num_shards_per_partition must be an integer >= 1; got "
            f"num_shards_per_partition={s!r}. Use e.g. num_shards_per_partition=2 (McMahan et al.)."
        )
    num_shards = num_partitions * int(s)
    if shard_size is None:
        shard_size = n // num_shards
        if shard_size < 1:
            raise DataError(
                f"num_clients={num_partitions} x partition.num_shards_per_partition={s} = "
                f"{num_shards} shards is more than the {n} training examples. Lower num_clients "
                f"or partition.num_shards_per_partition."
            )
    elif not (is_int(shard_size) and shard_size >= 1):
        raise DataError(
            f"partition.shard_size must be an integer >= 1 or None; got shard_size={shard_size!r}. "
            f"Use None to derive it from the data size."
        )
    if num_shards * shard_size > n:
        raise DataError(
            f"partition.shard_size={shard_size} x {num_shards} shards (num_clients="
            f"{num_partitions} x partition.num_shards_per_partition={s}) needs "
            f"{num_shards * shard_size} examples "
            f"but the training set has {n}. Lower partition.shard_size or set it to None."
        )
    from flwr_datasets.partitioner import ShardPartitioner

    codes, _ = encode(labels)
    partitioner = ShardPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_shards_per_partition=int(s),
        shard_size=int(shard_size),
        shuffle=True,
        seed=seed,
    )
    with warnings.catch_warnings():
        # pyarrow >= 25 deprecates an option that datasets' sort still passes.
        warnings.filterwarnings("ignore", category=FutureWarning, module="pyarrow")
        return _read(partitioner, _index_table({"label": codes}), num_partitions)


# ---------------------------------------------------------------------------- helpers


def _index_table(columns: dict[str, np.ndarray]):
    """A ``datasets.Dataset`` of ``index`` (0..N-1 unless given) plus the given columns."""
    import datasets

    n = len(next(iter(columns.values())))
    return datasets.Dataset.from_dict({"index": np.arange(n, dtype=np.int64), **columns})


def _read(partitioner, table, num_partitions: int) -> list[np.ndarray]:
    """Assign ``table`` to ``partitioner`` and return each partition's ``index`` column.

    ``load_partition`` hashes its index list for the dataset fingerprint (pickling every
    numpy integer), which alone takes seconds for 60,000 examples. So partition 0 is read
    through the public API (which also runs the assignment and flwr-datasets' checks) and
    the rest from the partitioner's own assignment, mapped through ``partitioner.dataset``
    (ShardPartitioner sorts it). If that attribute is missing or disagrees with partition
    0, every partition is read through ``load_partition`` instead.
    """
    partitioner.dataset = table
    first = _arrow_index(partitioner.load_partition(0))
    positions = getattr(partitioner, "_partition_id_to_indices", None)
    if isinstance(positions, dict) and len(positions) == num_partitions:
        index = _arrow_index(partitioner.dataset)
        parts = [index[np.asarray(positions[i], dtype=np.int64)] for i in range(num_partitions)]
        if np.array_equal(parts[0], first):
            return parts
    return [first] + [
        _arrow_index(partitioner.load_partition(i)) for i in range(1, num_partitions)
    ]


def _arrow_index(table) -> np.ndarray:
    # Arrow format: reading a column as numpy through datasets' formatter is 50x slower.
    return np.asarray(table.with_format("arrow")["index"].to_numpy(), dtype=np.int64)
