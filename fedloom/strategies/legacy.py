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

from typing import Any

import numpy as np
from flwr.common import Code, FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fedloom.aggregation import ClientUpdate, Pipeline, Rejection, Schedule
from fedloom.strategies.named import (
    FederatedAveragingMixin,
    HybridMixin,
    SimpleAverageMixin,
    WeightedAverageMixin,
)
from fedloom.records import ndarrays_to_parameters, parameters_views
from fedloom.strategies.reporting import (
    RoundReport,
    absurd_norm_guards,
    aggregate_round,
    average_client_metrics,
)

__all__ = [
    "FedloomLegacyStrategy",
    "SimpleAverage",
    "WeightedAverage",
    "FederatedAveraging",
    "Hybrid",
]


class FedloomLegacyStrategy(FedAvg):
    """A Flower legacy-API strategy that aggregates with a fedloom pipeline or schedule.

    Args:
        method: the aggregation :class:`Pipeline`, or a :class:`Schedule` of them.
        min_valid_updates: a round with fewer valid updates keeps the global model.
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
    """

    def __init__(self, method: Pipeline | Schedule, *, min_valid_updates: int = 1,
                 absurd_norm_ratio: float | None = None,
                 **fedavg_options: Any) -> None:
        fedavg_options.setdefault("evaluate_metrics_aggregation_fn", average_client_metrics)
        super().__init__(**fedavg_options)
        self.schedule = method if isinstance(method, Schedule) else Schedule([(1, method)])
        self.min_valid_updates = int(min_valid_updates)
        self._global_weights: list[np.ndarray] | None = None
        self._bytes_sent = 0
        self.reports: list[RoundReport] = []
        self.absurd_norm_ratio = absurd_norm_ratio
        self._guards = absurd_norm_guards(absurd_norm_ratio)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r})"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Flower's sampling; the config gains the pipeline's ``client_config``."""
        self._global_weights = parameters_views(parameters)
        instructions = super().configure_fit(server_round, parameters, client_manager)
        extra = dict(self.schedule.at(server_round).client_config)
        extra["server-round"] = server_round
        for _, fit_ins in instructions:
            fit_ins.config = {**fit_ins.config, **extra}
        self._bytes_sent = len(instructions) * sum(len(t) for t in parameters.tensors)
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Validate every result, aggregate the valid ones, report the round."""
        if self._global_weights is None:
            raise RuntimeError(
                f"{type(self).__name__}.aggregate_fit was called before configure_fit: "
                "the strategy needs the global model the clients trained from."
            )
        updates: list[ClientUpdate] = []
        rejected = [_failure_rejection(failure) for failure in failures]
        num_bytes = 0
        secure = _is_secure_aggregate(results)
        for proxy, fit_res in results:
            num_bytes += sum(len(t) for t in fit_res.parameters.tensors)
            if fit_res.status.code != Code.OK:
                rejected.append(Rejection(proxy.cid, "client_error", fit_res.status.message))
                continue
            try:
                weights = parameters_views(fit_res.parameters)
            except ValueError as err:
                rejected.append(Rejection(proxy.cid, "malformed", f"undecodable array: {err}"))
                continue
            if secure:
                weights = _cast_floats_like(weights, self._global_weights)
            updates.append(ClientUpdate(proxy.cid, weights, fit_res.num_examples, fit_res.metrics))
        result, report = aggregate_round(
            self.schedule, self._global_weights, updates, rejected,
            server_round=server_round, bytes_received=num_bytes, bytes_sent=self._bytes_sent,
            min_updates=self.min_valid_updates, guards=self._guards,
        )
        self.reports.append(report)
        parameters = None if result.weights is None else ndarrays_to_parameters(result.weights)
        return parameters, report.as_metrics()


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


class SimpleAverage(SimpleAverageMixin, FedloomLegacyStrategy):
    __doc__ = SimpleAverageMixin.__doc__


class WeightedAverage(WeightedAverageMixin, FedloomLegacyStrategy):
    __doc__ = WeightedAverageMixin.__doc__


class FederatedAveraging(FederatedAveragingMixin, FedloomLegacyStrategy):
    __doc__ = FederatedAveragingMixin.__doc__


class Hybrid(HybridMixin, FedloomLegacyStrategy):
    __doc__ = HybridMixin.__doc__
