"""fedloom strategies for Flower's legacy API (``flwr.server.strategy``).

This is the API of ``NumPyClient`` projects, ``ServerApp(server_fn=...)`` with
``ServerAppComponents``, and SecAgg+ (``SecAggPlusWorkflow``). The classes subclass
Flower's legacy ``FedAvg`` and take its arguments (``fraction_fit``,
``min_fit_clients``, ``evaluate_fn``, ``on_fit_config_fn``, ``initial_parameters``, ...):

    from fedloom.strategies.legacy import WeightedAverage
    strategy = WeightedAverage(weight_by="num_examples", fraction_fit=0.5)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=10))

The aggregation is the same pipeline as in the Message API: every update is checked,
bad ones are left out with a logged reason, too few valid updates keep the global model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.common import Code, EvaluateIns, FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedloom.aggregation import ClientUpdate, Pipeline, Rejection, Schedule, Stage
from fedloom.errors import ConfigError
from fedloom.records import (
    legacy_message_num_bytes,
    legacy_messages_num_bytes,
    ndarrays_to_parameters,
    parameters_views,
)
from fedloom.strategies import methods
from fedloom.strategies.reporting import average_client_metrics
from fedloom.strategies.round import RoundAggregator

__all__ = [
    "FedloomLegacyStrategy",
    "SimpleAverage",
    "WeightedAverage",
    "FederatedAveraging",
    "Scaffold",
    "Hybrid",
]


class FedloomLegacyStrategy(FedAvg):
    """A Flower legacy-API strategy that aggregates with a fedloom pipeline or schedule.

    Args:
        method: the aggregation :class:`Pipeline`, a :class:`Schedule` of them, or a
            sequence of stages.
        min_valid_updates: a round with fewer valid updates keeps the global model.
        seed: seeds client sampling (``None``: a random seed), so runs can be repeated
            and resumed (Flower's own sampling draws from Python's global RNG).
        secure_sampling: sample with ``random.SystemRandom()`` (secret, as differential
            privacy's sampling needs); the state then holds no RNG.
        absurd_norm_ratio: leave out (reason ``absurd_norm``) any update farther from
            the global model than this many times the round's median distance (with
            >= 3 updates) or than this many times the global model's own norm. Off
            (``None``) by default: it reads every update once more and makes a plain
            weighted average about 1.5x slower on large models (see
            ``benchmarks/aggregation.py``); fedloom's experiments turn it on (1000).
        **fedavg_options: any keyword argument of ``flwr.server.strategy.FedAvg``
            (``fraction_fit``, ``min_fit_clients``, ``evaluate_fn``, ...). Without an
            ``evaluate_metrics_aggregation_fn``, evaluation metrics are averaged weighted
            by example count. ``fit_metrics_aggregation_fn`` is replaced by fedloom's
            round report (client metrics averaged plus ``clients-used`` etc.).

    The global model: :meth:`aggregate_fit` aggregates towards the parameters
    :meth:`configure_fit` sent; called on its own it uses ``initial_parameters`` when
    set (as Flower's ``FedAvgM`` does), and otherwise aggregates the results' weights
    directly, unless a stage needs the global model (then ``ConfigError`` names it).

    Bytes: ``payload-sent`` / ``payload-received`` count the ``Parameters`` tensors of
    each ``FitIns`` sent and ``FitRes`` received; with ``count_message_bytes=True``,
    ``bytes-sent`` / ``bytes-received`` count each as the train Message Flower's
    compatibility layer makes of it (:func:`fedloom.records.legacy_message_num_bytes`;
    failures, which carry none, excluded), else they repeat the payload (counting whole
    messages serializes and hashes every byte: off by default, on in fedloom's
    experiments). Under SecAgg+ each result
    holds the secure aggregate, not what the client sent (the masked vectors SecAgg+
    exchanges are not counted). SCAFFOLD needs the Message API.

    Resuming: :meth:`state_dict` / :meth:`load_state_dict` as in the Message API
    (sampling RNG, stage states by name); the round is owned by :attr:`round`, the same
    :class:`~fedloom.strategies.round.RoundAggregator` the Message API uses.
    """

    def __init__(self, method: Pipeline | Schedule | Sequence[Stage], *, min_valid_updates: int = 1,
                 seed: int | None = None, secure_sampling: bool = False,
                 absurd_norm_ratio: float | None = None, count_message_bytes: bool = False,
                 **fedavg_options: Any) -> None:
        fedavg_options.setdefault("evaluate_metrics_aggregation_fn", average_client_metrics)
        super().__init__(**fedavg_options)
        self.count_message_bytes = bool(count_message_bytes)
        self.round = RoundAggregator(method, min_valid_updates=min_valid_updates, seed=seed,
                                     secure_sampling=secure_sampling,
                                     absurd_norm_ratio=absurd_norm_ratio)

    schedule = property(lambda self: self.round.schedule)
    reports = property(lambda self: self.round.reports)
    min_valid_updates = property(lambda self: self.round.min_valid_updates)
    seed = property(lambda self: self.round.seed)
    secure_sampling = property(lambda self: self.round.secure_sampling)
    absurd_norm_ratio = property(lambda self: self.round.absurd_norm_ratio)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r})"

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue bit for bit (sampling RNG, stage states)."""
        return self.round.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.round.load_state_dict(state)

    def _sample(self, client_manager: ClientManager, sample_size: int, min_num_clients: int
                ) -> list[ClientProxy]:
        """Flower's ``client_manager.sample`` with the round owner's RNG."""
        client_manager.wait_for(min_num_clients)
        available = client_manager.all()
        if sample_size > len(available):
            return []
        return [available[cid] for cid in self.round.sample(list(available), sample_size)]

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Sample clients (seeded); the config gains the pipeline's ``client_config``."""
        config = dict(self.on_fit_config_fn(server_round)) if self.on_fit_config_fn else {}
        config.update(self.round.client_config(server_round))
        sample_size, min_num_clients = self.num_fit_clients(client_manager.num_available())
        clients = self._sample(client_manager, sample_size, min_num_clients)
        fit_ins = FitIns(parameters, config)
        payload = len(clients) * sum(len(t) for t in parameters.tensors)
        self.round.begin_round(
            parameters_views(parameters), sampled=[c.cid for c in clients],
            num_nodes=client_manager.num_available(),
            bytes_sent=legacy_messages_num_bytes(fit_ins, [_node_id(c.cid) for c in clients],
                                                 group_id=str(server_round))
            if self.count_message_bytes else payload,
            payload_sent=payload)
        return [(client, fit_ins) for client in clients]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Flower's federated evaluation with the round owner's (seeded) sampling."""
        if self.fraction_evaluate == 0.0:
            return []
        config = dict(self.on_evaluate_config_fn(server_round)) if self.on_evaluate_config_fn else {}
        sample_size, min_num_clients = self.num_evaluation_clients(client_manager.num_available())
        clients = self._sample(client_manager, sample_size, min_num_clients)
        evaluate_ins = EvaluateIns(parameters, config)
        return [(client, evaluate_ins) for client in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Validate every result, aggregate the valid ones, report the round. Needs no
        prior :meth:`configure_fit` (see the class docstring)."""
        if self.round.global_weights is None and self.initial_parameters is not None:
            self.round.use_global_model(parameters_views(self.initial_parameters))
        reference = self.round.global_weights
        updates: list[ClientUpdate] = []
        rejected = [_failure_rejection(failure) for failure in failures]
        num_bytes = payload = 0
        secure = _is_secure_aggregate(results)
        # Flower's legacy server lists results in the order its threads finished: sort
        # by client id so the float sums, hence the model, do not depend on timing
        for proxy, fit_res in sorted(results, key=lambda result: str(result[0].cid)):
            tensors = sum(len(t) for t in fit_res.parameters.tensors)
            payload += tensors
            num_bytes += legacy_message_num_bytes(fit_res, dst_node_id=_node_id(proxy.cid), reply=True,
                                                  group_id=str(server_round)) \
                if self.count_message_bytes else tensors
            if fit_res.status.code != Code.OK:
                rejected.append(Rejection(proxy.cid, "client_error", fit_res.status.message))
                continue
            try:
                weights = parameters_views(fit_res.parameters)
            except ValueError as err:
                rejected.append(Rejection(proxy.cid, "malformed", f"undecodable array: {err}"))
                continue
            if secure and reference is not None:
                weights = _cast_floats_like(weights, reference)
            updates.append(ClientUpdate(proxy.cid, weights, fit_res.num_examples, fit_res.metrics))
        # no "no_reply" rejections here: Flower's legacy server reports a client that
        # timed out as a failure (an exception without its cid), counted above
        result, report = self.round.aggregate(server_round, updates, rejected, bytes_received=num_bytes,
                                              payload_received=payload)
        parameters = None if result.weights is None else ndarrays_to_parameters(result.weights)
        if parameters is not None and self.initial_parameters is not None:
            self.initial_parameters = parameters  # as FedAvgM: the next round starts from it
        return parameters, report.as_metrics()


def _node_id(cid: str) -> int:
    """The node id behind a legacy client id (Flower's compatibility layer uses
    ``str(node_id)``); 0 for another kind of id (a custom ClientManager), which changes
    only the few bytes of the id in the counted metadata."""
    try:
        return int(cid)
    except (TypeError, ValueError):
        return 0


def _is_secure_aggregate(results: list[tuple[ClientProxy, FitRes]]) -> bool:
    """Whether ``results`` come from Flower's SecAgg/SecAgg+ workflow (Bell et al. 2020,
    https://eprint.iacr.org/2020/704): it hands the strategy only the unmasked *sum*,
    as the same ``Parameters`` object in every result, dequantised to float64. The
    strategy then sees K copies of the secure aggregate, not the clients' updates, so
    per-client checks and robust rules cannot act (see docs/faults.md)."""
    return len(results) > 1 and all(r.parameters is results[0][1].parameters for _, r in results)


def _cast_floats_like(weights: list[np.ndarray], reference: list[np.ndarray]) -> list[np.ndarray]:
    """The secure aggregate in the model's float dtypes (SecAgg dequantises to float64)."""
    if len(weights) != len(reference):
        return weights  # left to the structural check, which says what is wrong
    return [w.astype(g.dtype) if w.dtype != g.dtype and np.issubdtype(w.dtype, np.floating)
            and np.issubdtype(g.dtype, np.floating) else w for w, g in zip(weights, reference)]


def _failure_rejection(failure: tuple[ClientProxy, FitRes] | BaseException) -> Rejection:
    if isinstance(failure, BaseException):
        return Rejection("?", "client_error", f"{type(failure).__name__}: {failure}")
    proxy, fit_res = failure
    return Rejection(proxy.cid, "client_error", fit_res.status.message)


class SimpleAverage(FedloomLegacyStrategy):
    __doc__ = methods.simple_average.__doc__
    __init__ = methods.strategy_init(methods.simple_average, FedloomLegacyStrategy)


class WeightedAverage(FedloomLegacyStrategy):
    __doc__ = methods.weighted_average.__doc__
    __init__ = methods.strategy_init(methods.weighted_average, FedloomLegacyStrategy)


class FederatedAveraging(FedloomLegacyStrategy):
    __doc__ = methods.federated_averaging.__doc__
    __init__ = methods.strategy_init(methods.federated_averaging, FedloomLegacyStrategy)


class Scaffold(FedloomLegacyStrategy):
    """SCAFFOLD needs the Message API (``fedloom.strategies.Scaffold``): a legacy
    ``FitIns`` cannot carry the server control variate, nor a ``FitRes`` the client's
    ``delta_c``. The class exists so that ``conf/strategy/scaffold.yaml`` names one
    method for both APIs; it builds the same pipeline and refuses, with
    ``ConfigError``, to configure a round."""

    __init__ = methods.strategy_init(methods.scaffold, FedloomLegacyStrategy)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        raise ConfigError(
            "SCAFFOLD needs Flower's Message API: use fedloom.strategies.Scaffold (or any "
            "fedloom Message-API strategy with scaffold=True) in a ServerApp with a "
            "Message-API ClientApp such as fedloom.clients.make_client_app.")


class Hybrid(FedloomLegacyStrategy):
    """A hybrid: any pipeline of stages, or a schedule of pipelines over rounds (see
    :class:`fedloom.strategies.Hybrid`); ready-made: :meth:`size_quality`,
    :meth:`robust_weighted`, :meth:`warmup_then_fedavg`."""

    size_quality = methods.strategy_factory(methods.size_quality)
    robust_weighted = methods.strategy_factory(methods.robust_weighted)
    warmup_then_fedavg = methods.strategy_factory(methods.warmup_then_fedavg)
