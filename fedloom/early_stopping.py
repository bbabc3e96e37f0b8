"""Early stopping of a federated run on the central test accuracy.

Flower 1.43 adds ``Strategy.start(..., should_stop=callable)``: ``should_stop(round,
result)`` is called after every round and ends the run when it returns ``True``.
:class:`EarlyStop` is such a callable (it also works with :func:`fedloom.rounds.run_rounds`
on Flower 1.42), with the two rules Keras users know from ``keras.callbacks.EarlyStopping``:

- ``target_accuracy``: stop once the global model's accuracy reaches the target;
- ``patience``: stop once the best accuracy has not improved (by more than
  ``min_delta``) for ``patience`` consecutive rounds. Round 0 (the initial model) counts
  as the first value, as Keras counts the first epoch.

The rule itself is :meth:`EarlyStop.reason`, a pure function of the accuracies so far,
so a resumed run that replays its history decides exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EarlyStop"]


@dataclass(frozen=True)
class EarlyStop:
    """Stop when accuracy reaches ``target_accuracy`` or stalls for ``patience`` rounds.

    Args:
        target_accuracy: in (0, 1]; ``None`` turns the rule off.
        patience: rounds (>= 1) without an improvement of the best accuracy; ``None``
            turns the rule off.
        min_delta: the smallest increase of the best accuracy that counts as an
            improvement (accuracy units, >= 0).
        metric: the key of the server-side evaluation metrics to watch.
    """

    target_accuracy: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(
                f"early_stop.target_accuracy={self.target_accuracy!r} is not allowed: it must "
                "be in (0, 1], or null to turn the rule off."
            )
        if self.patience is not None and (isinstance(self.patience, bool) or
                                          not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(
                f"early_stop.patience={self.patience!r} is not allowed: it must be an integer "
                ">= 1 (rounds without improvement), or null to turn the rule off."
            )
        if not (isinstance(self.min_delta, int | float) and self.min_delta >= 0):
            raise ValueError(f"early_stop.min_delta={self.min_delta!r} is not allowed: it must be >= 0.")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> EarlyStop | None:
        """The rule of the config's ``early_stop`` section; ``None`` when every rule is off."""
        section = dict(section or {})
        unknown = sorted(set(section) - {"target_accuracy", "patience", "min_delta", "metric"})
        if unknown:
            raise ValueError(
                f"early_stop.{unknown[0]} is not a setting; known: target_accuracy, patience, "
                "min_delta, metric."
            )
        rule = cls(**{k: v for k, v in section.items() if v is not None})
        return rule if rule.enabled else None

    @property
    def enabled(self) -> bool:
        return self.target_accuracy is not None or self.patience is not None

    def reason(self, history: Sequence[tuple[int, float]]) -> str | None:
        """Why to stop after the last of ``history`` ((round, accuracy) pairs in round
        order), or ``None`` to go on. Non-finite accuracies never count as improvements."""
        if not history:
            return None
        last_round, last = history[-1]
        if self.target_accuracy is not None and math.isfinite(last) and last >= self.target_accuracy:
            return (f"{self.metric} {last:.4f} reached the target {self.target_accuracy:g} "
                    f"in round {last_round}")
        if self.patience is not None:
            best, best_round = -math.inf, None
            for server_round, value in history:
                if math.isfinite(value) and (best_round is None or value > best + self.min_delta):
                    best, best_round = value, server_round
            stalled = [r for r, _ in history if best_round is None or r > best_round]
            if len(stalled) >= self.patience:
                where = "no finite value" if best_round is None else f"best {best:.4f} in round {best_round}"
                return (f"{self.metric} did not improve for {len(stalled)} rounds "
                        f"(patience {self.patience}; {where})")
        return None

    def __call__(self, server_round: int, result: Any) -> bool:
        """Flower's ``should_stop(server_round, result)``: reads the server-side
        evaluation metrics of ``result`` (``evaluate_metrics_serverapp``)."""
        metrics = result.evaluate_metrics_serverapp
        history = [(r, float(metrics[r][self.metric])) for r in sorted(metrics)
                   if r <= server_round and self.metric in metrics[r]]
        return self.reason(history) is not None
