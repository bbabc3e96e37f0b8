"""Checks of an experiment config, before anything is loaded or trained.

Every error is one line: the key, the bad value, what is allowed. :func:`check_overrides`
refuses command-line keys and group options that the config tree lacks before Hydra does
(Hydra's own message spans several lines); :func:`validate` refuses the keys added with
``+key=...`` and bad values.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedloom.errors import ConfigError

__all__ = [
    "validate",
    "resolved",
    "clients_per_round",
    "check_overrides",
    "TOP_LEVEL_KEYS",
    "ENGINES",
]

ENGINES = ("local", "flower")

TOP_LEVEL_KEYS = {
    "dataset", "partition", "model", "strategy", "engine", "compression",
    "num_clients", "clients_per_round", "num_rounds", "local_epochs", "batch_size",
    "learning_rate", "val_fraction", "seed", "min_valid_updates", "round_timeout", "plot",
    # reliability and security (fedloom.faults, fedloom.attacks, fedloom.privacy, checkpoints)
    "faults", "attack", "dp", "fraction_train", "absurd_norm_ratio", "checkpoint_every", "resume",
    # when to stop (fedloom.early_stopping) and how much the terminal shows
    "early_stop", "verbose",
}


def clients_per_round(cfg: Mapping[str, Any]) -> int:
    """Clients sampled per round: ``clients_per_round``, or, when ``fraction_train``
    (FedAvg's C) is set, ``max(1, floor(C * num_clients))`` as Flower's ``FedAvg`` does."""
    fraction = cfg.get("fraction_train")
    if fraction is None:
        return int(cfg["clients_per_round"])
    return max(1, int(float(fraction) * int(cfg["num_clients"]) + 1e-9))


def resolved(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``clients_per_round`` derived from ``fraction_train`` when that is
    set (what the run and its ``config.json`` use)."""
    out = dict(cfg)
    if cfg.get("fraction_train") is not None:
        out["clients_per_round"] = clients_per_round(cfg)
    return out


def _int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg.get(key)
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer >= {minimum}.")
    return value


def _number(cfg: Mapping[str, Any], key: str, low: float, high: float, *,
            low_open: bool, high_open: bool) -> float:
    value = cfg.get(key)
    ok = _is_number(value)
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
    if cfg.get("fraction_train") is not None:
        _number(cfg, "fraction_train", 0.0, 1.0, low_open=True, high_open=False)
        cfg = resolved(cfg)
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
    if engine == "local":
        from fedloom.engine.workers import resolve_workers

        resolve_workers((cfg.get("engine") or {}).get("workers"))
    if engine == "flower" and not _installed("ray"):
        raise ConfigError(
            "engine=flower needs Ray, which is not installed: pip install 'fedloom[ray]' "
            "(Flower's simulation extra), or use engine=local."
        )
    compression = dict(cfg.get("compression") or {"method": "none"})
    from fedloom.compression import make_codec  # checks method and options

    make_codec(compression.pop("method", "none"), **compression)
    _reliability(cfg, num_clients, per_round)
    _early_stop_and_output(cfg)
    strategy = cfg.get("strategy") or {}
    if "_target_" not in strategy:
        raise ConfigError(
            "strategy has no _target_: pick one of conf/strategy/*.yaml, e.g. strategy=weighted."
        )
    _robust_settings(strategy)
    bucket = strategy.get("bucket_size", 1) if "robust" in strategy else 1
    groups = -(-per_round // bucket)  # what the robust rule sees: ceil(K / bucket_size)
    beta = strategy.get("beta")
    if strategy.get("robust") == "trimmed_mean" and isinstance(beta, (int, float)):
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
    byzantine = strategy.get("num_byzantine")
    if strategy.get("robust") == "krum" and isinstance(byzantine, int) and groups < byzantine + 3:
        needed = f"clients_per_round >= {byzantine + 3}" if bucket == 1 else (
            f"{byzantine + 3} groups, i.e. clients_per_round >= {(byzantine + 2) * bucket + 1} "
            f"with strategy.bucket_size={bucket}")
        raise ConfigError(
            f"strategy.num_byzantine={byzantine} needs {needed} for Krum; "
            f"clients_per_round={per_round}."
        )


def _robust_settings(strategy: Mapping[str, Any]) -> None:
    """The filter, grouping, Krum and clipping settings of ``Hybrid.robust_weighted``,
    named by their Hydra keys (the stage constructors would name their own parameters)."""
    if "robust" not in strategy:
        return
    checks = [  # key, default, valid?, what is allowed
        ("max_norm_ratio", None, lambda v: v is None or _is_number(v) and v > 1,
         "a number > 1 (a multiple of the typical update distance), or null to skip the norm filter"),
        ("norm_window", 1, lambda v: _is_int(v) and v >= 1,
         "an integer >= 1 (rounds the norm filter's reference looks back over)"),
        ("clip_radius", 1.0, lambda v: _is_number(v) and v > 0,
         "a number > 0 (a multiple of the round's median distance from the centre)"),
        ("bucket_size", 1, lambda v: _is_int(v) and v >= 1,
         "an integer >= 1 (updates averaged into each group before the robust rule; 1: no groups)"),
        ("num_byzantine", 0, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ]
    for key, default, valid, allowed in checks:
        value = strategy.get(key, default)
        if not valid(value):
            raise ConfigError(f"strategy.{key}={value!r} is not allowed: it must be {allowed}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reliability(cfg: Mapping[str, Any], num_clients: int, per_round: int) -> None:
    """Checkpoints, the absurd-norm guard, fault injection, attacks and DP settings."""
    if "checkpoint_every" in cfg:
        _int(cfg, "checkpoint_every", 0)
    resume = cfg.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume):
        raise ConfigError(f"resume={resume!r} is not allowed: give a run directory, e.g. resume=outputs/2026-01-01/12-00-00.")
    ratio = cfg.get("absurd_norm_ratio")
    if ratio is not None:
        _number(cfg, "absurd_norm_ratio", 1.0, float("inf"), low_open=True, high_open=True)
    seed = int(cfg["seed"])
    from fedloom.attacks import AttackPlan
    from fedloom.faults import FaultPlan
    from fedloom.privacy import PrivacySettings

    FaultPlan.from_config(cfg.get("faults") or {}, num_clients, seed)
    AttackPlan.from_config(cfg.get("attack") or {"name": "none"}, num_clients, seed)
    dp = PrivacySettings.from_config(cfg.get("dp"), per_round, num_clients)
    compression = (cfg.get("compression") or {}).get("method", "none")
    if dp.enabled and compression != "none":
        raise ConfigError(
            f"dp={dp.mode} is not allowed with compression={compression}: Flower's DP "
            "wrappers clip the arrays of each reply, which compression has re-encoded. "
            "Use compression=none with DP."
        )


def _early_stop_and_output(cfg: Mapping[str, Any]) -> None:
    """The ``early_stop`` section (:class:`fedloom.early_stopping.EarlyStop`) and ``verbose``."""
    from fedloom.early_stopping import EarlyStop

    try:
        EarlyStop.from_config(cfg.get("early_stop"))
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    verbose = cfg.get("verbose", False)
    if not isinstance(verbose, bool):
        raise ConfigError(f"verbose={verbose!r} is not allowed: use verbose=true or verbose=false.")


def check_overrides(overrides: Sequence[str], conf_dir: str | Path) -> None:
    """Refuse command-line overrides that name no config file or no setting, in one line:
    a ``group=option`` with no ``conf/<group>/<option>.yaml`` (``strategy=fedprox``), a
    key that ``conf/config.yaml`` lacks (``rounds=5``, with the nearest known key), or a
    ``group.key`` that the chosen option lacks (``strategy.betta=0.1``).

    Hydra refuses these too, but with a multi-line message and exit code 1; this runs
    before Hydra so that they fail like every other bad setting. Overrides that add
    (``+key``), delete (``~key``) or set Hydra's own settings (``hydra.*``) are left to
    Hydra.
    """
    conf_dir = Path(conf_dir)
    root = OmegaConf.load(conf_dir / "config.yaml")
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
    chosen = {key: value for entry in root.get("defaults", []) if isinstance(entry, Mapping)
              for key, value in entry.items()}
    pairs = [arg.split("=", 1) for arg in overrides if "=" in arg and not arg.startswith("-")]
    for key, value in pairs:
        if key.lstrip("+~") not in groups or "(" in value:  # leave sweep functions to Hydra
            continue
        key = key.lstrip("+~")
        for option in value.split(","):
            if option and not (conf_dir / key / f"{option}.yaml").is_file():
                choices = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
                raise ConfigError(
                    f"{key}={option!r} is not allowed: choose one of {', '.join(choices)} "
                    f"(conf/{key}/*.yaml)."
                )
        chosen[key] = value
    for key, value in pairs:
        if key[0] in "+~" or key.startswith("hydra.") or "@" in key or key in groups:
            continue
        head, _, rest = key.partition(".")
        if head not in groups:
            known = sorted(set(root) - {"defaults", "hydra"} | groups)
            if head not in known:
                raise ConfigError(f"{key}={value} is not allowed: {head!r} is not a fedloom "
                                  f"setting{_nearest(head, known)}; known settings: {', '.join(known)}.")
            continue
        option = chosen.get(head)
        if not option or "," in option or "(" in option:
            continue  # a sweep over options: each run's own config decides
        node = OmegaConf.load(conf_dir / head / f"{option}.yaml")
        if not _has_key(node, rest):
            known = sorted(str(k) for k in node)
            raise ConfigError(
                f"{key}={value} is not allowed: conf/{head}/{option}.yaml has no {rest!r}"
                f"{_nearest(rest, known)}; its settings: {', '.join(known)} "
                f"(add a new one with +{key}=...)."
            )


def _has_key(node: Any, dotted: str) -> bool:
    """Whether ``dotted`` names a key of ``node``, also one whose value is ``???``."""
    node = OmegaConf.to_container(node)  # "???" stays a string, not a missing key
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _nearest(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {match[0]}?)" if match else ""
