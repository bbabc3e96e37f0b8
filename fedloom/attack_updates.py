"""Omniscient model-poisoning attacks: the update an attacker crafts from the honest ones.

These attacks assume the attacker sees the honest updates of its round (the threat model
of the papers below) and sends one crafted update, the same for every attacker. All
functions are pure numpy: ``honest`` is a list of ``n_h`` honest updates, each a list of
arrays that are *deltas* (client weights minus the global model, as every paper
states its attack); they return one delta in the honest updates' shapes and dtypes
(add the global model back to send weights).

=========================  =====================================================  ============================
function                   crafted delta                                          paper
=========================  =====================================================  ============================
:func:`alie_update`        ``mean - z * std`` per coordinate,                     Baruch, Baruch, Goldberg,
                           ``z = Phi^-1((n - s) / n)``, ``s = floor(n/2+1) - f``  NeurIPS 2019 ("A Little Is
                                                                                  Enough")
:func:`ipm_update`         ``-eps * mean``                                        Xie, Koyejo, Gupta, UAI 2020
                                                                                  (inner-product manipulation)
:func:`min_max_update`     ``mean + gamma * p``, largest ``gamma`` with           Shejwalkar, Houmansadr,
                           ``max_i ||m - h_i|| <= max_ij ||h_i - h_j||``          NDSS 2021 ("Manipulating the
:func:`min_sum_update`     ... with ``sum_i ||m - h_i||^2 <=                      Byzantine")
                           max_i sum_j ||h_i - h_j||^2``
:func:`mimic_update`       a copy of one honest update (:func:`mimic_target`:     Karimireddy, He, Jaggi,
                           the one farthest along the honest updates' direction   ICLR 2022 (bucketing)
                           of largest variance)
=========================  =====================================================  ============================

``mean`` and ``std`` are per coordinate over the honest updates; ``std`` is the sample
standard deviation (``ddof=1``, as ``torch.std`` in the reference implementations).
``n`` is the number of clients in the round (honest and attackers) and ``f`` the
number of attackers.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from fedloom.aggregation._blocks import cast_like
from fedloom.aggregation.checks import check_same_structure
from fedloom.aggregation.robust import pairwise_squared_distances

__all__ = [
    "alie_z",
    "alie_update",
    "ipm_update",
    "perturbation_direction",
    "min_max_gamma",
    "min_max_update",
    "min_sum_gamma",
    "min_sum_update",
    "mimic_target",
    "mimic_update",
]

Update = Sequence[np.ndarray]


def _stack(honest: Sequence[Update], index: int) -> np.ndarray:
    return np.stack([np.asarray(u[index], dtype=np.float64) for u in honest])


def _check(honest: Sequence[Update], at_least: int, name: str) -> None:
    if len(honest) < at_least:
        raise ValueError(f"{name} needs at least {at_least} honest updates to compute from; "
                         f"received {len(honest)}.")
    check_same_structure(honest)


def _mean(honest: Sequence[Update]) -> list[np.ndarray]:
    return [_stack(honest, i).mean(axis=0) for i in range(len(honest[0]))]


def _like(values: Sequence[np.ndarray], honest: Sequence[Update]) -> list[np.ndarray]:
    return [cast_like(v, np.asarray(like)) for v, like in zip(values, honest[0])]


# ----------------------------------------------------------------------------- ALIE
def alie_z(num_clients: int, num_attackers: int) -> float:
    """Baruch et al.'s ``z``: ``Phi^-1((n - s) / n)`` with ``s = floor(n/2 + 1) - f`` the
    honest "supporters" the attackers need (``Phi`` the standard normal CDF).

    Raises:
        ValueError: if ``(n - s) / n`` is not in ``(0, 1)`` (too many attackers for the
            formula: ``s <= 0``).
    """
    supporters = np.floor(num_clients / 2 + 1) - num_attackers
    level = (num_clients - supporters) / num_clients
    if not 0 < num_attackers < num_clients or not 0.0 < level < 1.0:
        raise ValueError(
            f"ALIE's z needs 0 < f < n and 0 < (n - s)/n < 1 with s = floor(n/2 + 1) - f; "
            f"received n={num_clients}, f={num_attackers} (level {level}). Use fewer attackers "
            "or pass z explicitly.")
    return NormalDist().inv_cdf(level)


def alie_update(honest: Sequence[Update], num_clients: int, num_attackers: int,
                z: float | None = None) -> list[np.ndarray]:
    """"A Little Is Enough": ``mean - z * std`` per coordinate (``z`` from :func:`alie_z`
    unless given)."""
    _check(honest, 2, "ALIE")
    z = alie_z(num_clients, num_attackers) if z is None else float(z)
    crafted = []
    for index in range(len(honest[0])):
        values = _stack(honest, index)
        crafted.append(values.mean(axis=0) - z * values.std(axis=0, ddof=1))
    return _like(crafted, honest)


# ----------------------------------------------------------------------------- IPM
def ipm_update(honest: Sequence[Update], eps: float = 0.1) -> list[np.ndarray]:
    """Inner-product manipulation: ``-eps * mean`` (Xie et al. use eps 0.1 and 100)."""
    _check(honest, 1, "IPM")
    if not eps > 0:
        raise ValueError(f"IPM needs eps > 0; received eps={eps}.")
    return _like([-eps * m for m in _mean(honest)], honest)


# ----------------------------------------------------------------------------- min-max / min-sum
def perturbation_direction(honest: Sequence[Update], kind: str = "std") -> list[np.ndarray]:
    """Shejwalkar & Houmansadr's perturbation ``p`` (float64 arrays): ``"std"``: ``-std``
    per coordinate; ``"unit_vec"``: ``-mean / ||mean||``; ``"sign"``: ``-sign(mean)``."""
    _check(honest, 2, "a perturbation direction")
    if kind == "std":
        return [-_stack(honest, i).std(axis=0, ddof=1) for i in range(len(honest[0]))]
    mean = _mean(honest)
    if kind == "sign":
        return [-np.sign(m) for m in mean]
    if kind == "unit_vec":
        norm = float(np.sqrt(sum(np.vdot(m, m) for m in mean)))
        if norm == 0:
            raise ValueError("unit_vec direction needs a non-zero honest mean; received all zeros.")
        return [-m / norm for m in mean]
    raise ValueError(f"perturbation kind must be 'std', 'unit_vec' or 'sign'; received {kind!r}.")


def _gamma_terms(honest: Sequence[Update], direction: Sequence[np.ndarray]):
    """``a_i = ||mean - h_i||^2``, ``b_i = <mean - h_i, p>``, ``c = ||p||^2``: then
    ``||mean + gamma p - h_i||^2 = a_i + 2 gamma b_i + gamma^2 c`` for every gamma."""
    a, b, c = np.zeros(len(honest)), np.zeros(len(honest)), 0.0
    for index, (mean, p) in enumerate(zip(_mean(honest), direction)):
        offsets = mean[None] - _stack(honest, index)
        flat_p = np.ravel(np.asarray(p, dtype=np.float64))
        offsets = offsets.reshape(len(honest), -1)
        a += np.einsum("ij,ij->i", offsets, offsets)
        b += offsets @ flat_p
        c += float(flat_p @ flat_p)
    return a, b, c


def _largest_gamma(feasible, initial: float, tolerance: float) -> float:
    """Largest ``gamma >= 0`` with ``feasible(gamma)`` to within ``tolerance``, for a
    feasible set that is an interval from 0 (the constraints are convex in gamma).
    Bisection as in the authors' code (start at ``initial``), after doubling the
    bracket while ``initial`` is still feasible (their code stops at ``2 * initial``)."""
    low, high = 0.0, initial
    while feasible(high):
        low, high = high, 2 * high
        if high > 1e300:
            raise ValueError("the perturbation never breaks the constraint (a zero direction?).")
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        low, high = (middle, high) if feasible(middle) else (low, middle)
    return low


def min_max_gamma(honest: Sequence[Update], direction: Sequence[np.ndarray], *,
                  initial: float = 10.0, tolerance: float = 1e-5) -> float:
    """Min-max's ``gamma``: largest with ``max_i ||mean + gamma p - h_i|| <= max_ij ||h_i - h_j||``."""
    _check(honest, 2, "min-max")
    limit = float(pairwise_squared_distances(honest).max())
    a, b, c = _gamma_terms(honest, direction)
    return _largest_gamma(lambda g: float(np.max(a + 2 * g * b + g * g * c)) <= limit, initial, tolerance)


