"""Everything an experiment is built from, derived from its :class:`RunSettings`.

Data and models are cached per process: a simulation worker (or the local engine)
loads the dataset and computes the partitions once, and builds one model, whatever
the number of clients and rounds it serves.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

from fedloom.data import (
    Dataset,
    client_datasets,
    client_partition_stats,
    load_dataset,
    log_partition_stats,
)
from fedloom.experiment.settings import RunSettings

__all__ = [
    "data_key",
    "federated_data",
    "client_stats",
    "model_spec",
    "build_client_app",
    "build_strategy",
    "reliability_mods",
    "train_config",
]

LOGGER = logging.getLogger("fedloom")


def data_key(settings: RunSettings) -> str:
    """A canonical string of the settings that decide the clients' data."""
    return json.dumps(
        {
            "dataset": {"name": settings.data.name, **settings.data.options},
            "partition": {"scheme": settings.partition.scheme, **settings.partition.options},
            "num_clients": settings.num_clients,
            "seed": settings.seed,
            "val_fraction": settings.val_fraction,
        },
        sort_keys=True,
    )


@functools.lru_cache(maxsize=4)
def federated_data(key: str) -> tuple[Dataset, list]:
    """``(dataset, client_datasets)`` for a :func:`data_key`; computed once per process."""
    parts = json.loads(key)
    dataset_options = dict(parts["dataset"])
    dataset = load_dataset(dataset_options.pop("name"), **dataset_options)
    partition_options = dict(parts["partition"])
    scheme = partition_options.pop("scheme")
    clients = client_datasets(
        dataset, scheme, parts["num_clients"], parts["seed"],
        parts["val_fraction"], cache_dir=partition_cache_dir(), **partition_options,
    )
    log_partition_stats(client_stats(clients, dataset.num_classes), LOGGER)
    return dataset, clients


def partition_cache_dir() -> Path | None:
    """Where client partitions are cached between runs: ``$FEDLOOM_CACHE_DIR/partitions``
    (default ``~/.cache/fedloom``); ``FEDLOOM_CACHE_DIR=off`` disables the cache.

    A sweep of hundreds of simulations over the same split partitions once; later runs
    read the index arrays (and skip importing ``flwr_datasets``).
    """
    root = os.environ.get("FEDLOOM_CACHE_DIR", str(Path.home() / ".cache" / "fedloom"))
    return None if root.strip().lower() in ("off", "0", "") else Path(root) / "partitions"


def client_stats(clients, num_classes: int) -> dict:
    """:func:`fedloom.data.partition_stats` of the clients' training splits (from the
    partition's index arrays: no client's data is built)."""
    return client_partition_stats(clients, num_classes)


def model_spec(settings: RunSettings, dataset: Dataset):
    """The :class:`fedloom.models.ModelSpec` of ``settings.model`` for ``dataset``'s shapes."""
    return settings.model.spec(dataset.feature_shape, dataset.num_classes, settings.seed)


def build_client_app(settings: RunSettings, load_client=None):
    """The Message-API ``ClientApp`` for this experiment: node ``partition-id`` ``i``
    trains on client dataset ``i`` with the shared cached Keras trainer.

    ``load_client`` (``context -> (trainer, data)``) replaces only where the data comes
    from (a deployed SuperNode reads its own); seeds and mods stay the experiment's."""
    from fedloom.clients import get_trainer, make_client_app
    from fedloom.compression import compression_mod

    key = data_key(settings)
    model, seed = settings.model, settings.seed
    compression = settings.compression
    mods = [] if compression.method == "none" else [
        compression_mod(compression.method, **compression.options)]
    mods += reliability_mods(settings)  # inside compression: they see plain weights

    attack = settings.attack

    def simulated_client(context):
        dataset, clients = federated_data(key)
        spec = model.spec(dataset.feature_shape, dataset.num_classes, seed)
        pid = int(context.node_config["partition-id"])
        return get_trainer(spec), attack.client_data(pid, clients[pid], dataset.num_classes)

    return make_client_app(load_client or simulated_client, seed=seed, mods=mods)


def reliability_mods(settings: RunSettings) -> list:
    """Client mods for fault injection, Byzantine attacks and client-side DP clipping
    (outermost first: a faulty client fails whatever it computed; an attacker poisons
    its update after honest clipping, as a real one would skip it)."""
    from fedloom.privacy import client_mods

    mods = []
    if settings.faults.active:
        mods.append(settings.faults.mod)
    if settings.attack.active:
        mods.append(settings.attack.mod)
    return mods + client_mods(settings.privacy)


def build_strategy(settings: RunSettings, quality_scorer=None):
    """The strategy of ``settings.strategy`` (its ``_target_``) with the experiment's
    sampling (:meth:`RunSettings.strategy_sampling`) and, under ``weight_by=server_quality``
    (:attr:`RunSettings.server_quality`), the server's ``quality_scorer``."""
    extra = {"quality_scorer": quality_scorer} if settings.server_quality else {}
    return settings.strategy.instantiate(**settings.strategy_sampling(), **extra)


def train_config(settings: RunSettings):
    """What every client is told each round (a strategy may override, e.g. FedAvg's E, B)."""
    from flwr.app import ConfigRecord

    training = settings.training
    config = {
        "local-epochs": training.local_epochs,
        "batch-size": training.batch_size,
        "learning-rate": training.learning_rate,
    }
    if training.client_momentum > 0:  # the key only when on: messages stay as they were
        config["client-momentum"] = training.client_momentum
    return ConfigRecord(config)
