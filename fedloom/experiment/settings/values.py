"""Checks of single config values: one-line errors naming the key and what is allowed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedloom.errors import ConfigError

__all__ = ["integer", "number", "is_int", "is_number"]


def integer(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    """``cfg[key]``, which must be an integer >= ``minimum``."""
    value = cfg.get(key)
    if not is_int(value) or value < minimum:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer >= {minimum}.")
    return value


def number(cfg: Mapping[str, Any], key: str, low: float, high: float, *,
           low_open: bool, high_open: bool) -> float:
    """``cfg[key]``, which must be a number in the interval from ``low`` to ``high``."""
    value = cfg.get(key)
    ok = is_number(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a number in {interval}.")
    return float(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
