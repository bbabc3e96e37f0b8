"""The settings a deployment adds: Flower's run config and a SuperNode's node config.

- :class:`DeploymentSettings`: the run config (``[tool.flwr.app.config]`` in
  ``pyproject.toml``, overridden with ``flwr run --run-config``), read by the ServerApp
  and the ClientApp: ``overrides`` (Hydra overrides of ``conf/``), ``output-dir`` and
  ``connect-timeout``.
- :class:`NodeSettings`: where one SuperNode's data is (``flower-supernode
  --node-config``): ``partition-id`` (with the optional check ``num-partitions``),
  or ``data-path``, and ``cache-dir``; checked against the experiment's ``num_clients``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedloom.errors import ConfigError

__all__ = ["DeploymentSettings", "NodeSettings"]


@dataclass(frozen=True)
class DeploymentSettings:
    """A run's Flower run config.

    Attributes:
        overrides: Hydra overrides of ``conf/``, as given to ``simulate.py``.
        output_dir: where the server writes the run (``""``: ``outputs/deploy/run-<id>``).
        connect_timeout: seconds the server waits for ``num_clients`` SuperNodes.
    """

    overrides: str = ""
    output_dir: str = ""
    connect_timeout: float = 600.0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> DeploymentSettings:
        """Check Flower's run config; one-line :class:`ConfigError` naming the key."""
        timeout = run_config.get("connect-timeout", 600.0)
        try:
            seconds = float(timeout)
        except (TypeError, ValueError):
            seconds = float("nan")
        if isinstance(timeout, bool) or not seconds >= 0:
            raise ConfigError(f"run config connect-timeout={timeout!r} is not allowed: it must "
                              "be a number of seconds >= 0, e.g. --run-config \"connect-timeout=600\".")
        return cls(str(run_config.get("overrides", "")), str(run_config.get("output-dir", "")),
                   seconds)


@dataclass(frozen=True)
class NodeSettings:
    """Where one SuperNode's data is: ``partition_id`` of the experiment's dataset, or its
    own ``data_path``; ``cache_dir`` (``None``: ``$FLWR_HOME/fedloom-cache``)."""

    partition_id: int | None = None
    data_path: str | None = None
    cache_dir: str | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], num_clients: int) -> NodeSettings:
        """Check a SuperNode's node config against the experiment's ``num_clients``.

        Raises:
            ConfigError: no data named, or a partition the experiment does not have.
        """
        cache_dir = str(node_config["cache-dir"]) if "cache-dir" in node_config else None
        if "data-path" in node_config:
            return cls(data_path=str(node_config["data-path"]), cache_dir=cache_dir)
        if "partition-id" not in node_config:
            raise ConfigError(
                "this SuperNode's node config names no data: start it with --node-config "
                "\"data-path=/path/to/site.npz\" (its own file) or \"partition-id=0 "
                "num-partitions=3\" (a partition of the experiment's dataset)."
            )
        given = node_config.get("num-partitions", num_clients)
        try:
            partition_id, num_partitions = int(node_config["partition-id"]), int(given)
        except (TypeError, ValueError):
            raise ConfigError(
                f"node config partition-id={node_config['partition-id']!r} / num-partitions="
                f"{node_config.get('num-partitions')!r} must be integers."
            ) from None
        if num_partitions != num_clients:
            raise ConfigError(
                f"node config num-partitions={num_partitions} but the experiment has "
                f"num_clients={num_clients}: run one SuperNode per client with "
                f"num-partitions={num_clients}, or set num_clients={num_partitions}."
            )
        if not 0 <= partition_id < num_clients:
            raise ConfigError(
                f"node config partition-id={partition_id} is out of range: it must be in "
                f"0..{num_clients - 1} (num_clients={num_clients})."
            )
        return cls(partition_id=partition_id, cache_dir=cache_dir)
