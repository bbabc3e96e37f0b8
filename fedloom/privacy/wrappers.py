"""Flower's DP wrappers with secret noise, and the reply screen in front of them.

Flower 1.42's wrappers draw their Gaussian noise (and adaptive clipping's count noise)
from numpy's global RNG, which anything in the process may seed (fedloom used to seed
it from the config: whoever knew the seed could subtract the noise). The classes here
are Flower's wrappers with only the noise source replaced: a ``numpy.random.Generator``
they are given (seeded from OS entropy by :class:`fedloom.privacy.PrivacyRun`). They
also record what each round released (:class:`Release`) for the accountant, and the
adaptive ones add the noise at ``C(t)``, the norm the round's updates were clipped to
(Flower 1.42 updates the norm to ``C(t+1)`` first and scales the noise to it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy import Strategy

from fedloom.errors import ConfigError
from fedloom.privacy.settings import PrivacySettings

__all__ = ["Release", "ScreenReplies", "dp_wrapper", "client_mods"]


@dataclass
class Release:
    """What a DP wrapper released in ``server_round``: the std of the noise on each
    coordinate of the mean and the norm the updates were clipped to (``None``: no
    model), and the std of the noise on the clipped count (``None``: no count)."""

    server_round: int
    model_std: float | None = None
    clipped_to: float | None = None
    count_std: float | None = None


class _SecretNoise:
    """Replaces the noise source of a Flower DP wrapper (mixed in before it)."""

    noise_rng: np.random.Generator
    last_release: Release | None = None

    def __init__(self, *args, noise_rng: np.random.Generator, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise_rng = noise_rng

    def _clipped_with(self) -> float:
        return float(self.clipping_norm)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        self.last_release = Release(server_round)
        return super().aggregate_train(server_round, replies)

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        clipped_to = self._clipped_with()
        std = float(self.noise_multiplier * clipped_to / self.num_sampled_clients)  # Flower's compute_stdv
        arrays = aggregated.to_numpy_ndarrays()
        for array in arrays:
            array += self.noise_rng.normal(0.0, std, array.shape).astype(array.dtype)
        self.last_release.model_std, self.last_release.clipped_to = std, clipped_to
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(aggregated.keys(), arrays, strict=True)})


class _SecretAdaptiveNoise(_SecretNoise):
    """Adaptive clipping: the count noise from the secret generator too, and the model
    noise at the norm the round was clipped with, not the updated one."""

    _norm_before_update: float | None = None

    def _clipped_with(self) -> float:
        return float(self._norm_before_update if self._norm_before_update is not None
                     else self.clipping_norm)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        self._norm_before_update = None
        return super().aggregate_train(server_round, replies)

    def _noisy_fraction(self, count: int, total: int) -> float:
        self.last_release.count_std = float(self.clipped_count_stddev)
        return float(self.noise_rng.normal(count, self.clipped_count_stddev)) / float(total)

    def _geometric_update(self, clipped_fraction: float) -> None:
        self._norm_before_update = float(self.clipping_norm)
        super()._geometric_update(clipped_fraction)


class ServerSideFixedClipping(_SecretNoise, flower.DifferentialPrivacyServerSideFixedClipping):
    """Flower's ``DifferentialPrivacyServerSideFixedClipping`` with secret noise."""


class ClientSideFixedClipping(_SecretNoise, flower.DifferentialPrivacyClientSideFixedClipping):
    """Flower's ``DifferentialPrivacyClientSideFixedClipping`` with secret noise."""


class ServerSideAdaptiveClipping(_SecretAdaptiveNoise, flower.DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's ``DifferentialPrivacyServerSideAdaptiveClipping`` with secret noise at C(t)."""


class ClientSideAdaptiveClipping(_SecretAdaptiveNoise, flower.DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's ``DifferentialPrivacyClientSideAdaptiveClipping`` with secret noise at C(t)."""


def dp_wrapper(strategy: Strategy, settings: PrivacySettings, noise_rng: np.random.Generator) -> Strategy:
    """``strategy`` inside the DP wrapper ``settings`` asks for, noised from ``noise_rng``."""
    m = settings.num_sampled
    server = settings.clipping_side == "server"
    if settings.mode == "central_fixed":
        wrapper_class = ServerSideFixedClipping if server else ClientSideFixedClipping
        return wrapper_class(strategy, settings.noise_multiplier, settings.clipping_norm, m,
                             noise_rng=noise_rng)
    wrapper_class = ServerSideAdaptiveClipping if server else ClientSideAdaptiveClipping
    return wrapper_class(strategy, settings.noise_multiplier, m,
                         initial_clipping_norm=settings.initial_clipping_norm,
                         target_clipped_quantile=settings.target_clipped_quantile,
                         clip_norm_lr=settings.clip_norm_lr,
                         clipped_count_stddev=settings.count_stddev, noise_rng=noise_rng)


class ScreenReplies(Strategy):
    """A Message-API strategy wrapper that removes the replies ``screen`` (the fedloom
    strategy inside) would reject, then hands the rest to ``strategy`` (a DP wrapper
    around ``screen``).

    Without it, one error reply makes Flower's DP wrappers skip the whole round, and a
    reply with the wrong arrays crashes their clipping. Screened replies are counted in
    the fedloom strategy's round report with their reasons.

    ``admit(report, release)``, when given, is asked after the DP wrapper has built the
    round's release and before it leaves the server; it returns ``None`` to let it go,
    or why not (the privacy budget would be exceeded): the release is then withheld (no
    model is returned, an adaptive clipping norm is put back) and the round's report
    is marked skipped with that reason.

    Screening goes through the fedloom strategy's public ``screen_replies`` (which
    records each left-out reply with ``reject``, e.g. ``zero_update``: a reply equal to
    the global model, which Flower 1.42's clipping would divide by zero).

    Raises:
        ConfigError: ``screen`` runs SCAFFOLD: its control variate is built from the
            clients' un-noised ``delta_c`` and sent to every client, outside what the
            DP wrapper clips and noises.
    """

    def __init__(self, strategy: Strategy, screen, admit: Callable | None = None) -> None:
        if getattr(screen, "scaffold", False):
            raise ConfigError(
                "SCAFFOLD cannot run under differential privacy: the server control variate "
                "c is updated from the clients' delta_c without clipping or noise and sent "
                "to every client. Use dp=none with SCAFFOLD, or another strategy under DP.")
        super().__init__()
        self.strategy = strategy
        self.screen = screen
        self.admit = admit

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
            self.strategy.last_release = Release(server_round)
            return self.screen.aggregate_train(server_round, [])
        norm_before = getattr(self.strategy, "clipping_norm", None)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        release = getattr(self.strategy, "last_release", None)
        report = self.screen.reports[-1] if self.screen.reports else None
        refusal = None if self.admit is None or release is None else self.admit(report, release)
        if refusal is None:
            return arrays, metrics
        self.strategy.last_release = Release(server_round)
        if norm_before is not None:
            self.strategy.clipping_norm = norm_before
        if report is None:
            return None, metrics
        report.skipped_reason = refusal
        return None, MetricRecord(report.as_metrics())

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


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
