"""What one SuperNode trains on: its partition of the configured dataset, or its own file.

A SuperNode says where its data is in its node config (``flower-supernode
--node-config "..."``):

================  ==============================================================
key               meaning
================  ==============================================================
``partition-id``  this node is client ``partition-id`` of the experiment's dataset
                  split into ``num_clients`` parts exactly as in simulation (same
                  ``dataset``, ``partition``, ``seed``, ``val_fraction``): a demo or
                  a benchmark of real deployment on public data
``num-partitions``  optional check: must equal the experiment's ``num_clients``
``data-path``     this node's own ``.npz`` file (the realistic case: the data never
                  leaves the site): keys ``x`` (``(N, *features)``, numbers) and ``y``
                  (``(N,)`` integer labels ``0..K-1``, the same class coding at every
                  site); ``val_fraction`` of it is kept for local validation
``cache-dir``     where the node keeps its prepared data (default:
                  ``$FLWR_HOME/fedloom-cache``)
================  ==============================================================

Why a cache: in deployment every message starts a fresh ``flwr-clientapp`` process, so
nothing in memory survives from one round to the next. The first message of a run
composes the experiment config (Hydra), loads and splits the data and writes it to
``<cache-dir>/<key>.npz``, with ``key`` a hash of everything that decides the data
(settings, partition id, the file's size and modification time); the node's resolved
settings go into ``context.state``, which the SuperNode keeps between messages of a
run (with the run's settings, as the JSON of ``RunSettings.to_dict``). Every later message reads one small ``.npz``
and imports no Hydra, scikit-learn or ``flwr-datasets``.

The number of classes of a ``data-path`` node's model is read from the global model the
server sends (its output layer): a site cannot count the federation's classes from its
own labels (a hospital may see no case of some class), and the server's dataset may be
a file only the server has.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedloom.data import ClientData, train_val_split
from fedloom.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fedloom.experiment.settings import NodeSettings, RunSettings

__all__ = ["NodeSetup", "load_node", "read_site_file"]

#: ``context.state`` record holding a node's resolved settings for the current run.
STATE_KEY = "fedloom-node"


@dataclass(frozen=True)
class NodeSetup:
    """A SuperNode's data and model settings for one run.

    Attributes:
        data: the node's train and validation splits.
        num_classes: classes of the experiment's model, or ``None`` when the node
            learns it from the global model (``data-path`` nodes).
        settings: the experiment's settings, as the ServerApp parsed them.
    """

    data: ClientData
    num_classes: int | None
    settings: RunSettings

    def model_spec(self, num_classes: int | None = None):
        """The :class:`fedloom.models.ModelSpec` of this node (``num_classes`` fills in
        a ``data-path`` node's count, taken from the global model)."""
        classes = self.num_classes if self.num_classes is not None else num_classes
        if classes is None:
            raise ConfigError(
                "the node's number of classes is unknown: a data-path node learns it from "
                "the global model, so the message must carry the model's weights."
            )
        if self.data.y_train.size and int(self.data.y_train.max()) >= classes:
            raise DataError(
                f"this node's labels go up to {int(self.data.y_train.max())} but the "
                f"global model has {classes} classes. Code the labels 0..{classes - 1} "
                "at every site, as the server's dataset does."
            )
        return self.settings.model.spec(self.data.x_train.shape[1:], classes, self.settings.seed)


def load_node(context) -> NodeSetup:
    """The :class:`NodeSetup` of this SuperNode for the run of ``context``.

    Reads ``context.state`` and the cache file when an earlier message of the run left
    them; otherwise composes the experiment config from the run config's
    ``overrides``, prepares the data and stores both (see the module docstring).

    Raises:
        ConfigError: the node config names no data, or disagrees with the experiment.
        DataError: the node's data cannot be loaded.
    """
    from fedloom.experiment.settings import DeploymentSettings, RunSettings

    overrides = DeploymentSettings.from_run_config(context.run_config).overrides
    record = context.state.config_records.get(STATE_KEY)
    if record is None or record["overrides"] != overrides or not Path(record["data-file"]).is_file():
        record = _prepare(context, overrides)
        context.state[STATE_KEY] = record
    data, num_classes = _read_cache(Path(record["data-file"]))
    settings = RunSettings.from_config(json.loads(record["config"]), deployed=True, build_check=False)
    return NodeSetup(data, num_classes, settings)


def read_site_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a site's ``.npz``: float32 features and int64 labels, checked."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(
            f"data-path={file} does not exist on this SuperNode. Give the node its own "
            "data: --node-config \"data-path=/path/to/site.npz\" (keys x and y)."
        )
    if file.suffix.lower() != ".npz":
        raise DataError(
            f"data-path={file} is not a .npz file. Save the site's data with "
            "numpy.savez(path, x=features, y=integer_labels)."
        )
    with np.load(file, allow_pickle=False) as npz:
        if not {"x", "y"} <= set(npz.files):
            raise DataError(
                f"data-path={file} has keys {sorted(npz.files)}; a site file needs x "
                "(features, one row per example) and y (integer labels 0..K-1)."
            )
        x, y = npz["x"], npz["y"]
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(f"data-path={file}: x is not numeric (dtype {x.dtype}).") from None
    if x.ndim == 1:
        x = x[:, None]
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x) or len(x) == 0:
        raise DataError(
            f"data-path={file} has {len(x)} feature rows and {len(y)} labels; give one "
            "integer label per example (and at least one example)."
        )
    integral = y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.array_equal(y, np.round(y)))
    if not integral:
        raise DataError(
            f"data-path={file}: y must hold integer class labels 0..K-1; got dtype "
            f"{y.dtype}. Map class names to integers the same way at every site."
        )
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"data-path={file}: labels must be >= 0; found {int(y.min())}.")
    return x, y


