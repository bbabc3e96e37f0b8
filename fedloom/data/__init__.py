"""Offline datasets and ``flwr-datasets`` partitioning for federated experiments.

Load a dataset, then split its training set across clients::

    from fedloom.data import load_dataset, client_datasets
    dataset = load_dataset("fashion_mnist")
    clients = client_datasets(dataset, "dirichlet", num_clients=100, seed=0, alpha=0.5)
    clients[7].x_train        # client 7's arrays, built when first indexed

``clients`` is a :class:`ClientDatasets`: one index array for all clients, so 10,000
clients cost 4 bytes per example until a round uses them. ``load_dataset("shakespeare")``
is LEAF's next-character task with one natural client per (play, role).

Importing this package needs only numpy; scikit-learn, ``datasets`` and ``flwr_datasets``
are imported when a loader or partitioner needs them.
"""

from fedloom.data._core import Dataset
from fedloom.data.datasets import (
    FASHION_MNIST_PATH,
    dataset_names,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist5k,
)
from fedloom.data.federated import (
    ClientData,
    ClientDatasets,
    client_datasets,
    client_partition_stats,
    log_partition_stats,
    partition_stats,
    train_val_split,
)
from fedloom.data.files import load_file
from fedloom.data.heart_disease import HEART_DISEASE_HOSPITALS, load_heart_disease
from fedloom.data.partitioning import (
    PARTITION_SCHEMES,
    dirichlet_partition,
    iid_partition,
    natural_client_count,
    natural_partition,
    partition,
    partition_groups,
    pathological_partition,
    shard_partition,
)
from fedloom.data.shakespeare import (
    SHAKESPEARE_UNKNOWN_INDEX,
    SHAKESPEARE_VOCABULARY,
    decode_characters,
    encode_characters,
    load_shakespeare,
    shakespeare_roles,
)
from fedloom.data.synthetic import load_synthetic
from fedloom.data.token_windows import TokenWindows

__all__ = [
    "FASHION_MNIST_PATH",
    "HEART_DISEASE_HOSPITALS",
    "PARTITION_SCHEMES",
    "SHAKESPEARE_UNKNOWN_INDEX",
    "SHAKESPEARE_VOCABULARY",
    "ClientData",
    "ClientDatasets",
    "Dataset",
    "client_datasets",
    "client_partition_stats",
    "dataset_names",
    "decode_characters",
    "encode_characters",
    "dirichlet_partition",
    "iid_partition",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_file",
    "load_heart_disease",
    "load_mnist5k",
    "load_shakespeare",
    "load_synthetic",
    "log_partition_stats",
    "natural_client_count",
    "natural_partition",
    "partition",
    "partition_groups",
    "partition_stats",
    "pathological_partition",
    "shakespeare_roles",
    "shard_partition",
    "TokenWindows",
    "train_val_split",
]
