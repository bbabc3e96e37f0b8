"""Split a training set across clients as ``flwr-datasets`` partitioners do.

``pathological`` and ``shards`` run the matching ``flwr_datasets.partitioner``
(:mod:`fedloom.data.flwr_schemes`). ``iid``, ``dirichlet`` and ``natural`` give
the same partitions as ``IidPartitioner``, ``DirichletPartitioner`` and
``NaturalIdPartitioner`` but are computed with numpy, because those loop in Python over
clients or examples (minutes for 10,000 clients). Each ``*_partition`` function returns one
int64 index array into the training set per client (client ``i`` is ``result[i]``);
:func:`partition_groups` returns them compactly as ``(order, offsets)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.data._core import as_labels as _as_labels
from fedloom.data._core import check_num_partitions as _check_num_partitions
from fedloom.data._core import encode, is_int
from fedloom.data.dirichlet import dirichlet_groups
from fedloom.data.flwr_schemes import pathological_partition, shard_partition
from fedloom.errors import DataError

__all__ = [
    "PARTITION_SCHEMES",
    "dirichlet_partition",
    "iid_partition",
    "natural_client_count",
    "natural_partition",
    "partition",
    "partition_groups",
    "pathological_partition",
    "shard_partition",
]

#: Scheme names accepted by :func:`partition` (and ``client_datasets``).
PARTITION_SCHEMES = ("iid", "dirichlet", "pathological", "shards", "natural")

# Scheme -> (required options, optional options) of the scheme function beyond
# (labels, num_partitions, seed). Used to refuse typos in configs before any work.
_SCHEME_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "iid": ((), ()),
    "dirichlet": (("alpha",), ("min_partition_size", "self_balancing")),
    "pathological": (("num_classes_per_partition",), ("class_assignment_mode",)),
    "shards": ((), ("num_shards_per_partition", "shard_size")),
    "natural": ((), ()),
}
_OPTION_EXAMPLES = {"alpha": "0.5", "num_classes_per_partition": "2"}

_DIRICHLET_ATTEMPTS = 10  # each runs flwr-datasets' own 11 draws


def iid_partition(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Uniformly random, equal-size partitions (sizes differ by at most one).

    The IID baseline of McMahan et al. 2017 ("shuffle, then 600 examples per client" for
    60,000 MNIST images and 100 clients): the indices are shuffled with ``seed``, then
    cut into contiguous blocks as ``flwr_datasets.partitioner.IidPartitioner`` cuts them
    (computed here with numpy: the same blocks, without building an Arrow table).

    Args:
      labels: shape ``(N,)``; only its length is used.
      num_partitions: number of clients, ``1 <= num_partitions <= N``.
      seed: seeds the shuffle.

    Returns:
      ``num_partitions`` int64 index arrays into ``labels``, together a permutation of ``0..N-1``.
    """
    return split_groups(*iid_groups(labels, num_partitions, seed))


