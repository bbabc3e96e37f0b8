"""Weights an attacker cannot inflate: one client lying about its size or quality.

An attacker controls what its client reports. Through the real strategies'
``aggregate_train`` on Flower Messages, a client reporting ``num-examples=1e9`` (or
``quality=1.0``) gets exactly the weight of a client reporting the cap, 3x the round's
median weight, in every robust hybrid that uses weights and in the quality weightings:
its result equals that of the same update reported at the cap, and stays within the
capped share's bound, while the same hybrid with ``weight_cap=None`` follows the liar.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fedloom.strategies import Hybrid, WeightedAverage

from test_flower_conformance import reply, task_identity  # noqa: F401 (fixture)

HONEST = 9
LIE_VALUE = 6.5  # inside the values a 20% trimmed mean keeps (0..8 without 0, 1, 7, 8)


def replies(liar_num_examples: float, liar_quality: float = 0.5, honest_quality: float = 0.5):
    honest = [reply(k + 1, [np.full(4, float(k), np.float32)], 100, quality=honest_quality)
              for k in range(HONEST)]
    liar = reply(99, [np.full(4, LIE_VALUE, np.float32)], liar_num_examples, quality=liar_quality)
    return [*honest, liar]


def aggregate(make, messages) -> float:
    strategy = make()
    strategy.current_arrays = ArrayRecord([np.zeros(4, np.float32)])
    arrays, metrics = strategy.aggregate_train(1, messages)
    assert arrays is not None and metrics["clients-used"] >= 1
    values = arrays.to_numpy_ndarrays()[0]
    assert np.ptp(values) == 0  # every coordinate saw the same values
    return float(values[0])


SIZE_WEIGHTED = {  # robust hybrids that weigh by num_examples (the norm filter off: weights only)
    "trimmed_mean": "trimmed_mean",
    "centered_clip": "centered_clip",
    "krum": "krum",
    "geometric_median": "geometric_median",
}


@pytest.mark.parametrize("robust", sorted(SIZE_WEIGHTED))
def test_a_client_claiming_1e9_examples_weighs_as_one_at_the_cap(robust):
    def capped():
        return Hybrid.robust_weighted(robust, max_norm_ratio=None)  # weight_cap=3 by default

    def uncapped():
        return Hybrid.robust_weighted(robust, max_norm_ratio=None, weight_cap=None)

    honest_only = aggregate(capped, replies(liar_num_examples=0))  # weight 0: the honest result
    lying = aggregate(capped, replies(liar_num_examples=1e9))
    at_cap = aggregate(capped, replies(liar_num_examples=300))  # 3 x the median 100
    # lying beyond the cap buys nothing more than reporting the cap
    assert lying == pytest.approx(at_cap, rel=1e-6, abs=1e-6)
    trusted = aggregate(uncapped, replies(liar_num_examples=1e9))
    assert abs(trusted - honest_only) > 2 * abs(lying - honest_only)
    assert abs(lying - honest_only) > 0.01  # the capped liar still counts (3 clients' worth)
    if robust == "krum":  # a weighted mean of the selected: the liar's share is capped
        selected_honest = HONEST - 1  # Krum keeps K - f = 9 of 10, the liar among them
        share = 300 / (300 + 100 * selected_honest)
        assert abs(lying - honest_only) <= share * abs(LIE_VALUE - honest_only) + 1e-5


def test_size_quality_caps_a_liar_on_both_factors():
    lying = aggregate(Hybrid.size_quality, replies(liar_num_examples=1e9, liar_quality=1.0))
    at_cap = aggregate(Hybrid.size_quality, replies(liar_num_examples=150, liar_quality=1.0))  # 150 = 3 x 50
    assert lying == pytest.approx(at_cap, rel=1e-6)
    honest_mean = 4.0
    bound = 150 / (150 + HONEST * 50)  # its largest share
    assert abs(lying - honest_mean) <= bound * abs(LIE_VALUE - honest_mean) + 1e-5
    trusted = aggregate(lambda: Hybrid.size_quality(weight_cap=None),
                        replies(liar_num_examples=1e9, liar_quality=1.0))
    assert trusted == pytest.approx(LIE_VALUE, rel=1e-5)


def test_quality_weighting_caps_a_client_claiming_perfect_accuracy():
    # everyone else at 0.5: the liar's 1.0 is 2x the median, under the 3x cap: share <= 1.5 / 6
    lying = aggregate(lambda: WeightedAverage("quality"), replies(100, liar_quality=1.0))
    assert abs(lying - 4.0) <= 1.5 / (1.5 + HONEST * 0.5) * abs(LIE_VALUE - 4.0) + 1e-5
    # everyone else at 0.1: 1.0 would be 10x; the cap makes it count as 0.3
    lying = aggregate(lambda: WeightedAverage("quality"), replies(100, 1.0, honest_quality=0.1))
    at_cap = aggregate(lambda: WeightedAverage("quality"), replies(100, 0.3, honest_quality=0.1))
    assert lying == pytest.approx(at_cap, rel=1e-6)
    trusted = aggregate(lambda: WeightedAverage("quality", weight_cap=None),
                        replies(100, 1.0, honest_quality=0.1))
    assert abs(trusted - 4.0) > 2 * abs(lying - 4.0)


def test_fedavg_weighting_stays_uncapped_as_flower_computes_it():
    plain = aggregate(lambda: WeightedAverage("num_examples"), replies(1e9))
    assert plain == pytest.approx(LIE_VALUE, rel=1e-5)
