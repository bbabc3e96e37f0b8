"""What each round releases, as one Gaussian multiplier, and its cumulative (epsilon,
delta) through Flower's ``RdpAccountant`` with the sampler fedloom actually uses.

A round of central DP releases up to two noised quantities (Flower's wrappers):

- the model: the mean of ``m_used`` updates clipped to L2 norm ``C``, plus Gaussian
  noise of std ``sigma_model`` per coordinate (Flower: ``z * C / m``);
- with adaptive clipping, the count of clipped updates, plus noise of std ``sigma_b``.

Neighbouring runs differ in one client's data (replace-one adjacency, the one that
matches sampling exactly m of N without replacement): the sum of the clipped updates
moves by up to ``2C`` and the count by up to 1. The released mean is the sum divided by
``m_used``, so the sum carries noise of std ``sigma_model * m_used``, and the vector
(sum, count) is one Gaussian mechanism of multiplier (Mironov 2017, Prop. 7 composition
of Gaussians)::

    z_round = ((2 C / (sigma_model * m_used))^2 + (1 / sigma_b)^2)^(-1/2)

Fewer clients used (crashes, rejections) means a smaller ``z_round``: less privacy. A
skipped round that still released the count composes ``z_round = sigma_b``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fedloom.privacy.settings import PrivacySettings

__all__ = ["round_noise_multiplier", "full_round_multiplier", "SampledRdpAccountant",
           "accounting_problems"]


def round_noise_multiplier(*, model_std: float | None, clipped_to: float | None,
                           num_used: int, count_std: float | None) -> float | None:
    """The Gaussian multiplier of one round's release (module docstring), under
    replace-one adjacency; ``None`` when the round released nothing.

    Args:
        model_std: std of the noise added to each coordinate of the released mean
            (``None``: no model released).
        clipped_to: the L2 norm the updates in that mean were clipped to.
        num_used: updates in the mean.
        count_std: std of the noise on the released clipped count (``None``: none).
    """
    inverse_square = 0.0
    if model_std is not None:
        if not (model_std > 0 and clipped_to and clipped_to > 0 and num_used >= 1):
            raise ValueError(f"a model release needs model_std > 0, clipped_to > 0 and num_used >= 1; "
                             f"received {model_std}, {clipped_to}, {num_used}.")
        inverse_square += (2.0 * clipped_to / (model_std * num_used)) ** 2
    if count_std is not None:
        if not count_std > 0:
            raise ValueError(f"a count release needs count_std > 0; received {count_std}.")
        inverse_square += count_std ** -2
    if inverse_square == 0.0:
        return None
    # 12 significant digits: equal releases get equal multipliers despite float noise in
    # C(t) (the ledger merges them), at a relative change of at most 5e-13
    return float(f"{inverse_square ** -0.5:.12g}")


def full_round_multiplier(settings: PrivacySettings) -> float:
    """``z_round`` of a round in which all ``m`` sampled clients are used (noise
    ``z_update C / m``, as Flower adds it)."""
    m = settings.num_sampled
    return round_noise_multiplier(
        model_std=settings.update_noise_multiplier / m, clipped_to=1.0, num_used=m,
        count_std=settings.count_stddev if settings.adaptive else None)


class _QuietNonConvergence(logging.Filter):
    """dp-accounting logs a warning whenever a fractional RDP order does not converge;
    that order is then left out (infinite RDP), which only makes the bound looser."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