def min_sum_gamma(honest: Sequence[Update], direction: Sequence[np.ndarray], *,
                  initial: float = 10.0, tolerance: float = 1e-5) -> float:
    """Min-sum's ``gamma``: largest with ``sum_i ||mean + gamma p - h_i||^2 <=
    max_i sum_j ||h_i - h_j||^2`` (the paper's bound; the authors' code uses the min over
    ``i``, a tighter one)."""
    _check(honest, 2, "min-sum")
    limit = float(pairwise_squared_distances(honest).sum(axis=1).max())
    a, b, c = _gamma_terms(honest, direction)
    return _largest_gamma(lambda g: float(np.sum(a + 2 * g * b + g * g * c)) <= limit, initial, tolerance)


def _perturbed(honest, direction, gamma):
    return _like([m + gamma * np.asarray(p, np.float64) for m, p in zip(_mean(honest), direction)], honest)


def min_max_update(honest: Sequence[Update], direction: str | Sequence[np.ndarray] = "std",
                   **search) -> list[np.ndarray]:
    """Min-max attack: ``mean + gamma * p`` with :func:`min_max_gamma` (``direction`` a
    :func:`perturbation_direction` kind or explicit arrays)."""
    p = perturbation_direction(honest, direction) if isinstance(direction, str) else direction
    return _perturbed(honest, p, min_max_gamma(honest, p, **search))


