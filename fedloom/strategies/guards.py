"""The sanity guard every fedloom strategy can run before its pipeline."""

from __future__ import annotations

from fedloom.aggregation import RejectNormOutliers, Stage

__all__ = ["DEFAULT_ABSURD_NORM_RATIO", "absurd_norm_guards"]

#: Every fedloom strategy leaves out an update that moved more than this many times the
#: round's median distance from the global model, or more than this many times the global
#: model's own norm (reason ``absurd_norm``): such an update is garbage (overflow,
#: uninitialised memory, a wrong learning rate), and one of them would own a plain mean.
#: Far above honest spread, so it does not act as a robust rule.
DEFAULT_ABSURD_NORM_RATIO = 1000.0


def absurd_norm_guards(ratio: float | None) -> tuple[Stage, ...]:
    """The guard stages for ``absurd_norm_ratio`` (none for ``None``)."""
    if ratio is None:
        return ()
    return (RejectNormOutliers(float(ratio), max_model_ratio=float(ratio), reason="absurd_norm"),)
