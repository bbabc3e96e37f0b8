"""What flows through the stages of an aggregation pipeline in one round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedloom.aggregation.checks import check_finite, normalise_weights
from fedloom.aggregation.robust import clip_to_norm, update_norms
from fedloom.errors import UpdateRejected

__all__ = ["ClientUpdate", "Rejection", "RoundState"]


@dataclass
class ClientUpdate:
    """One client's reply to a training round.

    Attributes:
        client_id: who sent it (Flower node id or a name), for logs and reports.
        weights: the client's model weights after local training, one array per model
            array, in the global model's order (read-only views are fine).
        num_examples: training examples the client used (FedAvg's ``n_k``).
        metrics: the scalars the client reported, e.g. ``{"quality": 0.91}``.
    """

    client_id: str
    weights: Sequence[np.ndarray]
    num_examples: float
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """An update left out of a round: who, a reason tag (see ``checks.REASONS``), details."""

    client_id: str
    reason: str
    detail: str


@dataclass
class RoundState:
    """Mutable state of one round's aggregation, handed from stage to stage.

    Stages remove updates with :meth:`keep`, set ``coefficients`` (one weight per
    update), record per-update clipping ``scales``, and the reducer sets ``aggregate``.
    ``num_received`` is how many updates arrived for the pipeline (before any check),
    so ``num_received - len(updates)`` is how many of them were left out so far.

    ``groups`` maps the id of an update that stands for several clients (the mean of a
    group, see :class:`~fedloom.aggregation.stages.Bucket`) to its members and their
    ``num_examples``; rejecting it rejects each member, and :meth:`clients` lists them.
    """

    server_round: int
    global_weights: Sequence[np.ndarray]
    updates: list[ClientUpdate]
    rejected: list[Rejection] = field(default_factory=list)
    num_received: int = 0
    coefficients: np.ndarray | None = None
    scales: np.ndarray | None = None
    aggregate: list[np.ndarray] | None = None
    finite_checked: bool = False
    groups: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    _norms: np.ndarray | None = None

    def keep(self, mask: Sequence[bool] | np.ndarray, reason: str, details: Sequence[str]) -> None:
        """Keep the updates where ``mask`` is true; reject the others with ``reason``.

        ``details`` has one entry per *current* update (used for the rejected ones).
        """
        mask = np.asarray(mask, dtype=bool)
        for update, keep_it, detail in zip(self.updates, mask, details):
            if keep_it:
                continue
            if update.client_id in self.groups:
                detail = f"{detail} (group {update.client_id})"
            for client_id, _ in self.members(update):
                self.rejected.append(Rejection(client_id, reason, detail))
        self.updates = [u for u, k in zip(self.updates, mask) if k]
        if self.coefficients is not None:
            self.coefficients = self.coefficients[mask]
        if self.scales is not None:
            self.scales = self.scales[mask]
        if self._norms is not None:
            self._norms = self._norms[mask]

    def replace_updates(self, updates: list[ClientUpdate]) -> None:
        """Put ``updates`` (e.g. group means) in place of the current ones. Coefficients,
        clipping scales and cached norms belonged to the old ones and are cleared;
        ``num_received`` counts each new update as one received (the ones left out
        before still count as left out)."""
        left_out = self.num_received - len(self.updates)
        self.updates, self.num_received = list(updates), left_out + len(updates)
        self.coefficients = self.scales = self._norms = None

    def members(self, update: ClientUpdate) -> list[tuple[str, float]]:
        """``(client_id, num_examples)`` of the clients behind ``update``."""
        return self.groups.get(update.client_id, [(update.client_id, update.num_examples)])

    def clients(self, coefficients: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
        """The clients behind the current updates, and each one's share of
        ``coefficients`` (one per update; within a group, by ``num_examples``)."""
        if coefficients is None:
            coefficients = np.ones(len(self.updates))
        ids, shares = [], []
        for update, coefficient in zip(self.updates, coefficients):
            members = self.members(update)
            sizes = np.array([n for _, n in members], dtype=np.float64)
            split = (normalise_weights(sizes, len(sizes)) if (sizes > 0).any()
                     else np.full(len(members), 1 / len(members)))
            ids += [client_id for client_id, _ in members]
            shares += list(coefficient * split)
        return ids, np.asarray(shares, dtype=np.float64)

    def require_finite(self) -> None:
        """Reject every update holding NaN/Inf (one pass over the data, done once)."""
        if self.finite_checked:
            return
        details = []
        for update in self.updates:
            try:
                check_finite(update.weights)
                details.append("")
            except UpdateRejected as err:
                details.append(str(err))
        self.keep([d == "" for d in details], "non_finite", details)
        self.finite_checked = True

    def set_delta_norms(self, norms: np.ndarray) -> None:
        """Cache norms computed elsewhere (e.g. during a fused mean); as
        :meth:`delta_norms`, updates with NaN/Inf are rejected on the way."""
        self._norms = np.asarray(norms, dtype=np.float64)
        if not np.isfinite(self._norms).all():
            self.require_finite()
        self.finite_checked = True

    def delta_norms(self) -> np.ndarray:
        """L2 norm of each update minus the global model, before clipping (cached).

        Rejects updates with NaN/Inf on the way (their norm is not finite).
        """
        if self._norms is None:
            self.set_delta_norms(update_norms([u.weights for u in self.updates], self.global_weights))
        return self._norms

    def effective_updates(self) -> list[Sequence[np.ndarray]]:
        """The updates' weights with clipping applied (copies only for clipped updates)."""
        if self.scales is None or (self.scales >= 1.0).all():
            return [u.weights for u in self.updates]
        norms = self.delta_norms()
        return [
            u.weights if s >= 1.0 else clip_to_norm(u.weights, self.global_weights, s * n)
            for u, s, n in zip(self.updates, self.scales, norms)
        ]
