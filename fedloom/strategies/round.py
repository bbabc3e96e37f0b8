"""The owner of a training round, shared by both Flower APIs.

:class:`RoundAggregator` holds everything a fedloom strategy keeps between rounds and
everything it decides in one: the schedule of pipelines (with their stage states), the
absurd-norm guard, the minimum of valid updates, the node-sampling RNG, the global
model the round's clients trained from, and the round reports. The Message-API classes
(``message_api``) and the legacy classes (``legacy``) only translate Flower's types to
and from it. No Flower import.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedloom.aggregation import (
    AggregationResult,
    ClientUpdate,
    Pipeline,
    Rejection,
    Schedule,
    Stage,
)
from fedloom.errors import ConfigError
from fedloom.strategies.guards import absurd_norm_guards
from fedloom.strategies.reporting import LOGGER, RoundReport
from fedloom.strategies.scaffold import ServerControlVariate

__all__ = ["RoundAggregator"]


class RoundAggregator:
    """Schedule, guards, minimum, sampling, global model, reports and state of a strategy.

    Args:
        method: the aggregation :class:`Pipeline`, a :class:`Schedule` of them, or a
            sequence of stages (made into a pipeline called ``"hybrid"``).
        min_valid_updates: a round with fewer valid updates keeps the global model.
        seed: seeds node sampling (``None``: a random seed), so runs can be repeated.
        secure_sampling: sample nodes with the operating system's randomness
            (``random.SystemRandom``) instead of the seeded RNG, and keep no RNG in
            :meth:`state_dict`. Differential privacy's sampling amplification assumes
            the sample is secret; a seed from a config file is not.
        absurd_norm_ratio: the absurd-norm guard (see ``guards``); ``None``: off.
        scaffold: keep SCAFFOLD's server control variate ``c`` (:attr:`control_variate`,
            see ``fedloom.strategies.scaffold``), updated after every aggregated round
            from the used clients' ``delta_c``.

    Attributes:
        schedule: the :class:`Schedule` (its pipelines hold the stage states).
        reports: one :class:`RoundReport` per aggregated round.
        global_weights: the model the current round's clients trained from (numpy
            arrays), or ``None`` when none is known yet.
        global_keys: the names of its arrays (Message API ``ArrayRecord`` keys).
        control_variate: SCAFFOLD's ``c`` (``None`` without ``scaffold``).
        num_nodes: the nodes connected when the round was configured (SCAFFOLD's ``N``).
    """

    def __init__(
        self,
        method: Pipeline | Schedule | Sequence[Stage],
        *,
        min_valid_updates: int = 1,
        seed: int | None = None,
        secure_sampling: bool = False,
        absurd_norm_ratio: float | None = None,
        scaffold: bool = False,
    ) -> None:
        if isinstance(method, (list, tuple)) and all(isinstance(s, (Stage, tuple)) for s in method):
            method = Pipeline(*method, name="hybrid")
        if not isinstance(method, (Pipeline, Schedule)):
            raise ConfigError(
                "a fedloom strategy aggregates with a Pipeline, a Schedule or a sequence of "
                f"stages; got {method!r}.")
        self.schedule = method if isinstance(method, Schedule) else Schedule([(1, method)])
        self.min_valid_updates = int(min_valid_updates)
        self.seed = seed
        self.secure_sampling = bool(secure_sampling)
        self.rng: random.Random = random.SystemRandom() if secure_sampling else random.Random(seed)
        self.absurd_norm_ratio = absurd_norm_ratio
        self.guards: tuple[Stage, ...] = absurd_norm_guards(absurd_norm_ratio)
        self.reports: list[RoundReport] = []
        self.global_weights: list[np.ndarray] | None = None
        self.global_keys: list[str] = []
        self.control_variate = ServerControlVariate() if scaffold else None
        self.num_nodes = 0
        self.bytes_sent = 0
        self.payload_sent = 0
        self.sampled: list[str] = []
        self.screened: list[Rejection] = []

    def __repr__(self) -> str:
        return f"RoundAggregator({self.schedule!r})"

    # ------------------------------------------------------------------ a round
    def sample(self, nodes: Sequence[Any], sample_size: int) -> list[Any]:
        """``sample_size`` of ``nodes`` (sorted first, so the draw depends only on the RNG)."""
        return self.rng.sample(sorted(nodes), sample_size)

    def client_config(self, server_round: int) -> dict[str, Any]:
        """What the round's pipeline tells the clients, plus ``server-round``."""
        return {**self.schedule.at(server_round).client_config, "server-round": server_round}

    def begin_round(
        self,
        global_weights: list[np.ndarray],
        keys: Sequence[str] = (),
        *,
        sampled: Sequence[Any] = (),
        bytes_sent: int = 0,
        payload_sent: int = 0,
        num_nodes: int = 0,
    ) -> None:
        """Record what a configure step sent: the model, its keys, the nodes, the bytes
        (``bytes_sent``: the serialized messages; ``payload_sent``: their arrays'
        ``.npy`` bytes), and how many nodes were connected (``num_nodes``)."""
        self.global_weights = global_weights
        self.global_keys = list(keys)
        self.sampled = [str(node) for node in sampled]
        self.bytes_sent = int(bytes_sent)
        self.payload_sent = int(payload_sent)
        self.num_nodes = int(num_nodes)
        self.screened = []

    def use_global_model(self, global_weights: list[np.ndarray] | None, keys: Sequence[str] = ()) -> None:
        """Adopt ``global_weights`` (e.g. Flower's ``current_arrays`` /
        ``initial_parameters``) when no configure step has sent a model yet."""
        if self.global_weights is None and global_weights is not None:
            self.global_weights = global_weights
            self.global_keys = list(keys)

    def missing_replies(self, answered: set[str]) -> list[Rejection]:
        """A ``no_reply`` rejection for each node sampled this round that sent nothing
        (its reply was late, or it vanished)."""
        answered = answered | {r.client_id for r in self.screened}
        return [Rejection(node, "no_reply", "no reply within the round timeout")
                for node in self.sampled if node not in answered]

    def aggregate(
        self,
        server_round: int,
        updates: Sequence[ClientUpdate],
        rejected: Sequence[Rejection],
        *,
        bytes_received: int = 0,
        payload_received: int = 0,
        control_deltas: Mapping[str, Sequence[np.ndarray]] | None = None,
    ) -> tuple[AggregationResult, RoundReport]:
        """Run the round's pipeline (after the guards) on ``updates``; log and keep the
        report. ``rejected`` are the replies already left out (errors, undecodable).
        ``bytes_received`` / ``payload_received``: the replies' serialized bytes and
        their arrays' bytes. ``control_deltas``: SCAFFOLD's ``delta_c`` by client id;
        with :attr:`control_variate`, a round that makes a new model updates ``c`` with
        the deltas of the clients it used (one without a delta counts as 0; ``N`` =
        :attr:`num_nodes`, at least the number of replies).

        Without a global model (no configure step, none adopted), the replies' weights
        are aggregated directly when no stage needs the model; otherwise
        ``ConfigError`` names the stages that do (the norm filters and the absurd-norm
        guard, clipping, centred clipping, a server step other than the identity).
        A new model becomes the global model (as Flower's ``FedAvgM`` keeps its
        ``current_arrays``), so rounds aggregated back to back continue from it.
        """
        rejected = [*self.screened, *rejected]
        self.screened = []
        pipeline = self.schedule.at(server_round)
        result = pipeline(
            self.global_weights, updates, server_round=server_round,
            min_updates=self.min_valid_updates, rejected=rejected, guards=self.guards,
        )
        report = RoundReport.from_result(
            server_round, pipeline.name, len(updates) + len(rejected), result, bytes_received,
            updates, self.bytes_sent, payload_received=payload_received,
            payload_sent=self.payload_sent,
        )
        report.log()
        self.reports.append(report)
        if result.weights is not None and self.control_variate is not None:
            deltas = control_deltas or {}
            used = [deltas[client] for client in result.used if client in deltas]
            if len(used) < len(result.used):
                LOGGER.warning("round %d: %d of the %d used replies carry no SCAFFOLD delta_c "
                               "(counted as 0)", server_round, len(result.used) - len(used),
                               len(result.used))
            self.control_variate.update(used, max(self.num_nodes, len(updates) + len(rejected)))
        if result.weights is not None:
            self.global_weights = list(result.weights)
            if not self.global_keys:
                self.global_keys = [str(i) for i in range(len(result.weights))]
        return result, report

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue bit for bit: the state of the
        node-sampling RNG (none with ``secure_sampling``) and the stage states of the
        schedule by stage name (e.g. server momentum), and SCAFFOLD's ``c`` under
        ``"scaffold"``. Arrays stay numpy arrays; everything else is JSON-compatible."""
        state: dict[str, Any] = {"schedule": self.schedule.state_dict()}
        if self.control_variate is not None:
            state["scaffold"] = self.control_variate.state_dict()
        if not self.secure_sampling:
            version, internal, gauss = self.rng.getstate()
            state["rng"] = [version, list(internal), gauss]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if "rng" in state and not self.secure_sampling:
            version, internal, gauss = state["rng"]
            self.rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
        self.schedule.load_state_dict(state.get("schedule", {}))
        if self.control_variate is not None:
            self.control_variate.load_state_dict(state.get("scaffold", {}))