class SampledRdpAccountant:
    """Cumulative (epsilon, delta) of a DP run: Flower's ``RdpAccountant`` (over
    dp-accounting, its default RDP orders) fed with the run's real releases.

    What fedloom adds to Flower's accountant: the multiplier of each release
    (:func:`round_noise_multiplier`), the sampler (``WITHOUT_REPLACEMENT`` with
    ``REPLACE_ONE``, exactly ``m`` of ``N``; or ``NO_AMPLIFICATION``), a ledger of
    releases merged by multiplier (so resuming and budget projections replay a few
    distinct events, not every round) and :meth:`epsilon_if`.
    """

    def __init__(self, settings: PrivacySettings) -> None:
        from flwr.serverapp import NeighboringRelation, PrivacyConfig, SamplingMethod

        absl = logging.getLogger("absl")
        if not any(isinstance(f, _QuietNonConvergence) for f in absl.filters):
            absl.addFilter(_QuietNonConvergence())
        self.settings = settings
        amplified = settings.accounting == "without_replacement"
        self.config = PrivacyConfig(
            target_delta=float(settings.delta),
            population_size=int(settings.num_clients),
            neighboring_relation=(NeighboringRelation.REPLACE_ONE if amplified
                                  else NeighboringRelation.ADD_OR_REMOVE_ONE),
            sampling_method=(SamplingMethod.WITHOUT_REPLACEMENT if amplified
                             else SamplingMethod.NO_AMPLIFICATION),
            max_epsilon=None if settings.max_epsilon is None else float(settings.max_epsilon),
        )
        self.ledger: Counter[float] = Counter()  # z_round -> number of releases
        self._flower = self._accountant(self.ledger)
        self._projections: dict[tuple, float] = {}

    def _accountant(self, ledger: Mapping[float, int]):
        from flwr.serverapp import RdpAccountant

        accountant = RdpAccountant(self.config)
        if ledger:
            accountant.load_state_dict(self._flower_state(ledger))
        return accountant

    def _event(self, multiplier: float):
        from flwr.serverapp import GaussianPrivacyEvent

        return GaussianPrivacyEvent(noise_multiplier=float(multiplier),
                                    sample_size=int(self.settings.num_sampled),
                                    population_size=int(self.settings.num_clients))

    def _flower_state(self, ledger: Mapping[float, int]) -> dict[str, Any]:
        state = self._accountant_template().state_dict()
        state["compositions"] = [
            {"event": {"noise_multiplier": float(z), "sample_size": int(self.settings.num_sampled),
                       "population_size": int(self.settings.num_clients)}, "count": int(count)}
            for z, count in sorted(ledger.items())]
        return state

    def _accountant_template(self):
        from flwr.serverapp import RdpAccountant

        return RdpAccountant(self.config)

    def compose(self, multiplier: float, count: int = 1) -> None:
        """Record ``count`` releases of Gaussian multiplier ``multiplier``."""
        self._flower.compose(self._event(multiplier), count)
        self.ledger[float(multiplier)] += count

    @property
    def num_releases(self) -> int:
        return sum(self.ledger.values())

    def epsilon(self) -> float:
        """Epsilon spent so far at ``settings.delta`` (0 before any release)."""
        if not self.ledger:
            return 0.0
        return float(self._flower.get_privacy_spent().epsilon)

    def epsilon_if(self, multiplier: float) -> float:
        """The epsilon one more release of ``multiplier`` would bring the run to (the
        accountant itself is not changed)."""
        key = (tuple(sorted(self.ledger.items())), float(multiplier))
        if key not in self._projections:
            projected = Counter(self.ledger)
            projected[float(multiplier)] += 1
            self._projections = {key: self._accountant(projected).get_epsilon(self.config.target_delta)}
        return self._projections[key]

    def state_dict(self) -> dict[str, Any]:
        """Flower's accountant state, compositions merged by multiplier."""
        return self._flower_state(self.ledger)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (Flower refuses a state of another config)."""
        self._flower = self._accountant_template()
        self._flower.load_state_dict(state)
        self.ledger = Counter()
        for composition in state["compositions"]:
            self.ledger[float(composition["event"]["noise_multiplier"])] += int(composition["count"])


def accounting_problems(method: Any) -> list[str]:
    """Why the epsilon would not hold for a fedloom ``Pipeline`` or ``Schedule``
    (empty: it holds): it holds for a uniform mean of the clipped updates, optionally
    after ``ClipNorm`` and followed by the identity server step (``SimpleAverage``).

    Each stage says whether it keeps the C/m sensitivity of a uniform mean of clipped
    updates (``Stage.dp_sensitivity_preserving``); the others are named by kind."""
    phases = getattr(method, "phases", None) or [(1, method)]
    problems = []
    for start, pipeline in phases:
        where = f"{pipeline.name!r} (from round {start})"
        for stage in pipeline.stages:
            if stage.dp_sensitivity_preserving:
                continue
            if stage.kind == "weighting":
                problems.append(f"{where} weights clients by {getattr(stage, 'by', '?')!r}, so one "
                                "client can count more than 1/m of the mean the noise is scaled to")
            elif stage.kind == "server_step":
                problems.append(f"{where} applies a server step ({stage!r}) before Flower adds "
                                "the noise")
            else:
                problems.append(f"{where} uses {type(stage).__name__}, whose output has no "
                                "C/m sensitivity bound")
    return problems
