"""Checks of an experiment config, before anything is loaded or trained.

Every error is one line: the key, the bad value, what is allowed. Hydra already refuses
keys that are not in the config tree (``Could not override 'x'``); this module refuses
the ones added with ``+key=...`` and bad values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedloom.errors import ConfigError

__all__ = ["validate", "TOP_LEVEL_KEYS", "ENGINES"]

ENGINES = ("local", "flower")

TOP_LEVEL_KEYS = {
    "dataset", "partition", "model", "strategy", "engine", "compression",
    "num_clients", "clients_per_round", "num_rounds", "local_epochs", "batch_size",
    "learning_rate", "val_fraction", "seed", "min_valid_updates", "round_timeout", "plot",
}


def _int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer >= {minimum}.")
    return value


def _number(cfg: Mapping[str, Any], key: str, low: float, high: float, *,
            low_open: bool, high_open: bool) -> float:
    value = cfg.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a number in {interval}.")
    return float(value)


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first unknown key or bad value in ``cfg``.

    ``cfg`` is the resolved config as plain containers (``OmegaConf.to_container``).
    """
    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"{unknown[0]} is not a fedloom setting; known settings: {', '.join(sorted(TOP_LEVEL_KEYS))}."
        )
    num_clients = _int(cfg, "num_clients", 1)
    per_round = _int(cfg, "clients_per_round", 1)
    if per_round > num_clients:
        raise ConfigError(
            f"clients_per_round={per_round} is not allowed: it must be <= num_clients={num_clients}."
        )
    _int(cfg, "num_rounds", 1)
    _int(cfg, "local_epochs", 1)
    _int(cfg, "batch_size", 1)
    _int(cfg, "seed", 0)
    min_valid = _int(cfg, "min_valid_updates", 1)
    if min_valid > per_round:
        raise ConfigError(
            f"min_valid_updates={min_valid} is not allowed: it must be <= clients_per_round="
            f"{per_round}, or no round could ever aggregate."
        )
    _number(cfg, "learning_rate", 0.0, float("inf"), low_open=True, high_open=True)
    _number(cfg, "val_fraction", 0.0, 1.0, low_open=False, high_open=True)
    _number(cfg, "round_timeout", 0.0, float("inf"), low_open=True, high_open=False)
    engine = (cfg.get("engine") or {}).get("name")
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is not allowed: use engine=local or engine=flower.")
    compression = dict(cfg.get("compression") or {"method": "none"})
    from fedloom.compression import make_codec  # checks method and options

    make_codec(compression.pop("method", "none"), **compression)
    strategy = cfg.get("strategy") or {}
    if "_target_" not in strategy:
        raise ConfigError(
            "strategy has no _target_: pick one of conf/strategy/*.yaml, e.g. strategy=weighted."
        )
    beta = strategy.get("beta")
    if strategy.get("robust") == "trimmed_mean" and isinstance(beta, (int, float)):
        if not 0 <= beta < 0.5:
            raise ConfigError(f"strategy.beta={beta} is not allowed: it must be in [0, 0.5).")
        if int(beta * per_round) == 0 and beta > 0:
            raise ConfigError(
                f"strategy.beta={beta} trims nothing with clients_per_round={per_round} "
                f"(floor({beta} * {per_round}) = 0); raise beta to >= {1 / per_round:.3g} or "
                "sample more clients."
            )
    byzantine = strategy.get("num_byzantine")
    if strategy.get("robust") == "krum" and isinstance(byzantine, int) and per_round < byzantine + 3:
        raise ConfigError(
            f"strategy.num_byzantine={byzantine} needs clients_per_round >= {byzantine + 3} "
            f"for Krum; clients_per_round={per_round}."
        )
