"""The ``dp`` config section, checked once into :class:`PrivacySettings`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedloom.errors import ConfigError

__all__ = ["DP_MODES", "ACCOUNTING", "PrivacySettings"]

DP_MODES = ("none", "central_fixed", "central_adaptive")
CLIPPING_SIDES = ("server", "client")
#: ``without_replacement``: fedloom's sampler (exactly m of N, secret), replace-one
#: adjacency. ``no_amplification``: no credit for sampling (add/remove-one), for when
#: the adversary may learn who was sampled.
ACCOUNTING = ("without_replacement", "no_amplification")
_COMMON = {"mode", "clipping_side", "noise_multiplier", "delta", "accounting", "strict",
           "max_epsilon", "insecure_reproducible"}
_KEYS = {
    "none": {"mode"},
    "central_fixed": _COMMON | {"clipping_norm"},
    "central_adaptive": _COMMON | {"initial_clipping_norm", "target_clipped_quantile",
                                   "clip_norm_lr", "clipped_count_stddev"},
}


def _positive(key: str, value: Any) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ConfigError(f"dp.{key}={value!r} is not allowed: it must be a number > 0.")
    return float(value)


@dataclass(frozen=True)
class PrivacySettings:
    """The ``dp`` config section, checked (see ``conf/dp/*.yaml`` for each key).

    ``num_sampled`` is ``clients_per_round`` (m), ``num_clients`` the population (N).
    """

    mode: str
    num_sampled: int
    num_clients: int
    clipping_side: str = "server"
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    accounting: str = "without_replacement"
    strict: bool = True
    max_epsilon: float | None = None
    insecure_reproducible: bool = False
    clipping_norm: float = 1.0
    initial_clipping_norm: float = 0.1
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, num_sampled: int,
                    num_clients: int) -> PrivacySettings:
        """Check the ``dp`` section; one-line :class:`ConfigError` naming the key."""
        options = dict(section or {"mode": "none"})
        mode = options.get("mode", "none")
        if mode not in DP_MODES:
            raise ConfigError(f"dp.mode={mode!r} is not allowed: use one of {', '.join(DP_MODES)} (dp=none|central_fixed|central_adaptive).")
        unknown = sorted(set(options) - _KEYS[mode])
        if unknown:
            raise ConfigError(f"dp.{unknown[0]} is not a setting of dp mode {mode!r}; its settings: {', '.join(sorted(_KEYS[mode]))}.")
        settings = cls(num_sampled=num_sampled, num_clients=num_clients, **options)
        if mode != "none":
            settings._check()
        return settings

    def _check(self) -> None:
        if self.clipping_side not in CLIPPING_SIDES:
            raise ConfigError(f"dp.clipping_side={self.clipping_side!r} is not allowed: use server or client.")
        if self.accounting == "poisson":
            raise ConfigError(
                "dp.accounting=poisson is not allowed: fedloom samples exactly clients_per_round "
                "clients per round, not a Poisson sample, so a Poisson epsilon would not describe "
                "the run. Use without_replacement (the default) or no_amplification.")
        if self.accounting not in ACCOUNTING:
            raise ConfigError(f"dp.accounting={self.accounting!r} is not allowed: use {' or '.join(ACCOUNTING)}.")
        for key in ("strict", "insecure_reproducible"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"dp.{key}={getattr(self, key)!r} is not allowed: use true or false.")
        if not 1 <= self.num_sampled <= self.num_clients:
            raise ConfigError(f"dp needs 1 <= clients_per_round <= num_clients; received {self.num_sampled} of {self.num_clients}.")
        _positive("noise_multiplier", self.noise_multiplier)
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ConfigError(f"dp.delta={self.delta!r} is not allowed: it must be in (0, 1), e.g. 1e-5 (well below 1/num_clients).")
        if self.max_epsilon is not None:
            _positive("max_epsilon", self.max_epsilon)
        if self.mode == "central_fixed":
            _positive("clipping_norm", self.clipping_norm)
            return
        _positive("initial_clipping_norm", self.initial_clipping_norm)
        _positive("clip_norm_lr", self.clip_norm_lr)
        if not (isinstance(self.target_clipped_quantile, (int, float)) and 0 <= self.target_clipped_quantile <= 1):
            raise ConfigError(f"dp.target_clipped_quantile={self.target_clipped_quantile!r} is not allowed: it must be in [0, 1].")
        if self.clipped_count_stddev is not None:
            _positive("clipped_count_stddev", self.clipped_count_stddev)
        if self.noise_multiplier >= 2 * self.count_stddev:
            raise ConfigError(
                f"dp.noise_multiplier={self.noise_multiplier} is not allowed with "
                f"dp.clipped_count_stddev={self.count_stddev:g}: adaptive clipping needs "
                f"noise_multiplier < 2 * clipped_count_stddev (Andrew et al. 2021). Raise "
                f"dp.clipped_count_stddev (null = clients_per_round / 20) or lower the multiplier."
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def adaptive(self) -> bool:
        return self.mode == "central_adaptive"

    @property
    def count_stddev(self) -> float:
        """``sigma_b``: std of the noise on adaptive clipping's clipped count (Flower's
        default ``m / 20``)."""
        if self.clipped_count_stddev is not None:
            return float(self.clipped_count_stddev)
        return self.num_sampled / 20

    @property
    def update_noise_multiplier(self) -> float:
        """The multiplier of the noise on the model: ``z`` (fixed clipping), or Flower's
        ``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2`` (adaptive clipping)."""
        if not self.adaptive:
            return float(self.noise_multiplier)
        z, two_sigma = float(self.noise_multiplier), 2 * self.count_stddev
        return (z ** -2 - two_sigma ** -2) ** -0.5
