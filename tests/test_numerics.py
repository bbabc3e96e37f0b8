"""Edge-case numerics of the aggregation maths (issue 14), and reducers on arrays that
span several blocks, checked against float64 references written here in plain numpy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fedloom.aggregation import (
    ClientUpdate,
    Mean,
    Pipeline,
    RejectNormOutliers,
    TrimmedMean,
    WeightBy,
    centered_clip,
    coordinate_median,
    multi_krum,
    pairwise_squared_distances,
    trimmed_mean,
    update_norms,
)
from fedloom.aggregation._blocks import MAX_BUFFER_BYTES, STREAM_BLOCK, block_size_for
from fedloom.aggregation.checks import normalise_weights
from fedloom.aggregation.mean import squared_distances, weighted_mean_and_distances


# ------------------------------------------------------------------ huge weights
def test_weights_near_the_float64_maximum_normalise_instead_of_overflowing():
    coefficients = normalise_weights([1.7e308, 1.7e308, 0.0], 3)
    np.testing.assert_array_equal(coefficients, [0.5, 0.5, 0.0])


@pytest.mark.parametrize("filters", [(), (RejectNormOutliers(),)], ids=["plain", "one_pass"])
def test_fedavg_pipeline_with_huge_num_examples_returns_the_mean_not_zeros(filters):
    global_weights = [np.zeros(4, np.float32)]
    updates = [ClientUpdate("a", [np.full(4, 1.0, np.float32)], 1.7e308),
               ClientUpdate("b", [np.full(4, 3.0, np.float32)], 1.7e308)]
    with np.errstate(over="ignore"):  # the pipeline's own report may still overflow
        result = Pipeline(*filters, WeightBy("num_examples"), Mean())(global_weights, updates)
    assert result.skipped_reason == ""
    np.testing.assert_array_equal(result.weights[0], np.full(4, 2.0, np.float32))


def test_a_round_with_no_positive_weight_is_skipped_with_a_reason():
    global_weights = [np.zeros(4, np.float32)]
    updates = [ClientUpdate(name, [np.ones(4, np.float32)], 0) for name in "ab"]
    result = Pipeline(WeightBy("num_examples"), Mean())(global_weights, updates)
    assert result.weights is None and "weight 0" in result.skipped_reason
    with pytest.raises(ValueError, match="Weights sum to 0"):
        normalise_weights([0.0, 0.0], 2)


# ------------------------------------------------------------------ trimmed mean NaN
def test_weighted_trimmed_mean_never_emits_nan_when_kept_values_all_weigh_zero():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((5, 2003))
    updates = [[row.copy()] for row in values]
    weights = np.array([0.0, 0.0, 0.0, 1.0, 3.0])  # three clients reported num_examples=0
    result = trimmed_mean(updates, 0.2, weights)[0]

    order = np.argsort(values, axis=0)[1:4]  # the 3 middle values of 5 (trim 1 per end)
    kept = np.take_along_axis(values, order, axis=0)
    kept_weights = weights[order]
    only_zero = kept_weights.sum(axis=0) == 0
    assert only_zero.sum() > 100  # the case is common, not a corner
    expected = np.where(only_zero, kept.mean(axis=0),
                        (kept * kept_weights).sum(axis=0) / np.maximum(kept_weights.sum(axis=0), 1e-300))
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)


def test_trimmed_mean_pipeline_with_zero_weight_clients_gives_a_finite_model():
    rng = np.random.default_rng(1)
    global_weights = [np.zeros(2003, np.float32)]
    updates = [ClientUpdate(str(k), [rng.standard_normal(2003).astype(np.float32)], n)
               for k, n in enumerate([0, 0, 0, 10, 30])]
    result = Pipeline(WeightBy("num_examples"), TrimmedMean(0.2, weighted=True))(global_weights, updates)
    assert result.weights is not None and np.isfinite(result.weights[0]).all()


# ------------------------------------------------------------------ buffer bound
def test_block_buffer_stays_bounded_for_ten_thousand_clients():
    assert block_size_for(10_000, np.float64) * 10_000 * 8 <= MAX_BUFFER_BYTES
    assert block_size_for(10**7, np.float64) == 1  # one column at least
    for clients in (1, 10, 100, 512):  # the common case keeps its blocks
        assert block_size_for(clients, np.float64) == min(65536, 4 * 1024 * 1024 // (8 * clients))


def test_median_of_ten_thousand_clients_allocates_a_bounded_buffer():
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal(1500).astype(np.float32) for _ in range(7)]
    updates = [[rows[k % 7]] for k in range(10_000)]  # views: the input costs no memory
    tracemalloc.start()
    try:
        result = coordinate_median(updates)[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 10,000 clients x 1,024 coordinates x 8 bytes would be 82 MB
    assert peak < MAX_BUFFER_BYTES + 4 * 1024 * 1024
    counts = np.array([len(range(k, 10_000, 7)) for k in range(7)])  # 1429 or 1428 each
    stacked = np.repeat(np.stack(rows).astype(np.float64), counts, axis=0)
    np.testing.assert_array_equal(result, np.median(stacked, axis=0).astype(np.float32))


# ------------------------------------------------------------------ several blocks
SIZE = 2 * STREAM_BLOCK + 8_869  # > two blocks, the last one partial
SHAPES = [(SIZE,), (371, 379), (10,)]


@pytest.fixture(params=["1", "4"], ids=["1_thread", "4_threads"])
def threads(request, monkeypatch):
    monkeypatch.setenv("FEDLOOM_AGGREGATION_THREADS", request.param)


def big_updates(num_clients: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * (k + 1)).astype(np.float32) for s in SHAPES]
            for k in range(num_clients)]


def stacked(updates, index):
    return np.stack([u[index].astype(np.float64) for u in updates])


def flat64(update):
    return np.concatenate([np.ravel(a).astype(np.float64) for a in update])


def test_weighted_mean_and_distances_over_several_blocks(threads):
    updates = big_updates(7)
    weights = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 0.0, 7.0])
    reference_model = big_updates(1, seed=9)[0]
    result, distances = weighted_mean_and_distances(updates, weights, reference_model)
    for index, got in enumerate(result):
        expected = np.tensordot(weights / weights.sum(), stacked(updates, index), axes=1)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
        assert got.dtype == np.float32 and got.shape == SHAPES[index]
    expected = np.array([np.sum((flat64(u) - flat64(reference_model)) ** 2) for u in updates])
    np.testing.assert_allclose(distances, expected, rtol=1e-6)
    np.testing.assert_allclose(squared_distances(updates, reference_model), expected, rtol=1e-6)
    np.testing.assert_allclose(update_norms(updates, reference_model), np.sqrt(expected), rtol=1e-6)


def test_median_and_trimmed_means_over_several_blocks():
    updates = big_updates(7, seed=1)
    weights = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 1.0, 7.0])
    median = coordinate_median(updates)
    trimmed = trimmed_mean(updates, 0.3)
    weighted = trimmed_mean(updates, 0.3, weights)
    for index in range(len(SHAPES)):
        values = stacked(updates, index)
        np.testing.assert_allclose(median[index], np.median(values, axis=0), rtol=1e-6)
        order = np.argsort(values, axis=0)[2:5]  # floor(0.3 * 7) = 2 dropped at each end
        kept, kept_weights = np.take_along_axis(values, order, axis=0), weights[order]
        np.testing.assert_allclose(trimmed[index], kept.mean(axis=0), rtol=1e-6, atol=1e-6)
        expected = (kept * kept_weights).sum(axis=0) / kept_weights.sum(axis=0)
        np.testing.assert_allclose(weighted[index], expected, rtol=1e-6, atol=1e-6)


def test_krum_distances_over_several_blocks():
    updates = big_updates(6, seed=2)
    flats = [flat64(u) for u in updates]
    expected = np.array([[np.sum((a - b) ** 2) for b in flats] for a in flats])
    got = pairwise_squared_distances(updates)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9 * expected.max())
    # Krum's pick with f = 1: the lowest sum of squared distances to the K - f - 2 = 3 nearest
    scores = [np.sort(np.delete(row, k))[:3].sum() for k, row in enumerate(expected)]
    assert list(multi_krum(updates, num_byzantine=1, num_selected=3)) == list(np.argsort(scores)[:3])


def test_centered_clip_over_several_blocks(threads):
    updates = big_updates(5, seed=3)
    weights = np.array([1.0, 1.0, 2.0, 1.0, 5.0])
    center = big_updates(1, seed=4)[0]
    radius = 300.0
    result = centered_clip(updates, center, radius, weights, iterations=3)

    flats = [flat64(u) for u in updates]
    c = flat64(center)
    w = weights / weights.sum()
    for _ in range(3):
        steps = [f - c for f in flats]
        c = c + sum(wk * s * min(1.0, radius / np.linalg.norm(s)) for wk, s in zip(w, steps))
    got = flat64(result)
    assert min(np.linalg.norm(f - flat64(center)) for f in flats) > radius  # clipping is exercised
    np.testing.assert_allclose(got, c, rtol=1e-5, atol=1e-5 * np.abs(c).max())
