"""Each omniscient attack's crafted update against its paper's formula on hand-made rounds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from fedloom.attack_updates import (
    alie_update,
    alie_z,
    ipm_update,
    mimic_target,
    mimic_update,
    min_max_gamma,
    min_max_update,
    min_sum_gamma,
    min_sum_update,
    perturbation_direction,
)

# four honest clients, two arrays; per coordinate of array 0 the values are 1, 2, 3, 6
HONEST = [
    [np.array([1.0, 0.0], np.float32), np.array([[2.0]], np.float32)],
    [np.array([2.0, 0.0], np.float32), np.array([[2.0]], np.float32)],
    [np.array([3.0, 4.0], np.float32), np.array([[5.0]], np.float32)],
    [np.array([6.0, 4.0], np.float32), np.array([[-1.0]], np.float32)],
]


def test_alie_is_mean_minus_z_std_with_the_papers_z():
    # n = 5 clients, f = 1 attacker: s = floor(5/2 + 1) - 1 = 2, z = Phi^-1((5 - 2) / 5)
    z = norm.ppf(3 / 5)
    assert alie_z(5, 1) == pytest.approx(z, rel=1e-12)
    crafted = alie_update(HONEST, num_clients=5, num_attackers=1)
    # coordinate 0: mean 3, sample variance (4 + 1 + 0 + 9) / 3; coordinate 1: mean 2, (4+4+4+4)/3
    np.testing.assert_allclose(crafted[0], [3 - z * np.sqrt(14 / 3), 2 - z * np.sqrt(16 / 3)], rtol=1e-6)
    # array 1: values 2, 2, 5, -1: mean 2, sample variance (0 + 0 + 9 + 9) / 3
    np.testing.assert_allclose(crafted[1], [[2 - z * np.sqrt(6)]], rtol=1e-6)
    assert crafted[0].dtype == np.float32 and crafted[1].shape == (1, 1)
    # 25 clients, 5 attackers (the epfml setting): s = 13 - 5 = 8, z = Phi^-1(17/25)
    assert alie_z(25, 5) == pytest.approx(norm.ppf(17 / 25), rel=1e-12)


def test_alie_refuses_too_many_attackers_for_its_formula():
    with pytest.raises(ValueError, match="fewer attackers"):
        alie_z(4, 3)  # s = 3 - 3 = 0: (n - s)/n = 1


def test_ipm_is_minus_eps_times_the_mean():
    crafted = ipm_update(HONEST, eps=0.5)
    np.testing.assert_allclose(crafted[0], [-1.5, -1.0])
    np.testing.assert_allclose(crafted[1], [[-1.0]])
    np.testing.assert_allclose(ipm_update(HONEST, eps=100)[0], [-300.0, -200.0])


def random_round(seed=0, num_honest=6):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(8).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)]
            for _ in range(num_honest)]


def flat(update):
    return np.concatenate([np.ravel(a).astype(np.float64) for a in update])


def attack_point(honest, direction, gamma):
    mean = np.mean([flat(u) for u in honest], axis=0)
    return mean + gamma * flat(direction)


def test_perturbation_directions():
    std = perturbation_direction(HONEST, "std")
    np.testing.assert_allclose(std[0], [-np.sqrt(14 / 3), -np.sqrt(16 / 3)])
    np.testing.assert_array_equal(perturbation_direction(HONEST, "sign")[0], [-1.0, -1.0])
    unit = flat(perturbation_direction(HONEST, "unit_vec"))
    mean = np.array([3.0, 2.0, 2.0])
    np.testing.assert_allclose(unit, -mean / np.linalg.norm(mean))


@pytest.mark.parametrize("kind", ["std", "unit_vec"])
def test_min_max_gamma_is_the_largest_within_the_honest_maximum_distance(kind):
    honest = random_round(1)
    direction = perturbation_direction(honest, kind)
    gamma = min_max_gamma(honest, direction)
    points = np.stack([flat(u) for u in honest])
    bound = max(np.linalg.norm(a - b) for a in points for b in points)

    def worst(g):
        return np.linalg.norm(points - attack_point(honest, direction, g), axis=1).max()

    assert gamma > 0.1
    assert worst(gamma) <= bound
    assert worst(gamma + 1e-5) > bound  # the search's tolerance: just above, it breaks
    crafted = min_max_update(honest, kind)
    np.testing.assert_allclose(flat(crafted), attack_point(honest, direction, gamma), rtol=1e-6, atol=1e-6)
    assert crafted[1].dtype == np.float32 and crafted[1].shape == (2, 3)


def test_min_sum_gamma_is_the_largest_within_the_honest_maximum_sum():
    honest = random_round(2)
    direction = perturbation_direction(honest, "std")
    gamma = min_sum_gamma(honest, direction)
    points = np.stack([flat(u) for u in honest])
    bound = max(sum(np.sum((a - b) ** 2) for b in points) for a in points)

    def total(g):
        return np.sum(np.linalg.norm(points - attack_point(honest, direction, g), axis=1) ** 2)

    assert gamma > 0.1
    assert total(gamma) <= bound < total(gamma + 1e-5)
    np.testing.assert_allclose(flat(min_sum_update(honest, "std")),
                               attack_point(honest, direction, gamma), rtol=1e-6, atol=1e-6)


def test_min_max_search_goes_past_twice_its_initial_step():
    honest = random_round(3)
    direction = perturbation_direction(honest, "unit_vec")
    # distances of ~4 in this round: with an initial step of 0.5 the answer is far above 1
    assert min_max_gamma(honest, direction, initial=0.5) == pytest.approx(
        min_max_gamma(honest, direction, initial=10.0), abs=2e-5)


def test_mimic_copies_the_client_farthest_along_the_main_direction():
    honest = [[np.array([0.0, 0.0])], [np.array([0.2, 0.1])], [np.array([5.0, 0.3])],
              [np.array([-0.1, 0.2])], [np.array([0.3, -0.2])]]
    assert mimic_target(honest) == 2
    crafted = mimic_update(honest)
    np.testing.assert_array_equal(crafted[0], honest[2][0])
    assert crafted[0] is not honest[2][0]
    np.testing.assert_array_equal(mimic_update(honest, target=1)[0], honest[1][0])
    with pytest.raises(ValueError, match="not an honest update index"):
        mimic_update(honest, target=7)
