"""An experiment's settings: the Hydra config checked and parsed once (:class:`RunSettings`).

- ``run``: :class:`RunSettings`, the rules between settings, ``to_dict``.
- ``sections``: one frozen dataclass per section (data, partition, model, strategy,
  engine, compression, training) and the parsers of engine, compression, early stop.
- ``strategy``: what can be checked of the ``strategy`` section before it is built.
- ``deployment``: Flower's run config and a SuperNode's node config.
- ``values``: one-line checks of single values.
- ``overrides``: :func:`check_overrides`, the command line against ``conf/`` before Hydra.

This package is the only reader of the raw config and the only place a bad setting is
refused; everything else receives a :class:`RunSettings` or the part it needs.
"""

from fedloom.experiment.settings.deployment import DeploymentSettings, NodeSettings
from fedloom.experiment.settings.overrides import check_overrides
from fedloom.experiment.settings.run import TOP_LEVEL_KEYS, RunSettings
from fedloom.experiment.settings.sections import (
    ENGINES,
    CompressionSettings,
    DataSettings,
    EngineSettings,
    ModelSettings,
    PartitionSettings,
    StrategySettings,
    TrainingSettings,
)
from fedloom.strategies.reporting import DEFAULT_ABSURD_NORM_RATIO

__all__ = [
    "RunSettings",
    "DataSettings",
    "PartitionSettings",
    "ModelSettings",
    "StrategySettings",
    "EngineSettings",
    "CompressionSettings",
    "TrainingSettings",
    "DeploymentSettings",
    "NodeSettings",
    "check_overrides",
    "DEFAULT_ABSURD_NORM_RATIO",
    "TOP_LEVEL_KEYS",
    "ENGINES",
]
