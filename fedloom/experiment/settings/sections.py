"""The sections of an experiment's settings: one frozen dataclass each, and the parsers of
the sections that need more than a name and options (engine, compression, early stop).
Used by :class:`~fedloom.experiment.settings.run.RunSettings`; every error is one
:class:`~fedloom.errors.ConfigError` line naming the key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedloom.errors import ConfigError
from fedloom.experiment.settings.values import is_int as _is_int
from fedloom.experiment.settings.values import is_number as _is_number

__all__ = [
    "ENGINES",
    "DataSettings",
    "PartitionSettings",
    "ModelSettings",
    "StrategySettings",
    "EngineSettings",
    "CompressionSettings",
    "TrainingSettings",
    "named_section",
    "engine_section",
    "engine_dict",
    "compression_section",
    "early_stop_section",
    "verbose_setting",
]

ENGINES = ("local", "flower")


@dataclass(frozen=True)
class DataSettings:
    """The ``dataset`` section: ``fedloom.data.load_dataset(name, **options)``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionSettings:
    """The ``partition`` section: how the training set is split (``scheme`` and its options)."""

    scheme: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSettings:
    """The ``model`` section: a ``fedloom.models`` architecture and its options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def spec(self, feature_shape, num_classes: int, seed: int):
        """The :class:`fedloom.models.ModelSpec` for inputs of ``feature_shape`` (one
        example, e.g. ``(64,)`` or ``(28, 28, 1)``) and ``num_classes`` outputs."""
        from fedloom.models import ModelSpec  # light: keras is imported only when built

        return ModelSpec(self.name, tuple(feature_shape), int(num_classes), seed=int(seed),
                         options=dict(self.options))


@dataclass(frozen=True)
class StrategySettings:
    """The ``strategy`` section: the constructor options (with Hydra's ``_target_``)
    that ``hydra.utils.instantiate`` builds the strategy from."""

    options: dict[str, Any]

    @property
    def target(self) -> str:
        """The strategy's import path, e.g. ``fedloom.strategies.WeightedAverage``."""
        return str(self.options["_target_"])

    def instantiate(self, **sampling: Any):
        """The strategy of ``options`` with the experiment's ``sampling`` arguments
        (see :meth:`RunSettings.strategy_sampling`).

        Raises:
            ConfigError: the target cannot be imported, or its constructor refused the
                options (in one line).
        """
        from hydra.utils import instantiate

        try:
            return instantiate(self.options, **sampling)
        except Exception as err:  # Hydra wraps the constructor's TypeError/ConfigError
            cause = err.__cause__ or err
            raise ConfigError(
                f"strategy={self.target} cannot be built: {cause}".replace("\n", " ")
            ) from err


@dataclass(frozen=True)
class EngineSettings:
    """The ``engine`` section: ``local`` (fedloom's) or ``flower`` (Ray) and its resources."""

    name: str
    num_cpus_per_client: int = 1
    num_gpus_per_client: float = 0.0
    ray_address: str | None = None
    #: the local engine's worker threads (resolved: ``null`` in the config = the cores)
    workers: int = 1
    #: ``engine.workers`` as given (``None``: the cores), for :meth:`RunSettings.to_dict`
    workers_config: Any = 1


@dataclass(frozen=True)
class CompressionSettings:
    """The ``compression`` section: the client-to-server codec (``none``: plain weights)."""

    method: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSettings:
    """What every client is told each round: E local epochs, batch size B, SGD step size,
    and client momentum beta (Karimireddy, He & Jaggi, ICML 2021; 0: off), sent as
    ``client-momentum`` only when on."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    client_momentum: float = 0.0



def named_section(cfg: Mapping[str, Any], section: str, key: str) -> tuple[str, dict[str, Any]]:
    """``(cfg[section][key], the section's other options)``."""
    options = dict(cfg.get(section) or {})
    if not isinstance(options.get(key), str):
        raise ConfigError(f"{section} has no {key}: pick one of conf/{section}/*.yaml, "
                          f"e.g. {section}=<file name>.")
    return options.pop(key), options


def engine_section(section: Mapping[str, Any]) -> EngineSettings:
    options = dict(section)
    name = options.pop("name", None)
    if name not in ENGINES:
        raise ConfigError(f"engine={name!r} is not allowed: use engine=local or engine=flower.")
    known = {"num_cpus_per_client", "num_gpus_per_client", "ray_address", "workers"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"engine.{unknown[0]} is not an engine setting; known: {', '.join(sorted(known))}.")
    if name == "flower" and not _installed("ray"):
        raise ConfigError("engine=flower needs Ray, which is not installed: pip install 'fedloom[ray]' "
                          "(Flower's simulation extra), or use engine=local.")
    cpus = options.get("num_cpus_per_client", 1)
    if not _is_int(cpus) or cpus < 1:
        raise ConfigError(f"engine.num_cpus_per_client={cpus!r} is not allowed: it must be an integer >= 1.")
    gpus = options.get("num_gpus_per_client", 0.0)
    if not _is_number(gpus) or gpus < 0:
        raise ConfigError(f"engine.num_gpus_per_client={gpus!r} is not allowed: it must be a number >= 0.")
    address = options.get("ray_address")
    from fedloom.engine.workers import resolve_workers  # engine.workers: null, "auto" or >= 1

    workers_config = options.get("workers")  # absent or null: every available core
    workers = resolve_workers(workers_config) if name == "local" else 1
    return EngineSettings(name, cpus, float(gpus), None if address is None else str(address),
                          workers, workers_config)


def _installed(distribution: str) -> bool:
    """Whether ``distribution`` is installed (its metadata, not a same-named folder)."""
    import importlib.metadata

    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def early_stop_section(section: Mapping[str, Any] | None):
    """The ``early_stop`` section as a :class:`fedloom.early_stopping.EarlyStop`, or ``None``."""
    from fedloom.early_stopping import EarlyStop

    try:
        return EarlyStop.from_config(section)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def verbose_setting(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"verbose={value!r} is not allowed: use verbose=true or verbose=false.")
    return value


def engine_dict(engine: EngineSettings) -> dict[str, Any]:
    if engine.name == "local":
        return {"name": "local", "workers": engine.workers_config}
    return {"name": engine.name, "num_cpus_per_client": engine.num_cpus_per_client,
            "num_gpus_per_client": engine.num_gpus_per_client, "ray_address": engine.ray_address}


def compression_section(section: Mapping[str, Any]) -> CompressionSettings:
    from fedloom.compression import make_codec  # checks the method and its options

    options = dict(section)
    method = options.pop("method", "none")
    make_codec(method, **options)
    return CompressionSettings(method, options)


