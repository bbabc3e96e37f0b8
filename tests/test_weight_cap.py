"""A client reporting num_examples=1e9 cannot buy more than its capped share of a robust rule."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.aggregation import centered_clip, trimmed_mean
from fedloom.aggregation.weight_cap import cap_weights

HONEST_SIZES = np.array([50.0, 80.0, 100.0, 120.0, 150.0, 90.0, 110.0, 60.0, 140.0])
LIAR = 1e9


def test_caps_at_a_multiple_of_the_median_of_positive_weights():
    capped = cap_weights([0.0, 10.0, 20.0, 30.0, 1e9], multiple=2.0)
    # median of (10, 20, 30, 1e9) = 25: cap 50
    np.testing.assert_array_equal(capped, [0.0, 10.0, 20.0, 30.0, 50.0])
    np.testing.assert_array_equal(cap_weights([0.0, 0.0]), [0.0, 0.0])
    with pytest.raises(ValueError, match="multiple >= 1"):
        cap_weights([1.0, 2.0], multiple=0.5)
    with pytest.raises(ValueError, match="finite weights >= 0"):
        cap_weights([1.0, np.inf])


def liar_share(multiple):
    cap = multiple * np.median(np.append(HONEST_SIZES, LIAR))  # computed here from the definition
    return cap / (cap + HONEST_SIZES.sum())


def test_a_liar_moves_the_weighted_trimmed_mean_only_by_its_capped_share():
    # one coordinate: the liar's value survives the trimming (the 10% at each end is 1 value)
    honest_values = np.array([1.0, 1.5, 1.8, 2.0, 2.0, 2.2, 2.5, 2.8, 3.0])
    liar_value = 2.95
    updates = [[np.array([v])] for v in np.append(honest_values, liar_value)]
    sizes = np.append(HONEST_SIZES, LIAR)
    kept = slice(1, 8)  # honest values left after dropping the smallest (1.0) and largest (3.0)

    uncapped = trimmed_mean(updates, 0.1, sizes)[0][0]
    assert abs(uncapped - liar_value) < 1e-5  # the lie buys the whole result

    for multiple in (1.0, 3.0):
        cap = multiple * np.median(sizes)  # the definition, computed here
        honest_weights = np.minimum(HONEST_SIZES[kept], cap)
        honest_part = np.average(honest_values[kept], weights=honest_weights)
        share = cap / (cap + honest_weights.sum())
        result = trimmed_mean(updates, 0.1, cap_weights(sizes, multiple))[0][0]
        # the result is (1 - share) * honest part + share * liar value: the liar moves it
        # by its share of its distance (under a third of it) instead of all of it
        assert abs(result - honest_part) <= share * abs(liar_value - honest_part) + 1e-12
        assert share < 1 / 3 and abs(result - honest_part) < abs(uncapped - honest_part) / 3


def test_a_liar_moves_centred_clipping_only_by_its_capped_share_times_the_radius():
    rng = np.random.default_rng(0)
    honest = [[rng.normal(1.0, 0.3, 50)] for _ in HONEST_SIZES]
    liar = [np.full(50, -100.0)]  # pulls against the honest clients
    center, radius, iterations = [np.zeros(50)], 2.0, 3
    honest_only = centered_clip(honest, center, radius, HONEST_SIZES, iterations)[0]
    sizes = np.append(HONEST_SIZES, LIAR)

    uncapped = centered_clip(honest + [liar], center, radius, sizes, iterations)[0]
    for multiple in (1.0, 3.0):
        result = centered_clip(honest + [liar], center, radius, cap_weights(sizes, multiple), iterations)[0]
        # each iteration is 1-Lipschitz in the centre; the liar's share s changes one step by
        # at most s * (its clipped pull + the honest pulls it displaces) <= 2 s r
        bound = iterations * 2 * liar_share(multiple) * radius
        assert np.linalg.norm(result - honest_only) <= bound
    assert np.linalg.norm(uncapped - honest_only) > 2 * iterations * 2 * liar_share(3.0) * radius