def _prepare(context, overrides: str) -> Any:
    """Compose the experiment, write this node's data to the cache, return the state record."""
    from flwr.app import ConfigRecord

    from fedloom.deploy.config import compose_experiment
    from fedloom.experiment.settings import NodeSettings, RunSettings

    settings = RunSettings.from_config(compose_experiment(overrides), deployed=True)
    node = NodeSettings.from_node_config(context.node_config, settings.num_clients)
    if node.data_path is not None:
        key, build = _site_file_data(node.data_path, settings)
    else:
        key, build = _partition_data(node.partition_id, settings)
    file = _cache_dir(node) / f"{key}.npz"
    if not file.is_file():
        data, num_classes = build()
        _write_cache(file, data, num_classes)
    return ConfigRecord({
        "overrides": overrides,
        "data-file": str(file),
        "config": json.dumps(settings.to_dict()),
    })


def _partition_data(partition_id: int, settings: RunSettings):
    from fedloom.experiment import builders

    data_key = builders.data_key(settings)
    key = _digest({"data": data_key, "partition-id": partition_id})

    def build():
        dataset, clients = builders.federated_data(data_key)
        return clients[partition_id], dataset.num_classes

    return key, build


def _site_file_data(path: str, settings: RunSettings):
    file = Path(path).expanduser().resolve()
    stat = file.stat() if file.is_file() else None
    key = _digest({
        "file": str(file),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "val_fraction": settings.val_fraction,
        "seed": settings.seed,
    })

    def build():
        x, y = read_site_file(file)
        train, val = train_val_split(np.arange(len(y)), settings.val_fraction, settings.seed)
        return ClientData(x[train], y[train], x[val], y[val]), None

    return key, build


def _cache_dir(node: NodeSettings) -> Path:
    if node.cache_dir is not None:
        return Path(node.cache_dir).expanduser()
    from flwr.supercore.utils import get_flwr_home

    return Path(get_flwr_home()) / "fedloom-cache"


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def _write_cache(file: Path, data: ClientData, num_classes: int | None) -> None:
    """Write atomically, so a node killed mid-write leaves no half file behind."""
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npz")
    np.savez(temporary, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val,
             y_val=data.y_val, num_classes=np.int64(-1 if num_classes is None else num_classes))
    os.replace(temporary, file)


def _read_cache(file: Path) -> tuple[ClientData, int | None]:
    with np.load(file, allow_pickle=False) as npz:
        data = ClientData(npz["x_train"], npz["y_train"], npz["x_val"], npz["y_val"])
        num_classes = int(npz["num_classes"])
    return data, (None if num_classes < 0 else num_classes)
