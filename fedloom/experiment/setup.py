"""Everything an experiment is built from, derived from its config.

Data and models are cached per process: a simulation worker (or the local engine)
loads the dataset and computes the partitions once, and builds one model, whatever
the number of clients and rounds it serves.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedloom.data import (
    Dataset,
    client_datasets,
    client_partition_stats,
    load_dataset,
    log_partition_stats,
)
from fedloom.errors import ConfigError

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


def data_key(cfg: Mapping[str, Any]) -> str:
    """A canonical string of the settings that decide the clients' data."""
    return json.dumps(
        {
            "dataset": dict(cfg["dataset"]),
            "partition": dict(cfg["partition"]),
            "num_clients": cfg["num_clients"],
            "seed": cfg["seed"],
            "val_fraction": cfg["val_fraction"],
        },
        sort_keys=True,
    )


@functools.lru_cache(maxsize=4)
def federated_data(key: str) -> tuple[Dataset, list]:
    """``(dataset, client_datasets)`` for a :func:`data_key`; computed once per process."""
    settings = json.loads(key)
    dataset_options = dict(settings["dataset"])
    dataset = load_dataset(dataset_options.pop("name"), **dataset_options)
    partition_options = dict(settings["partition"])
    scheme = partition_options.pop("scheme")
    clients = client_datasets(
        dataset, scheme, settings["num_clients"], settings["seed"],
        settings["val_fraction"], cache_dir=partition_cache_dir(), **partition_options,
    )
    log_partition_stats(client_stats(clients, dataset.num_classes), LOGGER)
    return dataset, clients


def partition_cache_dir() -> Path | None:
    """Where client partitions are cached between runs: ``$FEDLOOM_CACHE_DIR/partitions``
    (default ``~/.cache/fedloom``); ``FEDLOOM_CACHE_DIR=off`` disables the cache.

    A sweep of hundreds of simulations over the same split partitions once; later runs
    read the index arrays (and skip importing ``flwr_datasets``, ~1.6 s of start-up).
    """
    root = os.environ.get("FEDLOOM_CACHE_DIR", str(Path.home() / ".cache" / "fedloom"))
    return None if root.strip().lower() in ("off", "0", "") else Path(root) / "partitions"


def client_stats(clients: list, num_classes: int) -> dict:
    """:func:`fedloom.data.partition_stats` of the clients' training splits (from the
    partition's index arrays: no client's data is built)."""
    return client_partition_stats(clients, num_classes)


def model_spec(cfg: Mapping[str, Any], dataset: Dataset):
    """The :class:`fedloom.models.ModelSpec` of ``cfg.model`` for ``dataset``'s shapes."""
    from fedloom.models import ModelSpec  # light: keras is imported only when built

    options = dict(cfg["model"])
    name = options.pop("name")
    return ModelSpec(name, dataset.feature_shape, dataset.num_classes, seed=cfg["seed"], options=options)


def build_client_app(cfg: Mapping[str, Any], load_client=None):
    """The Message-API ``ClientApp`` for this experiment: node ``partition-id`` ``i``
    trains on client dataset ``i`` with the shared cached Keras trainer.

    ``load_client`` (``context -> (trainer, data)``) replaces only where the data comes
    from (a deployed SuperNode reads its own); seeds and mods stay the experiment's."""
    from fedloom.clients import get_trainer, make_client_app

    from fedloom.compression import compression_mod

    key = data_key(cfg)
    model = dict(cfg["model"])
    seed = int(cfg["seed"])
    compression = dict(cfg.get("compression") or {"method": "none"})
    method = compression.pop("method", "none")
    mods = [] if method == "none" else [compression_mod(method, **compression)]
    mods += reliability_mods(cfg)  # inside compression: they see plain weights

    def simulated_client(context):
        dataset, clients = federated_data(key)
        spec = model_spec({"model": model, "seed": seed}, dataset)
        return get_trainer(spec), clients[int(context.node_config["partition-id"])]

    return make_client_app(load_client or simulated_client, seed=seed, mods=mods)


def reliability_mods(cfg: Mapping[str, Any]) -> list:
    """Client mods for fault injection, Byzantine attacks and client-side DP clipping
    (outermost first: a faulty client fails whatever it computed; an attacker poisons
    its update after honest clipping, as a real one would skip it)."""
    from fedloom.attacks import AttackPlan
    from fedloom.faults import FaultPlan
    from fedloom.privacy import PrivacySettings, client_mods

    num_clients, seed = int(cfg["num_clients"]), int(cfg["seed"])
    mods = []
    faults = FaultPlan.from_config(cfg.get("faults") or {}, num_clients, seed)
    if faults.active:
        mods.append(faults.mod)
    attack = AttackPlan.from_config(cfg.get("attack") or {"name": "none"}, num_clients, seed)
    if attack.active:
        mods.append(attack.mod)
    dp = PrivacySettings.from_config(cfg.get("dp"), int(cfg["clients_per_round"]), num_clients)
    return mods + client_mods(dp)


def build_strategy(cfg: Mapping[str, Any]):
    """Instantiate ``cfg.strategy`` (its ``_target_``) with the experiment's sampling.

    ``clients_per_round`` of ``num_clients`` are sampled each round (seeded), federated
    evaluation is off (the server evaluates the global model on the test set).
    """
    from hydra.utils import instantiate

    num_clients, per_round = int(cfg["num_clients"]), int(cfg["clients_per_round"])
    options = dict(cfg["strategy"])
    try:
        return instantiate(
            options,
            fraction_train=per_round / num_clients,
            min_train_nodes=per_round,
            min_available_nodes=num_clients,
            fraction_evaluate=0.0,
            min_evaluate_nodes=0,
            min_valid_updates=int(cfg["min_valid_updates"]),
            seed=int(cfg["seed"]),
            absurd_norm_ratio=_absurd_norm_ratio(cfg),
        )
    except Exception as err:  # Hydra wraps the constructor's TypeError/ConfigError
        cause = err.__cause__ or err
        raise ConfigError(
            f"strategy={options['_target_']} cannot be built: {cause}".replace("\n", " ")
        ) from err


def _absurd_norm_ratio(cfg: Mapping[str, Any]) -> float | None:
    """The guard's ratio; off under DP, where clipping bounds every update and a
    data-dependent rejection would fall outside what the accountant covers."""
    from fedloom.strategies.reporting import DEFAULT_ABSURD_NORM_RATIO

    if (cfg.get("dp") or {}).get("mode", "none") != "none":
        return None
    ratio = cfg.get("absurd_norm_ratio", DEFAULT_ABSURD_NORM_RATIO)
    return None if ratio is None else float(ratio)


def train_config(cfg: Mapping[str, Any]):
    """What every client is told each round (a strategy may override, e.g. FedAvg's E, B)."""
    from flwr.app import ConfigRecord

    return ConfigRecord(
        {
            "local-epochs": int(cfg["local_epochs"]),
            "batch-size": int(cfg["batch_size"]),
            "learning-rate": float(cfg["learning_rate"]),
        }
    )
