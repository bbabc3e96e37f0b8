"""The named strategies' constructors, written once for both Flower APIs.

Each mixin turns its method's arguments into a pipeline (``methods``) and hands the
remaining arguments (client sampling, minimums) to the API's base strategy. The
concrete classes are ``class SimpleAverage(SimpleAverageMixin, <API base>)`` in
``message_api`` and ``legacy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fedloom.aggregation import ClientUpdate, Pipeline, Schedule, Stage
from fedloom.aggregation.weighting import DEFAULT_QUALITY_FLOOR
from fedloom.strategies import methods

__all__ = [
    "SimpleAverageMixin",
    "WeightedAverageMixin",
    "FederatedAveragingMixin",
    "HybridMixin",
]


class SimpleAverageMixin:
    """Simple (unweighted) average: every valid update counts the same."""

    def __init__(self, **strategy_options: Any) -> None:
        super().__init__(methods.simple_average(), **strategy_options)  # type: ignore[call-arg]


class WeightedAverageMixin:
    """Weighted average by data size, by model quality, by both, or by a callable.

    Args:
        weight_by: ``"num_examples"``, ``"quality"``, ``"num_examples*quality"``,
            ``"uniform"`` or ``f(ClientUpdate) -> float >= 0``.
        quality_key: client metric holding quality (default ``"quality"``: the fedloom
            Keras client reports its validation accuracy after local training there).
        quality_kind: ``"accuracy"`` (higher is better) or ``"loss"`` (lower is better,
            mapped to ``1 / (1 + loss)``).
        quality_floor: least quality weight, so a valid client never weighs 0.
        **strategy_options: sampling and minimums of the API's base strategy.
    """

    def __init__(
        self,
        weight_by: str | Callable[[ClientUpdate], float] = "num_examples",
        *,
        quality_key: str = "quality",
        quality_kind: str = "accuracy",
        quality_floor: float = DEFAULT_QUALITY_FLOOR,
        **strategy_options: Any,
    ) -> None:
        method = methods.weighted_average(
            weight_by, quality_key=quality_key, quality_kind=quality_kind, floor=quality_floor
        )
        super().__init__(method, **strategy_options)  # type: ignore[call-arg]


class FederatedAveragingMixin:
    """FedAvg, McMahan et al. 2017 (https://arxiv.org/abs/1602.05629).

    Args:
        local_epochs: E, sent to clients as ``local-epochs`` in the train config.
        batch_size: B, sent as ``batch-size``.
        server_learning_rate: 1.0 is the plain weighted model average.
        server_momentum: FedAvgM momentum on the pseudo-gradient (0 disables it).
        **strategy_options: sampling of the API's base strategy; the client fraction C is
            ``fraction_train`` (Message API) or ``fraction_fit`` (legacy).
    """

    def __init__(
        self,
        *,
        local_epochs: int = 1,
        batch_size: int = 10,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        **strategy_options: Any,
    ) -> None:
        method = methods.federated_averaging(
            local_epochs=local_epochs,
            batch_size=batch_size,
            server_learning_rate=server_learning_rate,
            server_momentum=server_momentum,
        )
        super().__init__(method, **strategy_options)  # type: ignore[call-arg]


class HybridMixin:
    """A hybrid: any pipeline of stages, or a schedule of pipelines over rounds.

    Args:
        method: a :class:`Pipeline`, a :class:`Schedule`, or a sequence of stages.
        **strategy_options: sampling and minimums of the API's base strategy.

    Ready-made hybrids: :meth:`size_quality`, :meth:`robust_weighted`,
    :meth:`warmup_then_fedavg`.
    """

    def __init__(self, method: Pipeline | Schedule | Sequence[Stage], **strategy_options: Any) -> None:
        if not isinstance(method, (Pipeline, Schedule)):
            method = Pipeline(*method, name="hybrid")
        super().__init__(method, **strategy_options)  # type: ignore[call-arg]

    @classmethod
    def size_quality(
        cls,
        *,
        quality_key: str = "quality",
        quality_kind: str = "accuracy",
        quality_floor: float = DEFAULT_QUALITY_FLOOR,
        **strategy_options: Any,
    ):
        """Weight by ``num_examples * max(quality score, floor)``."""
        method = methods.size_quality(
            quality_key=quality_key, quality_kind=quality_kind, floor=quality_floor
        )
        return cls(method, **strategy_options)

    @classmethod
    def robust_weighted(
        cls,
        robust: str = "trimmed_mean",
        *,
        beta: float = 0.2,
        num_byzantine: int = 1,
        num_selected: int | None = None,
        weight_by: str = "num_examples",
        max_norm_ratio: float | None = 2.5,
        norm_window: int = 5,
        clip_median_multiple: float | None = None,
        bucket_size: int = 1,
        clip_radius: float = 1.0,
        **strategy_options: Any,
    ):
        """Robust filtering (trimmed mean, Krum, median or centred clipping), then weighting; see
        :func:`fedloom.strategies.methods.robust_weighted`."""
        method = methods.robust_weighted(
            robust,
            beta=beta,
            num_byzantine=num_byzantine,
            num_selected=num_selected,
            weight_by=weight_by,
            max_norm_ratio=max_norm_ratio,
            norm_window=norm_window,
            clip_median_multiple=clip_median_multiple,
            bucket_size=bucket_size,
            clip_radius=clip_radius,
        )
        return cls(method, **strategy_options)

    @classmethod
    def warmup_then_fedavg(
        cls,
        warmup_rounds: int = 3,
        *,
        local_epochs: int = 5,
        batch_size: int = 10,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        **strategy_options: Any,
    ):
        """Simple averaging of 1-epoch updates for ``warmup_rounds`` rounds, then FedAvg."""
        method = methods.warmup_then_fedavg(
            warmup_rounds,
            local_epochs=local_epochs,
            batch_size=batch_size,
            server_learning_rate=server_learning_rate,
            server_momentum=server_momentum,
        )
        return cls(method, **strategy_options)
