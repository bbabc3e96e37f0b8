"""The settings of one experiment: the Hydra config checked and parsed once.

:meth:`RunSettings.from_config` is the only reader of the composed Hydra config (plain
dicts, ``OmegaConf.to_container(cfg, resolve=True)``) and the only place a bad setting
is refused: every error is one :class:`~fedloom.errors.ConfigError` line naming the key,
the bad value and what is allowed. The rules that tie settings together live here too
(``fraction_train`` sets ``clients_per_round``, DP turns the absurd-norm guard off, no
DP with compression, a deployment waits for fewer nodes). Everything that runs an
experiment receives a :class:`RunSettings`, or the part of it it needs, never the raw
config; :meth:`RunSettings.to_dict` gives the config back (``config.json``, checkpoints)
and parses to equal settings.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedloom.aggregation.weighting import SERVER_QUALITY_CHOICES
from fedloom.attacks import AttackPlan
from fedloom.errors import ConfigError
from fedloom.experiment.settings.sections import (
    CompressionSettings,
    DataSettings,
    EngineSettings,
    ModelSettings,
    PartitionSettings,
    StrategySettings,
    TrainingSettings,
    compression_section,
    early_stop_section,
    engine_dict,
    engine_section,
    named_section,
    verbose_setting,
)
from fedloom.experiment.settings.strategy import check_strategy
from fedloom.experiment.settings.values import integer as _int
from fedloom.experiment.settings.values import number as _number
from fedloom.faults import FaultPlan
from fedloom.privacy import PrivacySettings
from fedloom.strategies.reporting import DEFAULT_ABSURD_NORM_RATIO

__all__ = ["RunSettings", "TOP_LEVEL_KEYS", "DEFAULT_SERVER_VAL_FRACTION"]

TOP_LEVEL_KEYS = {
    "dataset", "partition", "model", "strategy", "engine", "compression",
    "num_clients", "clients_per_round", "num_rounds", "local_epochs", "batch_size",
    "learning_rate", "val_fraction", "seed", "min_valid_updates", "round_timeout", "plot",
    # reliability and security (fedloom.faults, fedloom.attacks, fedloom.privacy, checkpoints)
    "faults", "attack", "dp", "fraction_train", "absurd_norm_ratio", "checkpoint_every", "resume",
    # when to stop (fedloom.early_stopping) and how much the terminal shows
    "early_stop", "verbose",
    # client momentum (fedloom.clients), the server's validation split (weight_by=server_quality)
    "client_momentum", "server_val_fraction",
}

#: ``server_val_fraction``'s default: the share of the server's test set held out to score
#: updates under ``weight_by=server_quality`` (never part of the reported test accuracy)
DEFAULT_SERVER_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class RunSettings:
    """One experiment's checked settings. Build with :meth:`from_config`.

    ``deployed`` is set at a deployment's entry points (the launcher, the ServerApp,
    the ClientApp): it refuses ``resume`` and lowers :attr:`min_available_nodes`.
    """

    data: DataSettings
    partition: PartitionSettings
    model: ModelSettings
    strategy: StrategySettings
    engine: EngineSettings
    compression: CompressionSettings
    training: TrainingSettings
    faults: FaultPlan
    attack: AttackPlan
    privacy: PrivacySettings
    #: clients the data is split into; ``null`` in the config (``partition=natural``) is
    #: resolved here to the number of natural clients
    num_clients: int
    clients_per_round: int
    num_rounds: int
    val_fraction: float
    seed: int
    min_valid_updates: int
    round_timeout: float
    plot: bool = True
    fraction_train: float | None = None
    absurd_norm_ratio: float | None = DEFAULT_ABSURD_NORM_RATIO
    checkpoint_every: int = 0
    resume: str | None = None
    deployed: bool = False
    #: the ``early_stop`` rule (:class:`fedloom.early_stopping.EarlyStop`), or ``None``
    early_stop: Any = None
    #: the ``early_stop`` section as given (checked), for :meth:`to_dict`
    early_stop_config: dict[str, Any] = field(default_factory=dict)
    #: Flower's per-round INFO lines in the terminal too
    verbose: bool = False
    #: the ``dp`` section as given (checked), for :meth:`to_dict`
    privacy_config: dict[str, Any] = field(default_factory=lambda: {"mode": "none"})
    #: share of the server's test set held out to score updates under
    #: ``weight_by=server_quality`` (used only then; :attr:`server_quality`)
    server_val_fraction: float = DEFAULT_SERVER_VAL_FRACTION

    # ------------------------------------------------------------------ rules
    @property
    def absurd_norm_guard(self) -> float | None:
        """The absurd-norm guard's ratio, or ``None`` (off). Off under DP: clipping bounds
        every update there, and a data-dependent rejection would fall outside what the
        accountant covers."""
        if self.privacy.enabled or self.absurd_norm_ratio is None:
            return None
        return float(self.absurd_norm_ratio)

    @property
    def server_quality(self) -> bool:
        """The strategy weighs by server quality: the server holds out
        ``server_val_fraction`` of its test set to score each update, and reports the
        test accuracy on the rest (:mod:`fedloom.experiment.server_validation`)."""
        return self.strategy.options.get("weight_by") in SERVER_QUALITY_CHOICES

    @property
    def min_available_nodes(self) -> int:
        """Nodes a round waits for. Simulation: all ``num_clients``. Deployment:
        ``clients_per_round``, so a site that crashes or is switched off does not stall
        the federation while enough remain (the ServerApp waits for all of them once,
        before round 1)."""
        return self.clients_per_round if self.deployed else self.num_clients

    def strategy_sampling(self) -> dict[str, Any]:
        """The strategy's constructor arguments that the experiment sets: ``clients_per_round``
        of ``num_clients`` sampled each round (seeded; secret under DP), :attr:`min_available_nodes`, the
        minimum of valid updates, the absurd-norm guard; federated evaluation off (the
        server evaluates the global model on the test set)."""
        return {
            "fraction_train": self.clients_per_round / self.num_clients,
            "min_train_nodes": self.clients_per_round,
            "min_available_nodes": self.min_available_nodes,
            "fraction_evaluate": 0.0,
            "min_evaluate_nodes": 0,
            "min_valid_updates": self.min_valid_updates,
            "seed": self.seed,
            "absurd_norm_ratio": self.absurd_norm_guard,
            "count_message_bytes": True,  # history's bytes_up/down: whole messages
            **({"secure_sampling": True} if self.secret_sampling else {}),
        }

    @property
    def secret_sampling(self) -> bool:
        """Under DP the client sample is secret (``secure_sampling``: OS entropy, never the
        seed), unless the run is explicitly ``dp.insecure_reproducible``."""
        return self.privacy.enabled and not self.privacy.insecure_reproducible

    @property
    def experiment_title(self) -> str:
        """``"WeightedAverage on digits"``: the strategy's name and the dataset."""
        return f"{self.strategy.target.split('.', 2)[-1]} on {self.data.name}"

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, deployed: bool = False,
                    build_check: bool = True) -> RunSettings:
        """Check ``cfg`` (the resolved config as plain containers) and parse it.

        ``build_check`` builds the strategy once, so that its constructor's refusals are
        settings errors too; ``False`` skips that (and importing Hydra) for a dict an
        earlier parse checked, e.g. a SuperNode's settings between messages.

        ``num_clients: null`` (``partition=natural`` sets it) loads the dataset to count
        its natural clients; the settings hold that count.

        Raises:
            ConfigError: the first unknown key or bad value, in one line.
            DataError: ``num_clients`` is ``null`` and the dataset cannot be loaded or has
                no natural clients.
        """
        unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
        if unknown:
            raise ConfigError(f"{unknown[0]} is not a fedloom setting; known settings: "
                              f"{', '.join(sorted(TOP_LEVEL_KEYS))}.")
        num_clients, per_round, fraction = _clients(cfg)
        num_rounds = _int(cfg, "num_rounds", 1)
        local_epochs, batch_size = _int(cfg, "local_epochs", 1), _int(cfg, "batch_size", 1)
        seed = _int(cfg, "seed", 0)
        min_valid = _int(cfg, "min_valid_updates", 1)
        if min_valid > per_round:
            raise ConfigError(f"min_valid_updates={min_valid} is not allowed: it must be <= "
                              f"clients_per_round={per_round}, or no round could ever aggregate.")
        learning_rate = _number(cfg, "learning_rate", 0.0, float("inf"), low_open=True, high_open=True)
        momentum = (_number(cfg, "client_momentum", 0.0, 1.0, low_open=False, high_open=True)
                    if cfg.get("client_momentum") is not None else 0.0)
        server_val = (_number(cfg, "server_val_fraction", 0.0, 1.0, low_open=True, high_open=True)
                      if cfg.get("server_val_fraction") is not None else DEFAULT_SERVER_VAL_FRACTION)
        val_fraction = _number(cfg, "val_fraction", 0.0, 1.0, low_open=False, high_open=True)
        round_timeout = _number(cfg, "round_timeout", 0.0, float("inf"), low_open=True, high_open=False)
        engine = engine_section(cfg.get("engine") or {})
        compression = compression_section(cfg.get("compression") or {"method": "none"})
        every, resume, ratio = _reliability(cfg, deployed)
        faults = FaultPlan.from_config(cfg.get("faults") or {}, num_clients, seed)
        attack = AttackPlan.from_config(cfg.get("attack") or {"name": "none"}, num_clients, seed)
        dp_section = dict(cfg.get("dp") or {"mode": "none"})
        privacy = _privacy(dp_section, per_round, num_clients, compression)
        if attack.omniscient and compression.method != "none":
            raise ConfigError(f"attack={attack.name} is not allowed with compression={compression.method}: "
                              "the server-side attack reads the replies' plain weights. Use compression=none.")
        strategy = dict(cfg.get("strategy") or {})
        check_strategy(strategy, per_round)
        settings = cls(
            data=DataSettings(*named_section(cfg, "dataset", "name")),
            partition=PartitionSettings(*named_section(cfg, "partition", "scheme")),
            model=ModelSettings(*named_section(cfg, "model", "name")),
            strategy=StrategySettings(strategy), engine=engine, compression=compression,
            training=TrainingSettings(local_epochs, batch_size, learning_rate, momentum),
            faults=faults, attack=attack, privacy=privacy,
            num_clients=num_clients, clients_per_round=per_round, num_rounds=num_rounds,
            val_fraction=val_fraction, seed=seed, min_valid_updates=min_valid,
            round_timeout=round_timeout, plot=bool(cfg.get("plot", True)), fraction_train=fraction,
            absurd_norm_ratio=ratio, checkpoint_every=every, resume=resume, deployed=deployed,
            privacy_config=dp_section, early_stop=early_stop_section(cfg.get("early_stop")),
            early_stop_config=dict(cfg.get("early_stop") or {}),
            verbose=verbose_setting(cfg.get("verbose", False)),
            server_val_fraction=server_val,
        )
        if build_check:
            with _quiet_flower():  # a trial build for the constructor's own checks, now
                settings.strategy.instantiate(**settings.strategy_sampling())
        return settings

    def to_dict(self) -> dict[str, Any]:
        """The config these settings were parsed from, as plain JSON-compatible dicts
        (with ``clients_per_round`` as derived): ``from_config(s.to_dict()) == s``."""
        cfg = {
            "dataset": {"name": self.data.name, **self.data.options},
            "partition": {"scheme": self.partition.scheme, **self.partition.options},
            "model": {"name": self.model.name, **self.model.options},
            "strategy": self.strategy.options,
            "engine": engine_dict(self.engine),
            "compression": {"method": self.compression.method, **self.compression.options},
            "faults": self.faults.to_config(),
            "attack": self.attack.to_config(),
            "dp": self.privacy_config,
            "num_clients": self.num_clients,
            "clients_per_round": self.clients_per_round,
            "num_rounds": self.num_rounds,
            "local_epochs": self.training.local_epochs,
            "batch_size": self.training.batch_size,
            "learning_rate": self.training.learning_rate,
            "client_momentum": self.training.client_momentum,
            "server_val_fraction": self.server_val_fraction,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "min_valid_updates": self.min_valid_updates,
            "round_timeout": self.round_timeout,
            "plot": self.plot,
            "fraction_train": self.fraction_train,
            "absurd_norm_ratio": self.absurd_norm_ratio,
            "checkpoint_every": self.checkpoint_every,
            "resume": self.resume,
            "early_stop": self.early_stop_config,
            "verbose": self.verbose,
        }
        return copy.deepcopy(cfg)


