"""Differential privacy for fedloom runs: Flower's DP wrappers around a fedloom strategy,
and a Rényi-DP accountant that reports (epsilon, delta) after every round.

The mechanism is DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning
Differentially Private Recurrent Language Models", https://arxiv.org/abs/1710.06963):
each sampled client's update ``w_k - g`` is clipped to L2 norm ``C``, the server
averages the ``m`` clipped updates and adds Gaussian noise of standard deviation
``z * C / m`` (``z``: noise multiplier). fedloom does not re-implement it: it wraps the
fedloom strategy in Flower's own wrappers (``flwr.serverapp.strategy``), with clipping
on the server or, through Flower's ``fixedclipping_mod``/``adaptiveclipping_mod``, on
the clients. Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021,
"Differentially Private Learning with Adaptive Clipping", https://arxiv.org/abs/1905.03871)
moves ``C`` each round towards a quantile of the update norms, from a noised count.

Accounting: the moments accountant (Abadi et al. 2016, "Deep Learning with Differential
Privacy", https://arxiv.org/abs/1607.00133) in its Rényi-DP form (Mironov 2017,
"Rényi Differential Privacy", https://arxiv.org/abs/1702.07476) for the subsampled
Gaussian mechanism (Mironov, Talwar, Zhang 2019, https://arxiv.org/abs/1908.10530), as
computed by Google's ``dp-accounting`` (``RdpAccountant``). Each round that releases a
model composes one event with sampling rate ``q = clients_per_round / num_clients``:

- ``accounting="poisson"`` (default; client-level add/remove-one adjacency): a
  ``PoissonSampledDpEvent(q, Gaussian(z_eff))``, as in DP-FedAvg's analysis.
  fedloom samples a fixed-size subset per round, not a Poisson one; this is the usual
  approximation of the DP-FedAvg literature.
- ``accounting="without_replacement"`` (replace-one adjacency): a
  ``SampledWithoutReplacementDpEvent`` (Wang, Balle, Kasiviswanathan 2019), which matches
  fedloom's sampler exactly. Replacing one client moves the sum of clipped updates by up
  to ``2C``, so the Gaussian enters with multiplier ``z_eff / 2``.

``z_eff`` is the round's real noise-to-sensitivity ratio. Flower divides the noise by
the configured ``m`` but the mean by the number of updates actually used, ``m_used``
(fewer when clients crash or are rejected), so one client's share of the mean is
``C / m_used`` and ``z_eff = z * m_used / m`` (fewer clients, less privacy). For
adaptive clipping, the update noise ``z_update`` (derived by Flower from ``z`` and the
count noise ``sigma_b``) and the count release compose to
``z_eff = ((z_update * m_used / m)^-2 + sigma_b^-2)^-1/2``; fedloom uses ``sigma_b`` for
the raw clipped count (sensitivity 1) that Flower noises, where Andrew et al.'s
``2 sigma_b`` assumes a centred bit — a slightly more conservative epsilon.

What the epsilon covers: the released global models, for a uniform mean of clipped
updates. A strategy that weights clients unequally, uses a robust reducer or a
server step would make the reported epsilon wrong; :func:`accounting_problems` names
them, and a run refuses them unless ``dp.strict=false``.

Flower's wrappers drop the whole round when any reply is an error, and clip every reply
before the fedloom strategy checks it (a malformed reply crashes the clipping).
:class:`ScreenReplies` puts fedloom's reply checks in front of the wrapper, so faults
stay per-client under DP too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedloom.errors import ConfigError

__all__ = [
    "DP_MODES",
    "PrivacySettings",
    "PrivacyAccountant",
    "ScreenReplies",
    "accounting_problems",
    "effective_noise_multiplier",
    "wrap_strategy",
    "client_mods",
    "prepare_privacy",
    "privacy_metrics",
    "seed_global_numpy",
    "RDP_ORDERS",
]

LOGGER = logging.getLogger("fedloom")

DP_MODES = ("none", "central_fixed", "central_adaptive")
CLIPPING_SIDES = ("server", "client")
ACCOUNTING = ("poisson", "without_replacement")
_COMMON = {"mode", "clipping_side", "noise_multiplier", "delta", "accounting", "strict"}
_KEYS = {
    "none": {"mode"},
    "central_fixed": _COMMON | {"clipping_norm"},
    "central_adaptive": _COMMON | {"initial_clipping_norm", "target_clipped_quantile",
                                   "clip_norm_lr", "clipped_count_stddev"},
}


def _positive(key: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"dp.{key}={value!r} is not allowed: it must be a number {'>=' if allow_zero else '>'} 0.")
    return float(value)


@dataclass(frozen=True)
class PrivacySettings:
    """The ``dp`` config section, checked. See ``conf/dp/*.yaml`` for the meaning of
    each key; ``num_sampled`` is ``clients_per_round``, ``num_clients`` the population."""

    mode: str
    num_sampled: int
    num_clients: int
    clipping_side: str = "server"
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    accounting: str = "poisson"
    strict: bool = True
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
        if self.accounting not in ACCOUNTING:
            raise ConfigError(f"dp.accounting={self.accounting!r} is not allowed: use poisson or without_replacement.")
        if not isinstance(self.strict, bool):
            raise ConfigError(f"dp.strict={self.strict!r} is not allowed: use true or false.")
        _positive("noise_multiplier", self.noise_multiplier)
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ConfigError(f"dp.delta={self.delta!r} is not allowed: it must be in (0, 1), e.g. 1e-5 (well below 1/num_clients).")
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
    def count_stddev(self) -> float:
        """``sigma_b`` of adaptive clipping (Flower's default: ``m / 20``)."""
        if self.clipped_count_stddev is not None:
            return float(self.clipped_count_stddev)
        return self.num_sampled / 20

    @property
    def sampling_rate(self) -> float:
        return self.num_sampled / self.num_clients

    @property
    def update_noise_multiplier(self) -> float:
        """The multiplier of the noise on the model (adaptive: Flower's ``z_update``)."""
        if self.mode != "central_adaptive":
            return float(self.noise_multiplier)
        z, two_sigma = float(self.noise_multiplier), 2 * self.count_stddev
        return (z ** -2 - two_sigma ** -2) ** -0.5


def effective_noise_multiplier(settings: PrivacySettings, num_used: int) -> float:
    """The round's noise-to-sensitivity ratio with ``num_used`` updates in the mean (see
    the module docstring)."""
    if num_used < 1:
        raise ValueError(f"effective_noise_multiplier needs num_used >= 1; received {num_used}.")
    share = min(1.0, num_used / settings.num_sampled)
    z_update = settings.update_noise_multiplier * share
    if settings.mode != "central_adaptive":
        return z_update
    return (z_update ** -2 + settings.count_stddev ** -2) ** -0.5


class _QuietNonConvergence(logging.Filter):
    """dp-accounting logs a warning each time a low fractional RDP order does not
    converge; that order is then left out (its RDP is infinite), which only makes the
    bound conservative. One line per round of that is noise, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


#: RDP orders the accountant evaluates. dp-accounting's default list holds 15 fractional
#: orders below 11, each a slowly converging series (0.15 s per round here); three
#: fractional orders plus the integers cost 0.03 s and change epsilon by ~1% (upwards:
#: fewer orders can only make the bound looser, never wrong).
RDP_ORDERS = (1.25, 1.5, 1.75, *range(2, 65), 96, 128, 256, 512, 1024)


class PrivacyAccountant:
    """Cumulative (epsilon, delta) of a DP run, with ``dp_accounting.rdp.RdpAccountant``
    (orders :data:`RDP_ORDERS`).

    Call :meth:`record_release` once per round that released a model; :meth:`epsilon`
    is the privacy spent so far at ``settings.delta``.
    """

    def __init__(self, settings: PrivacySettings) -> None:
        import dp_accounting  # in fedloom[sim]; imported only for DP runs

        absl = logging.getLogger("absl")
        if not any(isinstance(f, _QuietNonConvergence) for f in absl.filters):
            absl.addFilter(_QuietNonConvergence())
        self.settings = settings
        self._dp = dp_accounting
        relation = (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
                    if settings.accounting == "poisson"
                    else dp_accounting.NeighboringRelation.REPLACE_ONE)
        self._accountant = dp_accounting.rdp.RdpAccountant(orders=RDP_ORDERS, neighboring_relation=relation)
        self.releases: list[float] = []  # z_eff of each release, in order

    def _event(self, z_eff: float):
        dp = self._dp
        if self.settings.accounting == "poisson":
            return dp.PoissonSampledDpEvent(self.settings.sampling_rate, dp.GaussianDpEvent(z_eff))
        return dp.SampledWithoutReplacementDpEvent(
            self.settings.num_clients, self.settings.num_sampled, dp.GaussianDpEvent(z_eff / 2))

    def record_release(self, num_used: int, count: int = 1) -> float:
        """Compose ``count`` rounds' releases, each averaged over ``num_used`` updates;
        returns their effective noise multiplier."""
        z_eff = effective_noise_multiplier(self.settings, num_used)
        self._accountant.compose(self._event(z_eff), count)
        self.releases.extend([z_eff] * count)
        return z_eff

    def epsilon(self) -> float:
        """Epsilon spent so far at ``settings.delta`` (0 before any release)."""
        if not self.releases:
            return 0.0
        return float(self._accountant.get_epsilon(self.settings.delta))

    def state_dict(self) -> dict[str, Any]:
        return {"releases": list(self.releases)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replay the saved releases (RDP composition is a sum: order-free and exact, so
        equal releases are composed in one step)."""
        from collections import Counter

        self.__init__(self.settings)  # type: ignore[misc]
        releases = [float(z) for z in state.get("releases", [])]
        for z_eff, count in Counter(releases).items():
            self._accountant.compose(self._event(z_eff), count)
        self.releases = releases


def accounting_problems(method: Any) -> list[str]:
    """Why the accountant's epsilon would not hold for a fedloom ``Pipeline`` or
    ``Schedule`` (empty: it holds).

    It holds for a uniform mean of the clipped updates, optionally after ``ClipNorm``
    and followed by the identity server step — i.e. ``SimpleAverage`` or a hybrid
    ``Pipeline(WeightBy("uniform"), Mean())``.
    """
    from fedloom.aggregation import ClipNorm, Mean, ServerStep, WeightBy

    phases = getattr(method, "phases", None) or [(1, method)]
    problems = []
    for start, pipeline in phases:
        where = f"{pipeline.name!r} (from round {start})"
        for stage in pipeline.stages:
            if isinstance(stage, (ClipNorm, Mean)):
                continue
            if isinstance(stage, WeightBy):
                if stage.by != "uniform":
                    problems.append(f"{where} weights clients by {stage.by!r}, so one client can "
                                    "count more than 1/m of the mean the noise is scaled to")
            elif isinstance(stage, ServerStep):
                if stage.learning_rate != 1.0 or stage.momentum != 0.0:
                    problems.append(f"{where} applies a server step (learning rate "
                                    f"{stage.learning_rate}, momentum {stage.momentum}) before "
                                    "Flower adds the noise")
            else:
                problems.append(f"{where} uses {type(stage).__name__}, whose output has no "
                                "C/m sensitivity bound")
    return problems


class ScreenReplies(Strategy):
    """A Message-API strategy wrapper that removes the replies ``screen`` (the fedloom
    strategy inside) would reject, then hands the rest to ``strategy`` (a Flower DP
    wrapper around ``screen``).

    Without it, one error reply makes Flower's DP wrappers skip the whole round, and a
    reply with the wrong arrays crashes their clipping. Screened replies are counted in
    the fedloom strategy's round report with their reasons. When nothing is left, the
    fedloom strategy records a skipped round and no model (and no noise) is released.
    """

    def __init__(self, strategy: Strategy, screen: Any) -> None:
        super().__init__()
        self.strategy = strategy
        self.screen = screen

    def __repr__(self) -> str:
        return f"ScreenReplies({self.strategy!r})"

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = self.screen.screen_replies(replies)
        if not kept:
            return self.screen.aggregate_train(server_round, [])
        return self.strategy.aggregate_train(server_round, kept)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def wrap_strategy(strategy: Any, settings: PrivacySettings) -> Strategy:
    """``strategy`` inside the Flower DP wrapper ``settings`` asks for, behind
    :class:`ScreenReplies` (``strategy`` itself when DP is off)."""
    if not settings.enabled:
        return strategy
    from flwr.serverapp import strategy as flower

    m = settings.num_sampled
    if settings.mode == "central_fixed":
        wrapper_class = (flower.DifferentialPrivacyServerSideFixedClipping if settings.clipping_side == "server"
                         else flower.DifferentialPrivacyClientSideFixedClipping)
        wrapper = wrapper_class(strategy, settings.noise_multiplier, settings.clipping_norm, m)
    else:
        wrapper_class = (flower.DifferentialPrivacyServerSideAdaptiveClipping if settings.clipping_side == "server"
                         else flower.DifferentialPrivacyClientSideAdaptiveClipping)
        wrapper = wrapper_class(
            strategy, settings.noise_multiplier, m,
            initial_clipping_norm=settings.initial_clipping_norm,
            target_clipped_quantile=settings.target_clipped_quantile,
            clip_norm_lr=settings.clip_norm_lr,
            clipped_count_stddev=settings.count_stddev,
        )
    return ScreenReplies(wrapper, strategy)


def _train_only(mod):
    """Flower's clipping mods insist on a clipping norm in every message's config; only
    train messages carry one."""

    def train_only(msg: Message, context, call_next):
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        return mod(msg, context, call_next)

    train_only.__name__ = f"train_only({getattr(mod, '__name__', mod)})"
    return train_only


def client_mods(settings: PrivacySettings) -> list:
    """The client mods for client-side clipping (Flower's ``fixedclipping_mod`` or
    ``adaptiveclipping_mod``, on train messages); none otherwise."""
    if not settings.enabled or settings.clipping_side != "client":
        return []
    from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

    return [_train_only(fixedclipping_mod if settings.mode == "central_fixed" else adaptiveclipping_mod)]


def prepare_privacy(strategy: Any, settings: PrivacySettings, strategy_name: str = ""
                    ) -> tuple[Any, PrivacyAccountant | None]:
    """``(server_strategy, accountant)`` for a run: ``strategy`` wrapped as ``settings``
    asks, and the accountant of its releases (``(strategy, None)`` when DP is off).

    Seeds numpy's global RNG, which Flower's wrappers draw their noise from, with the
    run's seed so that DP runs repeat (and checkpoints save that RNG's state).

    Raises:
        ConfigError: ``settings.strict`` and the strategy's aggregation is not one the
            accountant covers (see :func:`accounting_problems`).
    """
    if not settings.enabled:
        return strategy, None
    problems = accounting_problems(strategy.schedule)
    if problems and settings.strict:
        raise ConfigError(
            f"dp={settings.mode} with strategy={strategy_name or type(strategy).__name__}: "
            f"the reported epsilon would not hold, because {problems[0]}. Use strategy=simple "
            "(a uniform mean), or set dp.strict=false to run anyway (epsilon is then no guarantee)."
        )
    for problem in problems:
        LOGGER.warning("dp: epsilon is not a guarantee for this run: %s", problem)
    return wrap_strategy(strategy, settings), PrivacyAccountant(settings)


def seed_global_numpy(seed: int) -> None:
    """Seed ``np.random`` (used by Flower's DP wrappers, never by fedloom) from ``seed``."""
    import numpy as np

    np.random.seed(int(np.random.SeedSequence([int(seed), 0xD1FF]).generate_state(1)[0]))


def privacy_metrics(accountant: PrivacyAccountant, server_strategy: Any, report: Any) -> dict[str, float]:
    """Compose this round's release (if the round released a model) and return the
    history fields ``dp_epsilon``, ``dp_delta``, ``dp_noise_multiplier`` (this round's
    effective multiplier, 0 without a release) and ``dp_clipping_norm`` (after the round)."""
    z_eff = 0.0
    if report is not None and not report.skipped_reason and report.clients_used:
        z_eff = accountant.record_release(len(report.clients_used))
    wrapper = getattr(server_strategy, "strategy", server_strategy)
    return {
        "dp_epsilon": accountant.epsilon(),
        "dp_delta": float(accountant.settings.delta),
        "dp_noise_multiplier": float(z_eff),
        "dp_clipping_norm": float(getattr(wrapper, "clipping_norm", float("nan"))),
    }