def min_sum_update(honest: Sequence[Update], direction: str | Sequence[np.ndarray] = "std",
                   **search) -> list[np.ndarray]:
    """Min-sum attack: ``mean + gamma * p`` with :func:`min_sum_gamma`."""
    p = perturbation_direction(honest, direction) if isinstance(direction, str) else direction
    return _perturbed(honest, p, min_sum_gamma(honest, p, **search))


# ----------------------------------------------------------------------------- mimic
def mimic_target(honest: Sequence[Update]) -> int:
    """Index of the honest update farthest along the honest updates' direction of largest
    variance (their first principal component), the client Karimireddy et al.'s mimic
    attack copies to over-represent it. Computed from the ``(n_h, n_h)`` centred Gram
    matrix (classical scaling of the pairwise distances): one streamed pass, no copy.
    The paper fixes the target after a warm-up; keep the index between rounds to do so.
    """
    _check(honest, 2, "mimic")
    distances = pairwise_squared_distances(honest)
    count = len(honest)
    centring = np.eye(count) - np.full((count, count), 1.0 / count)
    gram = -0.5 * centring @ distances @ centring
    _, vectors = np.linalg.eigh(gram)
    return int(np.argmax(np.abs(vectors[:, -1])))


def mimic_update(honest: Sequence[Update], target: int | None = None) -> list[np.ndarray]:
    """A copy of ``honest[target]`` (:func:`mimic_target` when ``target`` is ``None``)."""
    _check(honest, 1 if target is not None else 2, "mimic")
    index = mimic_target(honest) if target is None else int(target)
    if not 0 <= index < len(honest):
        raise ValueError(f"mimic target {index} is not an honest update index (0..{len(honest) - 1}).")
    return [np.array(a, copy=True) for a in honest[index]]