# ---------------------------------------------------------------------- sections
@contextlib.contextmanager
def _quiet_flower():
    """Flower's warnings off (e.g. "fraction_evaluate is set to 0.0"): the trial build
    would print them a second time, and in every ClientApp process of a deployment."""
    from flwr.common.logger import FLOWER_LOGGER

    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel(logging.ERROR)
    try:
        yield
    finally:
        FLOWER_LOGGER.setLevel(level)


def _clients(cfg: Mapping[str, Any]) -> tuple[int, int, float | None]:
    """``(num_clients, clients_per_round, fraction_train)``. With ``fraction_train`` (FedAvg's
    C) set, ``clients_per_round`` is ``max(1, floor(C * num_clients))``, as Flower's FedAvg
    counts it."""
    num_clients = _num_clients(cfg)
    fraction = cfg.get("fraction_train")
    if fraction is None:
        per_round = _int(cfg, "clients_per_round", 1)
    else:
        fraction = _number(cfg, "fraction_train", 0.0, 1.0, low_open=True, high_open=False)
        per_round = max(1, int(fraction * num_clients + 1e-9))
    if per_round > num_clients:
        natural = " (the data's natural clients)" if cfg.get("num_clients") is None else ""
        raise ConfigError(f"clients_per_round={per_round} is not allowed: it must be <= "
                          f"num_clients={num_clients}{natural}.")
    return num_clients, per_round, fraction


