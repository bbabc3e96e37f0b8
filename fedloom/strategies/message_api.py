"""fedloom strategies for Flower's Message API (``flwr.serverapp.strategy``).

Use them where a Flower ``ServerApp`` calls ``strategy.start(grid=..., ...)``:

    from fedloom.strategies import WeightedAverage
    strategy = WeightedAverage(weight_by="num_examples*quality", fraction_train=0.5)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model_weights), num_rounds=10)

They subclass Flower's ``FedAvg`` (so Flower's DP wrappers and tools that expect a
FedAvg keep working) and replace its aggregation with a fedloom pipeline. They differ
from ``FedAvg`` in three ways: a bad reply is left out with a logged reason instead of
aborting the round; node sampling follows ``seed``; and each round's
``train_metrics_clientapp`` holds fedloom's round metrics (see ``reporting``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedloom.aggregation import ClientUpdate, Pipeline, Rejection, Schedule, check_finite, check_update
from fedloom.errors import UpdateRejected
from fedloom.compression import COMPRESSION_RECORD, decode_compressed
from fedloom.strategies.named import (
    FederatedAveragingMixin,
    HybridMixin,
    SimpleAverageMixin,
    WeightedAverageMixin,
)
from fedloom.records import (
    arrayrecord_num_bytes,
    arrayrecord_views,
    ndarrays_to_arrayrecord,
)
from fedloom.strategies.reporting import (
    RoundReport,
    absurd_norm_guards,
    aggregate_round,
    average_client_metrics,
)

__all__ = [
    "FedloomStrategy",
    "SimpleAverage",
    "WeightedAverage",
    "FederatedAveraging",
    "Hybrid",
]


class FedloomStrategy(FedAvg):
    """A Flower Message-API strategy that aggregates with a fedloom pipeline or schedule.

    Args:
        method: the aggregation :class:`Pipeline`, or a :class:`Schedule` of them.
        fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
            min_available_nodes: node sampling, as in Flower's ``FedAvg``.
        min_valid_updates: a round with fewer valid updates keeps the global model.
        seed: seeds node sampling (``None``: a random seed), so runs can be repeated.
        secure_sampling: sample nodes with ``random.SystemRandom`` (OS entropy; ``seed``
            is ignored and nothing is checkpointed), as differential privacy needs.
        weighted_by_key: the reply metric holding the client's example count.
        absurd_norm_ratio: leave out (reason ``absurd_norm``) any update farther from
            the global model than this many times the round's median distance (with
            >= 3 updates) or than this many times the global model's own norm. Off
            (``None``) by default: it reads every update once more and makes a plain
            weighted average about 1.5x slower on large models (see
            ``benchmarks/aggregation.py``); fedloom's experiments turn it on (1000).

    Faults: an error reply is left out as ``client_error`` (``disconnected`` for the
    engine's node/message-unavailable codes); a sampled node with no reply by the round
    timeout as ``no_reply``; bad updates with the pipeline's reasons (``checks.REASONS``).

    Resuming: :meth:`state_dict` holds what a checkpoint needs (the sampling RNG and the
    schedule's stage states such as server momentum); :func:`fedloom.rounds.run_rounds`
    runs rounds ``first_round..num_rounds`` the way ``start`` runs ``1..num_rounds``.
    """

    def __init__(
        self,
        method: Pipeline | Schedule,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        min_valid_updates: int = 1,
        seed: int | None = None,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        absurd_norm_ratio: float | None = None,
        secure_sampling: bool = False,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
        )
        self.schedule = method if isinstance(method, Schedule) else Schedule([(1, method)])
        self.min_valid_updates = int(min_valid_updates)
        self.seed = seed
        self.secure_sampling = bool(secure_sampling)  # DP: a secret sample, never saved
        self._rng = random.SystemRandom() if secure_sampling else random.Random(seed)
        self._global_keys: list[str] = []
        self._global_weights: list[np.ndarray] | None = None
        self._bytes_sent = 0
        self.reports: list[RoundReport] = []
        self.absurd_norm_ratio = absurd_norm_ratio
        self._guards = absurd_norm_guards(absurd_norm_ratio)
        self._sampled_nodes: list[int] = []
        self._screened: list[Rejection] = []

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue this strategy bit for bit: the state of
        the node-sampling RNG and the schedule's stage states (e.g. server momentum).
        Arrays stay numpy arrays; everything else is JSON-compatible."""
        if self.secure_sampling:
            return {"schedule": self.schedule.state_dict()}
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss], "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not self.secure_sampling and "rng" in state:
            version, internal, gauss = state["rng"]
            self._rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
        self.schedule.load_state_dict(state.get("schedule", {}))

    def summary(self) -> None:
        super().summary()
        for start, pipeline in self.schedule.phases:
            log(INFO, "\t└──> fedloom from round %d: %s %s", start, pipeline.name,
                pipeline.client_config or "")

    # ------------------------------------------------------------------ sampling
    def _sample(self, grid: Grid, fraction: float, min_nodes: int) -> list[int]:
        """Seeded version of Flower's ``sample_nodes``: waits for enough nodes, then samples."""
        sample_size = max(int(len(list(grid.get_node_ids())) * fraction), min_nodes)
        needed = max(self.min_available_nodes, sample_size)
        while len(nodes := sorted(grid.get_node_ids())) < needed:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(nodes), needed)
            time.sleep(1)
        return self._rng.sample(nodes, sample_size)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send them the global model plus the round's train config.

        The config is the caller's ``train_config``, overridden by the pipeline's
        ``client_config`` (e.g. FedAvg's ``local-epochs``), plus ``server-round``.
        """
        self._global_keys = list(arrays.keys())
        self._global_weights = arrayrecord_views(arrays)
        self._sampled_nodes = []
        self._screened = []
        if self.fraction_train == 0.0:
            return []
        round_config = ConfigRecord(dict(config))
        round_config.update(self.schedule.at(server_round).client_config)
        round_config["server-round"] = server_round
        node_ids = self._sample(grid, self.fraction_train, self.min_train_nodes)
        self._sampled_nodes = list(node_ids)
        log(INFO, "configure_train: sampled %d nodes", len(node_ids))
        self._bytes_sent = len(node_ids) * arrayrecord_num_bytes(arrays)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: round_config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes (seeded) for federated evaluation of the global model."""
        if self.fraction_evaluate == 0.0:
            return []
        round_config = ConfigRecord(dict(config))
        round_config["server-round"] = server_round
        node_ids = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: round_config})
        return self._construct_messages(record, node_ids, MessageType.EVALUATE)

    # ------------------------------------------------------------------ aggregation
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, aggregate the valid ones with the round's pipeline.

        Returns ``(None, metrics)`` when too few valid updates remain: Flower then keeps
        the previous global model.
        """
        if self._global_weights is None:
            raise RuntimeError(
                f"{type(self).__name__}.aggregate_train was called before configure_train: "
                "the strategy needs the global model the clients trained from."
            )
        replies = list(replies)
        updates, rejected, num_bytes = self._decode_replies(replies)
        rejected = self._screened + rejected + self._missing_replies(replies)
        self._screened = []
        result, report = aggregate_round(
            self.schedule, self._global_weights, updates, rejected,
            server_round=server_round, bytes_received=num_bytes, bytes_sent=self._bytes_sent,
            min_updates=self.min_valid_updates, guards=self._guards,
        )
        self.reports.append(report)
        arrays = None
        if result.weights is not None:
            arrays = ndarrays_to_arrayrecord(result.weights, self._global_keys)
        return arrays, MetricRecord(report.as_metrics())

    def _decode_replies(
        self, replies: list[Message]
    ) -> tuple[list[ClientUpdate], list[Rejection], int]:
        updates: list[ClientUpdate] = []
        rejected: list[Rejection] = []
        num_bytes = 0
        for msg in replies:
            client_id = str(msg.metadata.src_node_id)
            if msg.has_error():
                reason = ("disconnected" if msg.error.code in _UNAVAILABLE_CODES
                          else "client_error")
                rejected.append(Rejection(
                    client_id, reason, f"code {msg.error.code}: {msg.error.reason}"))
                continue
            array_records = [r for r in msg.content.values() if isinstance(r, ArrayRecord)]
            metric_records = [r for r in msg.content.values() if isinstance(r, MetricRecord)]
            if len(array_records) != 1 or len(metric_records) != 1:
                rejected.append(Rejection(
                    client_id, "malformed",
                    f"expected 1 ArrayRecord and 1 MetricRecord; got "
                    f"{len(array_records)} and {len(metric_records)}"))
                continue
            record, metrics = array_records[0], dict(metric_records[0])
            num_bytes += arrayrecord_num_bytes(record)
            compression = msg.content.get(COMPRESSION_RECORD)
            if isinstance(compression, ConfigRecord):  # sent through compression_mod
                try:
                    keys, weights = decode_compressed(record, compression, self._global_weights)
                except (ValueError, KeyError) as err:
                    rejected.append(Rejection(client_id, "malformed", f"bad compressed update: {err}"))
                    continue
                if keys != self._global_keys:
                    rejected.append(Rejection(client_id, "malformed", "compressed update has other array keys"))
                    continue
                num_examples = metrics.get(self.weighted_by_key, float("nan"))
                updates.append(ClientUpdate(client_id, weights, num_examples, metrics))
                continue
            if list(record.keys()) != self._global_keys:
                reason = ("wrong_num_arrays" if len(record) != len(self._global_keys)
                          else "malformed")
                rejected.append(Rejection(
                    client_id, reason,
                    f"expected array keys {self._global_keys[:5]}... ({len(self._global_keys)}); "
                    f"got {list(record.keys())[:5]}... ({len(record)})"))
                continue
            try:
                weights = arrayrecord_views(record, self._global_keys)
            except ValueError as err:
                rejected.append(Rejection(client_id, "malformed", f"undecodable array: {err}"))
                continue
            num_examples = metrics.get(self.weighted_by_key, float("nan"))
            updates.append(ClientUpdate(client_id, weights, num_examples, metrics))
        return updates, rejected, num_bytes

    def _missing_replies(self, replies: list[Message]) -> list[Rejection]:
        """A ``no_reply`` rejection for each node sampled this round that sent nothing
        (its reply was late, or it vanished): Flower's grid just leaves it out."""
        answered = {str(msg.metadata.src_node_id) for msg in replies}
        answered.update(r.client_id for r in self._screened)
        return [
            Rejection(str(node), "no_reply", "no reply within the round timeout")
            for node in self._sampled_nodes if str(node) not in answered
        ]

    def screen_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The replies this strategy could aggregate; the others are kept as rejections
        for this round's report.

        For wrappers that touch the replies' arrays before this strategy sees them
        (Flower's DP wrappers clip every reply and drop the whole round on any error
        reply): screened first, a crashed, malformed, mis-shaped or non-finite reply is
        left out with its reason instead of crashing or voiding the round
        (:class:`fedloom.privacy.ScreenReplies`). Call after :meth:`configure_train`.
        """
        kept = []
        for msg in replies:
            updates, rejected, _ = self._decode_replies([msg])
            if not rejected:
                try:
                    check_update(updates[0].weights, self._global_weights or [])
                    check_finite(updates[0].weights)
                except UpdateRejected as err:
                    rejected = [Rejection(updates[0].client_id, err.reason, str(err))]
            if rejected:
                self._screened.extend(rejected)
            else:
                kept.append(msg)
        return kept

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Average the evaluation metrics of valid replies, weighted by example count.

        Unlike ``FedAvg``, a malformed or failed reply is skipped, not fatal.
        """
        pairs = []
        for msg in replies:
            if msg.has_error() or len(msg.content.metric_records) != 1:
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            num_examples = metrics.get(self.weighted_by_key)
            if isinstance(num_examples, (int, float)) and np.isfinite(num_examples) and num_examples >= 0:
                pairs.append((num_examples, metrics))
        if not pairs:
            return None
        return MetricRecord(average_client_metrics(pairs))


#: Error codes with which the engine (not the ClientApp) reports a node it lost.
_UNAVAILABLE_CODES = frozenset(
    {ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE}
)


class SimpleAverage(SimpleAverageMixin, FedloomStrategy):
    __doc__ = SimpleAverageMixin.__doc__


class WeightedAverage(WeightedAverageMixin, FedloomStrategy):
    __doc__ = WeightedAverageMixin.__doc__


class FederatedAveraging(FederatedAveragingMixin, FedloomStrategy):
    __doc__ = FederatedAveragingMixin.__doc__


class Hybrid(HybridMixin, FedloomStrategy):
    __doc__ = HybridMixin.__doc__
