"""Checks of Hydra command-line overrides against the ``conf/`` tree, before Hydra runs.

Hydra refuses a misspelt key or group option too, but in several lines and with exit
code 1; :func:`check_overrides` refuses them in one line naming the nearest known key,
so they fail like every other bad setting (:mod:`fedloom.experiment.settings`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedloom.errors import ConfigError

__all__ = ["check_overrides"]


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
    from omegaconf import OmegaConf  # only here: a ClientApp process never needs it

    conf_dir = Path(conf_dir)
    root = OmegaConf.load(conf_dir / "config.yaml")
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
    defaults = root["defaults"] if "defaults" in root else []
    chosen = {key: value for entry in defaults if isinstance(entry, Mapping)
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
        node = _group_node(conf_dir / head / f"{option}.yaml", head)
        if not _has_key(node, rest):
            known = sorted(str(k) for k in node)
            raise ConfigError(
                f"{key}={value} is not allowed: conf/{head}/{option}.yaml has no {rest!r}"
                f"{_nearest(rest, known)}; its settings: {', '.join(known)} "
                f"(add a new one with +{key}=...)."
            )


def _group_node(path: Path, group: str) -> Any:
    """The settings of a group's option file under ``group``: the file itself, or its
    ``group`` key when it is in Hydra's global package (``# @package _global_``, which
    lets ``partition=natural`` set the top-level ``num_clients`` too)."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(path)
    first_line = path.read_text(encoding="utf-8").lstrip().partition("\n")[0]
    if first_line.replace(" ", "") == "#@package_global_":
        node = node.get(group) or OmegaConf.create({})
    return node


def _has_key(node: Any, dotted: str) -> bool:
    """Whether ``dotted`` names a key of ``node``, also one whose value is ``???``."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(node)  # "???" stays a string, not a missing key
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _nearest(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {match[0]}?)" if match else ""
