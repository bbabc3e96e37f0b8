"""The privacy side of one experiment run: :class:`PrivacyRun`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedloom.errors import ConfigError
from fedloom.privacy.accounting import (
    SampledRdpAccountant,
    accounting_problems,
    full_round_multiplier,
    round_noise_multiplier,
)
from fedloom.privacy.settings import PrivacySettings
from fedloom.privacy.wrappers import Release, ScreenReplies, dp_wrapper

__all__ = ["PrivacyRun", "INSECURE_WARNING"]

LOGGER = logging.getLogger("fedloom")

INSECURE_WARNING = (
    "dp.insecure_reproducible=true: the DP noise and the client sample follow the config "
    "seed, so anyone who knows the config can remove the noise. This run has no "
    "differential privacy guarantee (dp_epsilon is null); use it only to repeat experiments."
)


class PrivacyRun:
    """Everything a DP run needs besides the rounds themselves.

    The runner calls :meth:`wrap` once, :meth:`record_round` after every round (the
    history fields of that round), checks :attr:`budget_exhausted`, and saves
    :meth:`state_dict` in checkpoints.

    Randomness: the noise comes from a ``numpy.random.Generator`` seeded by OS entropy,
    created here and never saved, so neither the config nor a checkpoint can
    regenerate it (a resumed run draws fresh entropy). Only with
    ``dp.insecure_reproducible=true`` is it seeded from ``seed`` and checkpointed, and
    every record then says ``dp_epsilon: null`` with :data:`INSECURE_WARNING`.

    Args:
        settings: the checked ``dp`` section (``settings.enabled``).
        seed: the experiment seed; used only with ``dp.insecure_reproducible=true``.
    """

    def __init__(self, settings: PrivacySettings, *, seed: int = 0) -> None:
        if not settings.enabled:
            raise ValueError("PrivacyRun needs a dp mode other than none; received dp.mode=none.")
        self.settings = settings
        self.accountant = SampledRdpAccountant(settings)
        self.insecure = bool(settings.insecure_reproducible)
        entropy = np.random.SeedSequence([int(seed), 0xD1FF]) if self.insecure else np.random.SeedSequence()
        self.noise_rng = np.random.default_rng(entropy)
        self.wrapper: Any = None
        self.budget_exhausted = False
        self.stopped_reason = ""
        self._reason_recorded = False
        if self.insecure:
            LOGGER.warning(INSECURE_WARNING)

    # ------------------------------------------------------------------ set-up
    def wrap(self, strategy: Any, strategy_name: str = "") -> ScreenReplies:
        """``strategy`` (a fedloom Message-API strategy) inside the DP wrapper, behind
        :class:`ScreenReplies` (with the budget check when ``dp.max_epsilon`` is set).

        Raises:
            ConfigError: ``settings.strict`` and the strategy's aggregation is one the
                epsilon does not cover (:func:`accounting_problems`), its client
                sampling follows a seed while the run is not ``insecure_reproducible``,
                or ``dp.max_epsilon`` is below the epsilon of one round.
        """
        name = strategy_name or type(strategy).__name__
        problems = accounting_problems(strategy.schedule)
        if problems and self.settings.strict:
            raise ConfigError(
                f"dp={self.settings.mode} with strategy={name}: the reported epsilon would not "
                f"hold, because {problems[0]}. Use strategy=simple (a uniform mean), or set "
                "dp.strict=false to run anyway (epsilon is then no guarantee)."
            )
        for problem in problems:
            LOGGER.warning("dp: epsilon is not a guarantee for this run: %s", problem)
        if not self.insecure and not getattr(strategy, "secure_sampling", False):
            raise ConfigError(
                f"dp={self.settings.mode} with strategy={name}: its client sampling follows a "
                "seed, so the sample is not secret and the sampling amplification in epsilon "
                "does not hold. Build the strategy with secure_sampling=True, or set "
                "dp.insecure_reproducible=true (no guarantee)."
            )
        budget = self.settings.max_epsilon
        if budget is not None and self.accountant.num_releases == 0:
            first = SampledRdpAccountant(self.settings).epsilon_if(full_round_multiplier(self.settings))
            if first > budget:
                raise ConfigError(
                    f"dp.max_epsilon={budget:g} is below the epsilon of a single round "
                    f"({first:.4g}): the run could release nothing. Raise dp.max_epsilon, "
                    "dp.noise_multiplier or num_clients, or lower clients_per_round.")
        self.wrapper = dp_wrapper(strategy, self.settings, self.noise_rng)
        admit = self._admit if self.settings.max_epsilon is not None else None
        return ScreenReplies(self.wrapper, strategy, admit=admit)

    # ------------------------------------------------------------------ rounds
    def _multiplier(self, report: Any, release: Release | None) -> float | None:
        if release is None:
            return None
        num_used = 0
        if release.model_std is not None:
            if report is None or report.server_round != release.server_round:
                raise RuntimeError(
                    f"round {release.server_round} released a model but its report is missing: "
                    "the release cannot be accounted. Pass the round's RoundReport.")
            num_used = len(report.clients_used)
        return round_noise_multiplier(model_std=release.model_std, clipped_to=release.clipped_to,
                                      num_used=num_used, count_std=release.count_std)

    def _admit(self, report: Any, release: Release) -> str | None:
        """``None`` if releasing ``release`` keeps epsilon within ``dp.max_epsilon``,
        else why not (and the run is marked :attr:`budget_exhausted`)."""
        multiplier = self._multiplier(report, release)
        if multiplier is None:
            return None
        projected = self.accountant.epsilon_if(multiplier)
        if projected <= self.settings.max_epsilon:
            return None
        self.budget_exhausted = True
        self.stopped_reason = (
            f"privacy budget: round {release.server_round} was withheld, as releasing it would "
            f"bring epsilon from {self.accountant.epsilon():.4g} to {projected:.4g} > "
            f"dp.max_epsilon={self.settings.max_epsilon:g}")
        return self.stopped_reason

    def record_round(self, report: Any) -> dict[str, Any]:
        """Compose what round ``report.server_round`` released and return its history
        fields: ``dp_epsilon`` (spent so far; ``None`` if insecure), ``dp_delta``,
        ``dp_noise_multiplier`` (the round's Gaussian multiplier, 0 without a release),
        ``dp_clipping_norm`` (after the round), and ``stopped_reason`` once the budget
        stops the run (``dp_warning`` if insecure)."""
        release = getattr(self.wrapper, "last_release", None)
        if release is not None and report is not None and release.server_round != report.server_round:
            release = None
        multiplier = self._multiplier(report, release)
        if multiplier is not None:
            self.accountant.compose(multiplier)
        epsilon = self.accountant.epsilon()
        server_round = report.server_round if report is not None else getattr(release, "server_round", "?")
        if self.settings.max_epsilon is not None and not self.budget_exhausted:
            projected = self.accountant.epsilon_if(full_round_multiplier(self.settings))
            if projected > self.settings.max_epsilon:
                self.budget_exhausted = True
                self.stopped_reason = (
                    f"privacy budget: epsilon {epsilon:.4g} after round {server_round}; "
                    f"another round would bring it to {projected:.4g} > "
                    f"dp.max_epsilon={self.settings.max_epsilon:g}")
        fields: dict[str, Any] = {
            "dp_epsilon": None if self.insecure else epsilon,
            "dp_delta": float(self.settings.delta),
            "dp_noise_multiplier": float(multiplier or 0.0),
            "dp_clipping_norm": float(getattr(self.wrapper, "clipping_norm", float("nan"))),
        }
        if self.insecure:
            fields["dp_warning"] = INSECURE_WARNING
        if self.budget_exhausted and not self._reason_recorded:
            fields["stopped_reason"] = self.stopped_reason
            self._reason_recorded = True
            LOGGER.warning("dp: stopping the run: %s", self.stopped_reason)
        return fields

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The accountant's releases and the budget state; the noise generator's state
        only if ``insecure_reproducible``."""
        state: dict[str, Any] = {"accountant": self.accountant.state_dict(),
                                 "budget_exhausted": self.budget_exhausted,
                                 "stopped_reason": self.stopped_reason}
        if self.insecure:
            state["insecure_noise_rng"] = self.noise_rng.bit_generator.state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a saved noise state is used only by an
        ``insecure_reproducible`` run (a secure run keeps its fresh entropy)."""
        self.accountant.load_state_dict(state["accountant"])
        self.budget_exhausted = bool(state.get("budget_exhausted", False))
        self.stopped_reason = str(state.get("stopped_reason", ""))
        self._reason_recorded = self.budget_exhausted
        if self.insecure and state.get("insecure_noise_rng"):
            self.noise_rng.bit_generator.state = state["insecure_noise_rng"]
