"""Bulyan against Flower's ``aggregate_bulyan``; the geometric median against an
independent scipy minimisation of the sum of weighted distances."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum
from scipy.optimize import minimize

from fedloom.aggregation._blocks import STREAM_BLOCK
from fedloom.aggregation.bulyan import bulyan, bulyan_selection
from fedloom.aggregation.geometric_median import geometric_median
from fedloom.aggregation.robust import pairwise_squared_distances


def random_updates(num_clients, shapes, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) + 0.3 * k).astype(dtype) for s in shapes] for k in range(num_clients)]


def flower_bulyan(updates, num_byzantine):
    results = [(list(u), 10) for u in updates]  # Flower pops from this list
    return aggregate_bulyan(results, num_malicious=num_byzantine, aggregation_rule=aggregate_krum, to_keep=0)


# Flower breaks Krum ties by list order (fedloom by centrality): with f >= 3 every Krum
# score has at least 2 neighbours and no ties, so the two must agree exactly
@pytest.mark.parametrize(("num_clients", "num_byzantine", "shapes"), [
    (15, 3, [(20, 5), (5,)]),
    (16, 3, [(2 * STREAM_BLOCK + 123,), (7,)]),  # over two blocks of the coordinate step
    (6, 0, [(40,)]),
    (18, 3, [(9, 4)]),  # even theta: the median is a mean of two middle values
])
def test_bulyan_equals_flower(num_clients, num_byzantine, shapes):
    updates = random_updates(num_clients, shapes, seed=num_clients)
    updates[0] = [a * 50 for a in updates[0]]  # one far update for Krum to skip
    ours = bulyan(updates, num_byzantine)
    theirs = flower_bulyan(updates, num_byzantine)
    for a, b in zip(ours, theirs):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())


def test_bulyan_selection_is_flowers_recursive_krum_and_skips_the_far_updates():
    updates = random_updates(15, [(30,)], seed=1)
    for far in (3, 8, 11):
        updates[far] = [updates[far][0] + 100.0 * far]
    selected = bulyan_selection(pairwise_squared_distances(updates), 3)
    assert len(selected) == 9 and not {3, 8, 11} & set(selected.tolist())
    # Flower's recursive Krum, one pick at a time on what is left
    remaining = [(list(u), 1) for u in updates]
    for index in selected:
        pick = aggregate_krum(remaining, num_malicious=3, to_keep=0)
        assert np.array_equal(pick[0], updates[index][0])
        remaining = [r for r in remaining if not np.array_equal(r[0][0], pick[0])]


def test_bulyan_breaks_krum_ties_whatever_the_client_order():
    # f = 1: with 3 updates left Krum has 1 neighbour and the mutually nearest pair ties
    updates = random_updates(7, [(4, 3), (5,)], seed=11)
    distances = pairwise_squared_distances(updates)
    forward = bulyan_selection(distances, 1)
    backward = bulyan_selection(distances[::-1, ::-1], 1)
    assert sorted(forward.tolist()) == sorted((6 - backward).tolist())
    for a, b in zip(bulyan(updates, 1), bulyan(updates[::-1], 1)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bulyan_needs_four_f_plus_three_updates():
    with pytest.raises(ValueError, match=r"at least 7 client updates \(n >= 4f \+ 3\); received 6"):
        bulyan(random_updates(6, [(3,)], seed=0), 1)


# ------------------------------------------------------------------ geometric median
def scipy_geometric_median(points: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    def objective(z):
        return float(np.sum(alpha * np.linalg.norm(points - z, axis=1)))

    def gradient(z):
        diff = z - points
        return (alpha / np.linalg.norm(diff, axis=1)) @ diff

    result = minimize(objective, points.mean(axis=0), jac=gradient, method="BFGS",
                      options={"gtol": 1e-12, "maxiter": 10_000})
    return result.x


@pytest.mark.parametrize("weighted", [False, True])
def test_geometric_median_minimises_the_sum_of_weighted_distances(weighted):
    updates = random_updates(7, [(3, 2), (4,)], seed=5, dtype=np.float64)
    updates[6] = [a + 40.0 for a in updates[6]]  # an outlier pulls the mean, not the median
    weights = np.array([1.0, 2.0, 1.0, 3.0, 1.0, 2.0, 1.0]) if weighted else np.ones(7)
    points = np.stack([np.concatenate([np.ravel(a) for a in u]) for u in updates])
    alpha = weights / weights.sum()
    expected = scipy_geometric_median(points, alpha)

    expected_objective = float(np.sum(alpha * np.linalg.norm(points - expected, axis=1)))

    # the default stopping rule (objective change < 1e-10 of its value): the objective
    # is minimal to 1e-9; the point, where the objective is flat, to about sqrt(ftol)
    result = geometric_median(updates, weights if weighted else None)
    got = np.concatenate([np.ravel(a) for a in result.median])
    assert 1 < result.iterations < 100
    assert result.objective == pytest.approx(expected_objective, rel=1e-9)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert [a.shape for a in result.median] == [(3, 2), (4,)]

    # run to a standstill: the point itself to 1e-6
    result = geometric_median(updates, weights if weighted else None, ftol=0.0, max_iterations=1000)
    got = np.concatenate([np.ravel(a) for a in result.median])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_geometric_median_resists_fewer_than_half_far_updates_over_several_blocks():
    honest = random_updates(7, [(2 * STREAM_BLOCK + 5,)], seed=2)
    attackers = [[np.full(2 * STREAM_BLOCK + 5, 1e4, np.float32)] for _ in range(3)]
    result = geometric_median(honest + attackers)
    honest_mean = np.mean([u[0].astype(np.float64) for u in honest], axis=0)
    spread = max(np.linalg.norm(u[0] - honest_mean) for u in honest)
    shift = np.linalg.norm(result.median[0] - honest_mean)
    plain_mean_shift = np.linalg.norm(np.mean([u[0] for u in honest + attackers], axis=0) - honest_mean)
    assert result.median[0].dtype == np.float32
    assert shift < spread < plain_mean_shift / 100


def test_geometric_median_refuses_bad_settings():
    with pytest.raises(ValueError, match="nu > 0"):
        geometric_median(random_updates(3, [(2,)], seed=0), nu=0.0)


# ------------------------------------------------------------------ conformance
NEW_RULES = {
    "bulyan": lambda updates: bulyan(updates, 1),
    "geometric_median": lambda updates: geometric_median(updates).median,
}


@pytest.mark.parametrize("name", sorted(NEW_RULES))
def test_new_rules_ignore_client_order_and_return_identical_updates(name):
    rule = NEW_RULES[name]
    updates = random_updates(7, [(4, 3), (5,)], seed=11)
    forward, backward = rule(updates), rule(updates[::-1])
    for a, b in zip(forward, backward):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    same = [[a.copy() for a in updates[2]] for _ in range(7)]
    for got, want in zip(rule(same), updates[2]):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)