def iid_groups(labels: np.ndarray, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`iid_partition` compactly, as ``(order, offsets)`` (see :func:`natural_groups`).

    The blocks are those of ``IidPartitioner`` (``datasets.Dataset.shard(contiguous=True)``):
    the first ``N % C`` clients get ``N // C + 1`` examples, the others ``N // C``.
    """
    labels = _as_labels(labels)
    n = len(labels)
    _check_num_partitions(num_partitions, n)
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    sizes = np.full(num_partitions, n // num_partitions, dtype=np.int64)
    sizes[: n % num_partitions] += 1
    return order, _offsets(sizes)


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float | Sequence[float],
    seed: int,
    min_partition_size: int | None = None,
    self_balancing: bool = False,
) -> list[np.ndarray]:
    """Label-skewed partitions drawn from a Dirichlet distribution (Hsu et al. 2019).

    Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019, as ``flwr_datasets.partitioner.
    DirichletPartitioner`` implements it: for each class, a proportion vector
    ``p ~ Dir(alpha * 1_C)`` over the ``C`` clients splits that class's examples. Smaller
    ``alpha`` gives more label skew (and more unequal sizes); ``alpha -> inf`` tends to IID.
    If a client ends up with fewer than ``min_partition_size`` examples the draw is
    repeated (up to 110 draws, seeds derived from ``seed``). Computed in vectorised numpy
    (:mod:`fedloom.data.dirichlet`) with the same random draws as flwr-datasets, so the
    partitions are identical to its, in milliseconds per draw instead of seconds at
    10,000 clients. When no draw meets the minimum (at 10,000 clients some 2% are empty
    in every draw), the closest draw is completed with random examples of the largest
    clients, and a warning says how many moved.

    Args:
      labels: shape ``(N,)``, class labels (any sortable type).
      num_partitions: number of clients, ``1 <= num_partitions <= N``.
      alpha: concentration, > 0; a sequence gives one value per client.
      seed: seeds the Dirichlet draws and the within-client shuffle.
      min_partition_size: fewest examples any client may get. None: ``min(10, N // (4 *
        num_partitions))``, at least 1.
      self_balancing: stop giving examples to clients already above ``N / num_partitions``
        (as in the original authors' code).

    Returns:
      ``num_partitions`` int64 index arrays into ``labels``, together a permutation of ``0..N-1``.
    """
    return split_groups(*dirichlet_groups_of(
        labels, num_partitions, alpha, seed, min_partition_size, self_balancing))


def dirichlet_groups_of(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float | Sequence[float],
    seed: int,
    min_partition_size: int | None = None,
    self_balancing: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dirichlet_partition` compactly, as ``(order, offsets)``."""
    labels = _as_labels(labels)
    n = len(labels)
    _check_num_partitions(num_partitions, n)
    alpha = _check_alpha(alpha, num_partitions)
    auto = min_partition_size is None
    if auto:
        min_partition_size = max(1, min(10, n // (4 * num_partitions)))
    if not (is_int(min_partition_size) and min_partition_size >= 0):
        raise DataError(
            f"partition.min_partition_size must be an integer >= 0; got "
            f"min_partition_size={min_partition_size!r}. Use e.g. min_partition_size=10."
        )
    if min_partition_size * num_partitions > n:
        raise DataError(
            f"partition.min_partition_size={min_partition_size} for num_clients={num_partitions} "
            f"needs {min_partition_size * num_partitions} examples but the training set has {n}. "
            f"Lower partition.min_partition_size or num_clients."
        )
    codes, classes = encode(labels)
    alphas = np.full(num_partitions, alpha) if isinstance(alpha, float) else np.asarray(alpha)
    seeds = [seed] + [_derived_seed(seed, attempt) for attempt in range(1, _DIRICHLET_ATTEMPTS)]
    order, offsets, _ = dirichlet_groups(
        codes, len(classes), alphas.astype(np.float64), int(min_partition_size), seeds,
        self_balancing=bool(self_balancing),
    )
    return order, offsets


def natural_partition(client_ids: np.ndarray) -> list[np.ndarray]:
    """One partition per distinct natural client id (hospital, device, writer, ...).

    What ``flwr_datasets.partitioner.NaturalIdPartitioner`` gives, computed with one
    stable sort instead of its per-example Python loop (seconds for millions of examples).

    Args:
      client_ids: shape ``(N,)``, the natural client of each example (any sortable type).

    Returns:
      One int64 index array per distinct id, in sorted id order (partition ``i`` holds the
      ``i``-th smallest id), each in ascending index order.
    """
    order, offsets = natural_groups(client_ids)
    return split_groups(order, offsets)


def natural_groups(client_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`natural_partition` compactly: ``(order, offsets)``, partition ``i`` is
    ``order[offsets[i]:offsets[i + 1]]`` (``order`` int64 of shape ``(N,)``, ``offsets``
    int64 of shape ``(C + 1,)``)."""
    ids = _as_labels(client_ids, setting="client_ids")
    codes, uniques = encode(ids)
    order = np.argsort(codes, kind="stable").astype(np.int64)
    return order, _offsets(np.bincount(codes, minlength=len(uniques)))


def split_groups(order: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """The partitions of a compact ``(order, offsets)`` as a list of int64 arrays (views)."""
    order = np.asarray(order, dtype=np.int64)
    return np.split(order, np.asarray(offsets[1:-1], dtype=np.int64))


def _offsets(sizes: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


def partition(
    labels: np.ndarray,
    scheme: str,
    num_partitions: int,
    seed: int,
    client_ids: np.ndarray | None = None,
    **options,
) -> list[np.ndarray]:
    """Partition by scheme name: ``partition(y, "dirichlet", 100, seed=0, alpha=0.5)``.

    Args:
      labels: shape ``(N,)``, the training labels.
      scheme: one of :data:`PARTITION_SCHEMES`: ``iid``, ``dirichlet`` (needs ``alpha``),
        ``pathological`` (needs ``num_classes_per_partition``), ``shards``, ``natural``
        (needs ``client_ids``; ``num_partitions`` must equal the number of distinct ids).
      num_partitions: number of clients.
      seed: seeds the scheme (unused by ``natural``).
      client_ids: shape ``(N,)``, natural client ids, for ``natural`` only.
      **options: the scheme's own options (see each ``*_partition`` function).

    Returns:
      ``num_partitions`` int64 index arrays into ``labels``.

    Raises:
      DataError: unknown scheme or option, missing option, or an impossible request; the
        message names the setting (``partition.alpha``, ``num_clients``, ...).
    """
    return split_groups(*partition_groups(labels, scheme, num_partitions, seed, client_ids,
                                          **options))


def partition_groups(
    labels: np.ndarray,
    scheme: str,
    num_partitions: int,
    seed: int,
    client_ids: np.ndarray | None = None,
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`partition` compactly: ``(order, offsets)``, client ``i`` holding
    ``order[offsets[i]:offsets[i + 1]]`` (int64 arrays of shapes ``(M,)`` and ``(C + 1,)``,
    ``M`` the examples assigned). One array for all clients instead of one per client."""
    key = _check_scheme(scheme)
    _check_options(key, options)
    if key == "natural":
        _check_natural(client_ids, num_partitions, len(_as_labels(labels)))
        return natural_groups(client_ids)
    if key == "iid":
        return iid_groups(labels, num_partitions, seed)
    if key == "dirichlet":
        return dirichlet_groups_of(labels, num_partitions, seed=seed, **options)
    if key == "pathological":
        parts = pathological_partition(labels, num_partitions, seed=seed, **options)
    else:
        parts = shard_partition(labels, num_partitions, seed=seed, **options)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    return np.concatenate(parts).astype(np.int64), _offsets(sizes)


# ---------------------------------------------------------------------------- helpers


def _check_scheme(scheme: str) -> str:
    key = str(scheme).strip().lower()
    key = {"shard": "shards", "dir": "dirichlet"}.get(key, key)
    if key not in PARTITION_SCHEMES:
        raise DataError(
            f"partition.scheme={scheme!r} is not a partitioning scheme. Known: "
            f"{', '.join(PARTITION_SCHEMES)}."
        )
    return key


def _check_options(key: str, options: dict) -> None:
    required, optional = _SCHEME_OPTIONS[key]
    unknown = sorted(set(options) - set(required) - set(optional))
    if unknown:
        takes = ", ".join((*required, *optional)) or "no options"
        raise DataError(
            f"partition.{unknown[0]} is not an option of the {key!r} scheme; it takes: {takes}. "
            f"Remove or rename it."
        )
    for name in required:
        if options.get(name) is None:
            raise DataError(
                f"partition.{name} is required for {key} partitioning; set e.g. "
                f"partition.{name}={_OPTION_EXAMPLES.get(name, '...')}."
            )


def natural_client_count(client_ids: np.ndarray | None) -> int:
    """How many clients :func:`natural_partition` makes of ``client_ids``: the number of
    distinct ids (shape ``(N,)``, one per training example).

    Raises:
      DataError: ``client_ids`` is ``None`` (the dataset has no natural clients).
    """
    if client_ids is None:
        raise DataError(
            "partition.scheme='natural' needs natural client ids but the dataset has none "
            "(train_client_ids is None). Use heart_disease, synthetic, shakespeare or a file "
            "with dataset.client_id_column, or another partition.scheme."
        )
    return len(np.unique(_as_labels(client_ids, setting="client_ids")))


def _check_natural(client_ids: np.ndarray | None, num_partitions: int, n: int) -> None:
    num_ids = natural_client_count(client_ids)
    if len(client_ids) != n:
        raise DataError(
            f"client_ids has {len(client_ids)} entries but there are {n} labels; give one "
            f"client id per training example."
        )
    if num_partitions != num_ids:
        raise DataError(
            f"num_clients={num_partitions} but the natural split has {num_ids} clients (distinct "
            f"ids); set num_clients={num_ids}, or num_clients=null for one client per natural "
            f"id, with partition.scheme='natural'."
        )


def _check_alpha(alpha, num_partitions: int) -> float | list[float]:
    values = np.atleast_1d(np.asarray(alpha, dtype=object))
    ok = values.ndim == 1 and all(
        isinstance(a, (int, float, np.integer, np.floating)) and not isinstance(a, bool) and a > 0
        for a in values
    )
    if ok and values.size not in (1, num_partitions):
        ok = False
    if not ok:
        raise DataError(
            f"partition.alpha must be > 0 for Dirichlet partitioning (a number, or one per "
            f"client); got alpha={alpha!r}. Use e.g. alpha=0.5 (smaller = more label skew)."
        )
    if values.size == 1:
        return float(values[0])
    return [float(a) for a in values]


def _derived_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([int(seed), attempt]).generate_state(1)[0])
