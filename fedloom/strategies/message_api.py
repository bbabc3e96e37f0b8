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

import time
from collections.abc import Iterable, Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from flwr.supercore.differential_privacy import get_norm

from fedloom.aggregation import (
    REASONS,
    Pipeline,
    Rejection,
    Schedule,
    Stage,
    check_finite,
    check_update,
)
from fedloom.errors import UpdateRejected
from fedloom.records import (
    arrayrecord_num_bytes,
    arrayrecord_views,
    message_num_bytes,
    messages_num_bytes,
    ndarrays_to_arrayrecord,
)
from fedloom.strategies import methods
from fedloom.strategies.replies import decode_train_replies
from fedloom.strategies.reporting import average_client_metrics
from fedloom.strategies.round import RoundAggregator
from fedloom.strategies.scaffold import SCAFFOLD_RECORD

__all__ = [
    "FedloomStrategy",
    "SimpleAverage",
    "WeightedAverage",
    "FederatedAveraging",
    "Scaffold",
    "Hybrid",
]


class FedloomStrategy(FedAvg):
    """A Flower Message-API strategy that aggregates with a fedloom pipeline or schedule.

    Args:
        method: the aggregation :class:`Pipeline`, a :class:`Schedule` of them, or a
            sequence of stages.
        fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
            min_available_nodes: node sampling, as in Flower's ``FedAvg``.
        min_valid_updates: a round with fewer valid updates keeps the global model.
        seed: seeds node sampling (``None``: a random seed), so runs can be repeated.
        secure_sampling: sample nodes with ``random.SystemRandom()`` (secret, as
            differential privacy's sampling needs) instead of the seeded RNG; the
            strategy's state then holds no RNG.
        weighted_by_key: the reply metric holding the client's example count.
        absurd_norm_ratio: leave out (reason ``absurd_norm``) any update farther from
            the global model than this many times the round's median distance (with
            >= 3 updates) or than this many times the global model's own norm. Off
            (``None``) by default: it reads every update once more and makes a plain
            weighted average about 1.5x slower on large models (see
            ``benchmarks/aggregation.py``); fedloom's experiments turn it on (1000).
        scaffold: run SCAFFOLD's server side (Karimireddy et al., ICML 2020, option II;
            ``fedloom.strategies.scaffold``): every train message also carries the
            server control variate ``c`` (ArrayRecord ``"scaffold-c"``, the model's
            keys, zero at first); a reply carries ``"scaffold-delta-c"`` (one with other
            keys, shapes or non-finite values is left out as ``malformed`` /
            ``non_finite``; one without counts as ``delta_c = 0``: a client that does
            not run SCAFFOLD); after a round that makes a new model,
            ``c += (|S|/N) * mean of the used clients' delta_c`` (``N``: the nodes
            connected at configure time). ``c`` is in :meth:`state_dict`. The clients
            must run SCAFFOLD for it to mean anything (fedloom's Keras ``ClientApp``).

    Bytes: each round report counts ``payload-sent`` / ``payload-received``, the ``.npy``
    bytes of the train messages' and replies' arrays, and ``bytes-sent`` /
    ``bytes-received``: with ``count_message_bytes=True`` the messages serialized as
    Flower 1.42 sends them (:func:`fedloom.records.message_num_bytes`: arrays, configs,
    metrics, metadata; every reply, rejected ones included), else the payload again.
    Off by default: counting serializes and hashes every byte of every message (as
    Flower does before sending), which costs more than the aggregation itself on large
    models (``benchmarks/aggregation.py``); fedloom's experiments turn it on.

    Faults: an error reply is left out as ``client_error`` (``disconnected`` for the
    engine's node/message-unavailable codes); a sampled node with no reply by the round
    timeout as ``no_reply``; bad updates with the pipeline's reasons (``checks.REASONS``).

    The global model: :meth:`aggregate_train` aggregates towards the model
    :meth:`configure_train` sent; called on its own (Flower's tests, custom loops) it
    uses :attr:`current_arrays` when set (as Flower's ``FedAvgM`` does), and otherwise
    aggregates the replies' weights directly, unless a stage needs the global model (a
    norm filter or the absurd-norm guard, norm clipping, centred clipping, a server
    step other than the identity, decoding compressed replies): then ``ConfigError``
    names it.

    Resuming: :meth:`state_dict` holds what a checkpoint needs (the sampling RNG and the
    schedule's stage states by name, such as server momentum);
    :func:`fedloom.rounds.run_rounds` runs rounds ``first_round..num_rounds`` the way
    ``start`` runs ``1..num_rounds``. The round itself is owned by :attr:`round`, a
    :class:`~fedloom.strategies.round.RoundAggregator` (the legacy classes share it).
    """

    def __init__(
        self,
        method: Pipeline | Schedule | Sequence[Stage],
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        min_valid_updates: int = 1,
        seed: int | None = None,
        secure_sampling: bool = False,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        absurd_norm_ratio: float | None = None,
        scaffold: bool = False,
        count_message_bytes: bool = False,
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
        self.round = RoundAggregator(method, min_valid_updates=min_valid_updates, seed=seed,
                                     secure_sampling=secure_sampling,
                                     absurd_norm_ratio=absurd_norm_ratio, scaffold=scaffold)
        #: The global model to aggregate towards when no configure step sent one (as in
        #: Flower's ``FedAvgM``); the strategy keeps it at the latest aggregate.
        self.current_arrays: ArrayRecord | None = None
        #: count whole serialized messages in ``bytes-*`` (see the class docstring)
        self.count_message_bytes = bool(count_message_bytes)

    # the round owner's settings, under the names Flower users and fedloom code read
    schedule = property(lambda self: self.round.schedule)
    reports = property(lambda self: self.round.reports)
    min_valid_updates = property(lambda self: self.round.min_valid_updates)
    seed = property(lambda self: self.round.seed)
    secure_sampling = property(lambda self: self.round.secure_sampling)
    absurd_norm_ratio = property(lambda self: self.round.absurd_norm_ratio)
    scaffold = property(lambda self: self.round.control_variate is not None)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue this strategy bit for bit (see
        :meth:`RoundAggregator.state_dict`)."""
        return self.round.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.round.load_state_dict(state)

    def summary(self) -> None:
        super().summary()
        for start, pipeline in self.schedule.phases:
            log(INFO, "\t└──> fedloom from round %d: %s %s", start, pipeline.name,
                pipeline.client_config or "")

    # ------------------------------------------------------------------ sampling
    def _sample(self, grid: Grid, fraction: float, min_nodes: int) -> list[int]:
        """Flower's ``sample_nodes`` with the round owner's RNG: waits for enough nodes,
        then samples."""
        sample_size = max(int(len(list(grid.get_node_ids())) * fraction), min_nodes)
        needed = max(self.min_available_nodes, sample_size)
        while len(nodes := sorted(grid.get_node_ids())) < needed:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(nodes), needed)
            time.sleep(1)
        return self.round.sample(nodes, sample_size)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send them the global model plus the round's train config.

        The config is the caller's ``train_config``, overridden by the pipeline's
        ``client_config`` (e.g. FedAvg's ``local-epochs``), plus ``server-round``.
        """
        self.current_arrays = arrays
        model, keys = arrayrecord_views(arrays), list(arrays.keys())
        if self.fraction_train == 0.0:
            self.round.begin_round(model, keys)
            return []
        round_config = ConfigRecord(dict(config))
        round_config.update(self.round.client_config(server_round))
        num_nodes = len(list(grid.get_node_ids()))
        node_ids = self._sample(grid, self.fraction_train, self.min_train_nodes)
        log(INFO, "configure_train: sampled %d nodes", len(node_ids))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: round_config})
        if self.round.control_variate is not None:
            record[SCAFFOLD_RECORD] = ndarrays_to_arrayrecord(self.round.control_variate.ensure(model), keys)
        messages = self._construct_messages(record, node_ids, MessageType.TRAIN)
        payload = len(messages) * sum(arrayrecord_num_bytes(r) for r in record.array_records.values())
        self.round.begin_round(model, keys, sampled=node_ids, num_nodes=num_nodes,
                               bytes_sent=messages_num_bytes(messages) if self.count_message_bytes else payload,
                               payload_sent=payload)
        return messages

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
        the previous global model. Needs no prior :meth:`configure_train` (see the
        class docstring for where the global model then comes from).
        """
        replies = list(replies)
        self._adopt_current_arrays()
        updates, rejected, deltas = decode_train_replies(replies, self.round, self.weighted_by_key,
                                                         type(self).__name__)
        rejected += self.round.missing_replies({str(m.metadata.src_node_id) for m in replies})
        payload = sum(arrayrecord_num_bytes(r) for m in replies if m.has_content()
                      for r in m.content.array_records.values())
        result, report = self.round.aggregate(
            server_round, updates, rejected, payload_received=payload,
            bytes_received=sum(map(message_num_bytes, replies)) if self.count_message_bytes else payload,
            control_deltas=deltas)
        arrays = None
        if result.weights is not None:
            arrays = ndarrays_to_arrayrecord(result.weights, self.round.global_keys)
            self.current_arrays = arrays
        return arrays, MetricRecord(report.as_metrics())

    def _adopt_current_arrays(self) -> None:
        if self.round.global_weights is None and self.current_arrays is not None:
            self.round.use_global_model(arrayrecord_views(self.current_arrays),
                                        list(self.current_arrays.keys()))

    def screen_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The replies this strategy could aggregate; the others are kept as rejections
        for this round's report (:meth:`reject`).

        For wrappers that touch the replies' arrays before this strategy sees them
        (Flower's DP wrappers clip every reply and drop the whole round on any error
        reply): screened first, a crashed, malformed, mis-shaped or non-finite reply is
        left out with its reason instead of crashing or voiding the round
        (:class:`fedloom.privacy.ScreenReplies`). So is a ``zero_update``: an update
        whose distance from the global model is 0 as Flower's clipping computes it
        (``get_norm`` of the difference, in the arrays' dtype, so float32 underflow
        counts): Flower 1.42's clipping divides by that norm and would end the run
        with ``ZeroDivisionError``. Call after :meth:`configure_train`.
        """
        kept = []
        for msg in replies:
            updates, rejected, _ = decode_train_replies([msg], self.round, self.weighted_by_key,
                                                    type(self).__name__)
            if not rejected:
                try:
                    check_update(updates[0].weights, self.round.global_weights or [])
                    check_finite(updates[0].weights)
                except UpdateRejected as err:
                    rejected = [Rejection(updates[0].client_id, err.reason, str(err))]
            if not rejected and self.round.global_weights is not None:
                distance = get_norm([np.subtract(w, g) for w, g in
                                     zip(updates[0].weights, self.round.global_weights)])
                if not distance > 0.0:
                    rejected = [Rejection(updates[0].client_id, "zero_update",
                                          "the update equals the global model (distance 0)")]
            for rejection in rejected:
                self.reject(rejection.client_id, rejection.reason, rejection.detail)
            if not rejected:
                kept.append(msg)
        return kept

    def reject(self, client_id: str, reason: str, detail: str) -> None:
        """Leave ``client_id``'s reply of the current round out with ``reason`` (a tag
        of ``checks.REASONS``) before aggregation; it is counted in the round's report
        as the pipeline's own rejections are (and is not reported as ``no_reply``).

        Raises:
            ValueError: ``reason`` is not a tag of ``fedloom.aggregation.REASONS``.
        """
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; expected one of {sorted(REASONS)}.")
        self.round.screened.append(Rejection(str(client_id), reason, detail))

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


