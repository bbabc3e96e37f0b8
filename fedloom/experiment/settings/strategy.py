"""Checks of the ``strategy`` section against the round's number of clients.

The section stays a dict of constructor options for ``hydra.utils.instantiate``
(``StrategySettings.instantiate``); checked here are the settings that only make sense
with the round's number of clients: the robust rules' against ``clients_per_round``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedloom.errors import ConfigError
from fedloom.experiment.settings.values import is_int, is_number

__all__ = ["check_strategy"]


def check_strategy(strategy: Mapping[str, Any], per_round: int) -> None:
    """Raise :class:`ConfigError` for the first bad setting of the ``strategy`` section."""
    if "_target_" not in strategy:
        raise ConfigError(
            "strategy has no _target_: pick one of conf/strategy/*.yaml, e.g. strategy=weighted."
        )
    _robust_settings(strategy)
    bucket = strategy.get("bucket_size", 1) if "robust" in strategy else 1
    groups = -(-per_round // bucket)  # what the robust rule sees: ceil(K / bucket_size)
    beta = strategy.get("beta")
    if strategy.get("robust") == "trimmed_mean" and isinstance(beta, (int, float)):
        _trimmed_mean(beta, per_round, bucket, groups)
    byzantine = strategy.get("num_byzantine")
    if strategy.get("robust") == "krum" and isinstance(byzantine, int) and groups < byzantine + 3:
        needed = f"clients_per_round >= {byzantine + 3}" if bucket == 1 else (
            f"{byzantine + 3} groups, i.e. clients_per_round >= {(byzantine + 2) * bucket + 1} "
            f"with strategy.bucket_size={bucket}")
        raise ConfigError(
            f"strategy.num_byzantine={byzantine} needs {needed} for Krum; "
            f"clients_per_round={per_round}."
        )
    if strategy.get("robust") == "bulyan" and isinstance(byzantine, int) and groups < 4 * byzantine + 3:
        raise ConfigError(
            f"strategy.num_byzantine={byzantine} needs {4 * byzantine + 3} updates for Bulyan "
            f"(n >= 4f + 3) and clients_per_round={per_round} gives {groups}"
            + (f" groups of strategy.bucket_size={bucket}" if bucket > 1 else "")
            + ". Lower num_byzantine or sample more clients."
        )


def _trimmed_mean(beta: float, per_round: int, bucket: int, groups: int) -> None:
    if not 0 <= beta < 0.5:
        raise ConfigError(f"strategy.beta={beta} is not allowed: it must be in [0, 0.5).")
    seen = f"clients_per_round={per_round}" + (
        f" (strategy.bucket_size={bucket}: {groups} group{'s' * (groups != 1)})" if bucket > 1 else "")
    if int(beta * groups) == 0 and beta > 0 and groups < 3:
        raise ConfigError(
            f"strategy.beta={beta} trims nothing with {seen}: a trimmed "
            "mean drops floor(beta * K) < K / 2 updates at each end, so it needs "
            "at least 3 updates (or groups). Sample more clients, lower "
            "strategy.bucket_size or use strategy=robust_median."
        )
    if int(beta * groups) == 0 and beta > 0:
        raise ConfigError(
            f"strategy.beta={beta} trims nothing with {seen} "
            f"(floor({beta} * {groups}) = 0); raise beta to >= {1 / groups:.3g}"
            + (", lower strategy.bucket_size" if bucket > 1 else "") + " or sample more clients."
        )


def _robust_settings(strategy: Mapping[str, Any]) -> None:
    """The filter, grouping, Krum and clipping settings of ``Hybrid.robust_weighted``,
    named by their Hydra keys (the stage constructors would name their own parameters)."""
    if "robust" not in strategy:
        return
    checks = [  # key, default, valid?, what is allowed
        ("max_norm_ratio", None, lambda v: v is None or is_number(v) and v > 1,
         "a number > 1 (a multiple of the typical update distance), or null to skip the norm filter"),
        ("norm_window", 1, lambda v: is_int(v) and v >= 1,
         "an integer >= 1 (rounds the norm filter's reference looks back over)"),
        ("clip_radius", 1.0, lambda v: is_number(v) and v > 0,
         "a number > 0 (a multiple of the round's median distance from the centre)"),
        ("bucket_size", 1, lambda v: is_int(v) and v >= 1,
         "an integer >= 1 (updates averaged into each group before the robust rule; 1: no groups)"),
        ("num_byzantine", 0, lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    ]
    for key, default, valid, allowed in checks:
        value = strategy.get(key, default)
        if not valid(value):
            raise ConfigError(f"strategy.{key}={value!r} is not allowed: it must be {allowed}.")