def _num_clients(cfg: Mapping[str, Any]) -> int:
    """``num_clients``; ``null`` (or ``auto``) is one client per natural id, counted in the
    dataset, and needs ``partition=natural`` (which sets it). A given number for a natural
    split is checked against the data when it is split (``DataError``)."""
    value = cfg.get("num_clients")
    if not (value is None or (isinstance(value, str) and value.strip().lower() == "auto")):
        return _int(cfg, "num_clients", 1)
    scheme = dict(cfg.get("partition") or {}).get("scheme")
    if scheme != "natural":
        raise ConfigError(
            f"num_clients={'null' if value is None else value} (one client per natural id) "
            "needs partition=natural; "
            f"partition={scheme} splits the data into as many clients as you choose: set "
            "e.g. num_clients=100."
        )
    from fedloom.data import load_dataset, natural_client_count  # numpy only until a loader runs

    name, options = named_section(cfg, "dataset", "name")
    return natural_client_count(load_dataset(name, **options).train_client_ids)


def _privacy(section: Mapping[str, Any], per_round: int, num_clients: int,
             compression: CompressionSettings) -> PrivacySettings:
    """The ``dp`` section, parsed once; DP refuses compression."""
    privacy = PrivacySettings.from_config(section, per_round, num_clients)
    if privacy.enabled and compression.method != "none":
        raise ConfigError(
            f"dp={privacy.mode} is not allowed with compression={compression.method}: Flower's "
            "DP wrappers clip the arrays of each reply, which compression has re-encoded. "
            "Use compression=none with DP."
        )
    return privacy


def _reliability(cfg: Mapping[str, Any], deployed: bool) -> tuple[int, str | None, float | None]:
    """``(checkpoint_every, resume, absurd_norm_ratio)``, checked."""
    every = _int(cfg, "checkpoint_every", 0) if "checkpoint_every" in cfg else 0
    resume = cfg.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume):
        raise ConfigError(f"resume={resume!r} is not allowed: give a run directory, "
                          "e.g. resume=outputs/2026-01-01/12-00-00.")
    if resume and deployed:
        raise ConfigError(f"resume={resume} continues a simulation; a deployment starts at "
                          "round 1. Drop resume from the overrides.")
    ratio = cfg.get("absurd_norm_ratio", DEFAULT_ABSURD_NORM_RATIO)
    if "absurd_norm_ratio" in cfg and ratio is not None:
        ratio = _number(cfg, "absurd_norm_ratio", 1.0, float("inf"), low_open=True, high_open=True)
    return every, resume, ratio