class SimpleAverage(FedloomStrategy):
    __doc__ = methods.simple_average.__doc__
    __init__ = methods.strategy_init(methods.simple_average, FedloomStrategy)


class WeightedAverage(FedloomStrategy):
    __doc__ = methods.weighted_average.__doc__
    __init__ = methods.strategy_init(methods.weighted_average, FedloomStrategy)


class FederatedAveraging(FedloomStrategy):
    __doc__ = methods.federated_averaging.__doc__
    __init__ = methods.strategy_init(methods.federated_averaging, FedloomStrategy)


class _ControlVariates(FedloomStrategy):
    """The base of :class:`Scaffold`: a fedloom strategy with ``scaffold=True``."""

    def __init__(self, method: Pipeline | Schedule | Sequence[Stage], **options: Any) -> None:
        super().__init__(method, scaffold=True, **options)


class Scaffold(_ControlVariates):
    __doc__ = methods.scaffold.__doc__
    __init__ = methods.strategy_init(methods.scaffold, _ControlVariates)


class Hybrid(FedloomStrategy):
    """A hybrid: any pipeline of stages, or a schedule of pipelines over rounds.

    Args:
        method: a :class:`Pipeline`, a :class:`Schedule`, or a sequence of stages.
        **strategy_options: as :class:`FedloomStrategy`.

    Ready-made hybrids: :meth:`size_quality`, :meth:`robust_weighted`,
    :meth:`warmup_then_fedavg` (arguments as the functions of the same name in
    :mod:`fedloom.strategies.methods`).
    """

    size_quality = methods.strategy_factory(methods.size_quality)
    robust_weighted = methods.strategy_factory(methods.robust_weighted)
    warmup_then_fedavg = methods.strategy_factory(methods.warmup_then_fedavg)
