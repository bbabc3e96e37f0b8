"""Weights an attacker cannot inflate: cap each client's weight at a multiple of the
round's median weight.

Why. An attacker controls everything its client reports. A weighted robust rule that
trusts a reported ``num_examples=1e9`` (or a claimed quality of 1.0) hands that client
almost all the weight: the weighted trimmed mean then follows its value wherever it
survives the trimming, and centred clipping lets it move the result by nearly the full
radius each iteration. Robust rules bound an attacker's influence by its *share* of the
weight, so the share must be bounded too.

The rule. ``capped_k = min(w_k, multiple * median(positive weights))``. The median is
taken over the round's positive weights, so fewer than half of the clients cannot move
it beyond the honest weights' range; weight-0 clients stay 0. With the cap, ``f``
attackers among ``K`` clients hold a share of at most ``f * cap / (f * cap + sum of the
honest weights)`` — with honest weights near the median, about ``f * multiple /
(K - f + f * multiple)``: 1 attacker among 10 with ``multiple=3`` holds at most 25%,
against 99.99...% uncapped. The bounds the robust rules state in terms of an attacker's
weight (centred clipping: a move of at most weight x radius per iteration) then hold
with lying clients.

The price: honest clients with more than ``multiple`` times the median data count as if
they had ``multiple`` times the median (weighting becomes flatter at the top). Choose
``multiple`` from the expected spread of honest data sizes; ``multiple=1`` is the most
robust (every client at most the median weight); ``uniform`` weighting is the limit with
no trust in reports at all.

Pure numpy; use it where the weights are set, before a weighted robust reducer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cap_weights", "DEFAULT_CAP_MULTIPLE"]

DEFAULT_CAP_MULTIPLE = 3.0


def cap_weights(weights: Sequence[float] | np.ndarray,
                multiple: float = DEFAULT_CAP_MULTIPLE) -> np.ndarray:
    """Each weight capped at ``multiple`` times the median of the round's positive weights.

    Args:
        weights: ``(K,)`` finite weights ``>= 0`` (e.g. ``num_examples`` or size x quality),
            not yet normalised.
        multiple: the cap as a multiple of the median, ``>= 1``.

    Returns:
        ``(K,)`` float64 capped weights (not normalised); all zero if all were zero.

    Raises:
        ValueError: a negative, NaN or Inf weight, or ``multiple < 1``.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"cap_weights needs finite weights >= 0; received {w.tolist()}.")
    if not multiple >= 1.0:
        raise ValueError(f"cap_weights needs multiple >= 1 (a cap below the median would "
                         f"flatten most honest clients); received multiple={multiple}.")
    positive = w[w > 0]
    if positive.size == 0:
        return w.copy()
    return np.minimum(w, multiple * float(np.median(positive)))
