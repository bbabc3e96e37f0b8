"""Coefficients are normalised without overflow wherever a stage or the pipeline
normalises them: clients reporting ``num_examples`` near the largest float must not
turn the model or the reported coefficients into zeros."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.aggregation import Bucket, ClientUpdate, ClipNorm, Mean, Pipeline, WeightBy

HUGE = 1.7e308  # two of them sum to Inf in float64


def updates(values, sizes):
    return [ClientUpdate(f"c{k}", [np.full(3, v, np.float32)], n, {"quality": 0.25 * (k + 1)})
            for k, (v, n) in enumerate(zip(values, sizes))]


def test_clipped_mean_with_huge_num_examples_is_the_clipped_mean_not_zero():
    global_weights = [np.zeros(3, np.float32)]
    # update 0 is 100 * sqrt(3) from the model: clipped to norm 10; update 1 is kept
    result = Pipeline(ClipNorm(max_norm=10), WeightBy("num_examples"), Mean())(
        global_weights, updates([100.0, 1.0], [HUGE, HUGE]))
    clipped = 10 / np.sqrt(3)
    np.testing.assert_allclose(result.weights[0], np.full(3, 0.5 * (clipped + 1.0)), rtol=1e-6)
    assert result.coefficients == pytest.approx([0.5, 0.5])


def test_reported_coefficients_sum_to_one_with_huge_num_examples():
    result = Pipeline(WeightBy("num_examples"), Mean())(
        [np.zeros(3, np.float32)], updates([1.0, 3.0, 5.0], [HUGE, HUGE, HUGE / 2]))
    assert result.coefficients == pytest.approx([0.4, 0.4, 0.2])
    np.testing.assert_allclose(result.weights[0], np.full(3, 0.4 * 1 + 0.4 * 3 + 0.2 * 5), rtol=1e-6)


def test_buckets_of_huge_clients_keep_finite_sizes_and_their_members_shares():
    result = Pipeline(Bucket(2), WeightBy("num_examples"), Mean())(
        [np.zeros(3, np.float32)], updates([1.0, 3.0, 5.0, 7.0], [HUGE] * 4))
    np.testing.assert_allclose(result.weights[0], np.full(3, 4.0), rtol=1e-6)
    assert sorted(result.used) == ["c0", "c1", "c2", "c3"]
    assert result.coefficients == pytest.approx([0.25] * 4)


def test_buckets_of_huge_clients_average_their_metrics_and_quality_weighting_keeps_them():
    result = Pipeline(Bucket(2), WeightBy("num_examples*quality"), Mean())(
        [np.zeros(3, np.float32)], updates([1.0, 3.0, 5.0, 7.0], [HUGE] * 4))
    assert result.rejected == []  # a NaN group quality would leave groups out as missing_metric
    assert sorted(result.used) == ["c0", "c1", "c2", "c3"]
    assert np.isfinite(result.weights[0]).all()
