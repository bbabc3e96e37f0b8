"""The named aggregation methods, defined once for both Flower APIs and the configs.

Each function returns a :class:`~fedloom.aggregation.Pipeline` (or a
:class:`~fedloom.aggregation.Schedule`) built from small stages. Its signature is the
only place a named method's arguments are written: :func:`strategy_init` and
:func:`strategy_factory` make the strategy classes' constructors (``SimpleAverage``,
``WeightedAverage``, ``FederatedAveraging``, ``Hybrid.size_quality``, ...) in
``message_api`` and ``legacy`` from it, and the YAML files in ``conf/strategy`` name
the same arguments (a test checks each one against the signature).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fedloom.aggregation import (
    Bucket,
    CenteredClip,
    ClientUpdate,
    ClipNorm,
    CoordinateMedian,
    KrumSelect,
    Mean,
    Pipeline,
    RejectNormOutliers,
    Schedule,
    ServerStep,
    TrimmedMean,
    WeightBy,
)
from fedloom.aggregation.weighting import DEFAULT_QUALITY_FLOOR
from fedloom.errors import ConfigError

__all__ = [
    "simple_average",
    "weighted_average",
    "federated_averaging",
    "scaffold",
    "size_quality",
    "robust_weighted",
    "warmup_then_fedavg",
    "ROBUST_REDUCERS",
    "strategy_init",
    "strategy_factory",
]

ROBUST_REDUCERS = ("trimmed_mean", "median", "krum", "centered_clip")


def simple_average() -> Pipeline:
    """Simple (unweighted) average: every valid update counts the same, ``mean_k u_k``."""
    return Pipeline(WeightBy("uniform"), Mean(), name="simple average")


def weighted_average(
    weight_by: str | Callable[[ClientUpdate], float] = "num_examples",
    *,
    quality_key: str = "quality",
    quality_kind: str = "accuracy",
    quality_floor: float = DEFAULT_QUALITY_FLOOR,
) -> Pipeline:
    """Weighted average by data size, by model quality, by both, or by a callable:
    ``sum_k w_k u_k / sum_k w_k``.

    Args:
        weight_by: ``"num_examples"``, ``"quality"``, ``"num_examples*quality"``,
            ``"uniform"`` or ``f(ClientUpdate) -> float >= 0``.
        quality_key: client metric holding quality (default ``"quality"``: the fedloom
            Keras client reports its validation accuracy after local training there).
        quality_kind: ``"accuracy"`` (higher is better) or ``"loss"`` (lower is better,
            mapped to ``1 / (1 + loss)``).
        quality_floor: least quality weight, so a valid client never weighs 0.
    """
    weighting = WeightBy(weight_by, quality_key=quality_key, quality_kind=quality_kind,
                         floor=quality_floor)
    label = weight_by if isinstance(weight_by, str) else getattr(weight_by, "__name__", "callable")
    return Pipeline(weighting, Mean(), name=f"weighted average ({label})")


def federated_averaging(
    *,
    local_epochs: int = 1,
    batch_size: int = 10,
    server_learning_rate: float = 1.0,
    server_momentum: float = 0.0,
    proximal_mu: float = 0.0,
) -> Pipeline:
    """FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629).

    Clients run ``local_epochs`` (E) epochs of minibatch SGD with ``batch_size`` (B);
    the server takes the ``num_examples``-weighted mean and, optionally, a server step
    with learning rate and momentum (FedAvgM, Hsu et al. 2019).

    Args:
        local_epochs: E, sent to clients as ``local-epochs`` in the train config.
        batch_size: B, sent as ``batch-size``.
        server_learning_rate: 1.0 is the plain weighted model average.
        server_momentum: FedAvgM momentum on the pseudo-gradient (0 disables it).
        proximal_mu: FedProx's proximal term ``mu/2 ||w - w_global||^2`` added to each
            client's local loss (Li et al. 2020, https://arxiv.org/abs/1812.06127), sent
            to clients as ``proximal-mu`` (the key Flower's ``FedProx`` sends); 0 is
            plain FedAvg and sends nothing.

    The client fraction C is the strategy's ``fraction_train`` (Message API) or
    ``fraction_fit`` (legacy).
    """
    if local_epochs < 1 or batch_size < 1:
        raise ConfigError(
            f"FedAvg needs local_epochs >= 1 and batch_size >= 1; got "
            f"local_epochs={local_epochs}, batch_size={batch_size}."
        )
    if isinstance(proximal_mu, bool) or not isinstance(proximal_mu, (int, float)) or not proximal_mu >= 0:
        raise ConfigError(
            f"FedAvg needs proximal_mu >= 0 (0: no proximal term); got proximal_mu={proximal_mu!r}.")
    client_config: dict[str, Any] = {"local-epochs": int(local_epochs), "batch-size": int(batch_size)}
    if proximal_mu > 0:
        client_config["proximal-mu"] = float(proximal_mu)
    return Pipeline(
        WeightBy("num_examples"),
        Mean(),
        ServerStep(server_learning_rate, server_momentum),
        client_config=client_config,
        name="federated averaging" if proximal_mu == 0 else "federated averaging (proximal)",
    )


def scaffold(
    *,
    local_epochs: int = 1,
    batch_size: int = 10,
    server_learning_rate: float = 1.0,
    server_momentum: float = 0.0,
) -> Pipeline:
    """SCAFFOLD (Karimireddy et al., ICML 2020, https://arxiv.org/abs/1910.06378,
    option II): FedAvg's aggregation (arguments as :func:`federated_averaging`; the
    paper's global step size is ``server_learning_rate``) whose strategy also keeps the
    server control variate ``c`` and whose clients correct every local step by
    ``c - c_i`` (the strategy's ``scaffold=True``; see ``fedloom.strategies.scaffold``).
    Message API only: the legacy ``Scaffold`` refuses to configure a round."""
    pipeline = federated_averaging(local_epochs=local_epochs, batch_size=batch_size,
                                   server_learning_rate=server_learning_rate,
                                   server_momentum=server_momentum)
    pipeline.name = "scaffold"
    return pipeline


def size_quality(
    *, quality_key: str = "quality", quality_kind: str = "accuracy",
    quality_floor: float = DEFAULT_QUALITY_FLOOR,
) -> Pipeline:
    """Hybrid: weight by ``num_examples * max(quality score, quality_floor)`` (arguments as
    in :func:`weighted_average`)."""
    pipeline = weighted_average(
        "num_examples*quality", quality_key=quality_key, quality_kind=quality_kind,
        quality_floor=quality_floor,
    )
    pipeline.name = "size x quality"
    return pipeline


def robust_weighted(
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
) -> Pipeline:
    """Hybrid: robust filtering, then weighting.

    Args:
        robust: ``"trimmed_mean"`` (per coordinate drop ``floor(beta*K)`` values at each
            end, average the rest weighted by ``weight_by``), ``"krum"`` (keep the
            ``num_selected`` Multi-Krum updates, default ``K - num_byzantine``, then the
            weighted mean), ``"median"`` (coordinate-wise median, unweighted), or
            ``"centered_clip"`` (centred clipping around the last round's step with
            radius ``clip_radius`` times the round's median distance from it, weighted
            by ``weight_by``; :class:`~fedloom.aggregation.CenteredClip`).
            Krum counts the updates the filter already rejected against
            ``num_byzantine`` (:class:`~fedloom.aggregation.KrumSelect`
            ``count_rejected``): ``num_byzantine`` is the number of attackers expected
            among the updates that arrive in a round.
        max_norm_ratio: first reject updates whose distance from the model exceeds this
            multiple of the reference distance (``None`` to skip): the median of the
            per-round median distances of the last ``norm_window`` rounds
            (:class:`~fedloom.aggregation.RejectNormOutliers`). With the defaults (2.5,
            5 rounds) ``benchmarks/byzantine.py`` saw 2-3% of honest updates on non-IID
            digits left out when nobody attacked.
        clip_median_multiple: then clip every update to this multiple of the round's
            median distance (``None`` to skip), so a boosted update weighs no more than
            a typical one in whatever the robust rule lets through.
        bucket_size: then average random groups of this many updates before the robust
            rule (:class:`~fedloom.aggregation.Bucket`, Karimireddy et al. 2022; 1: no
            groups). Groups differ less than non-IID clients do, so the coordinate-wise
            rules discard less honest signal: ``conf/strategy/robust_trimmed.yaml`` and
            ``robust_median.yaml`` use 2. With Krum, ``num_byzantine`` then counts bad
            groups and needs ``ceil(K / bucket_size) >= num_byzantine + 3``.
        clip_radius: with ``robust="centered_clip"``, the clipping radius as a multiple
            of the round's median distance of the updates from the centre.
    """
    if robust not in ROBUST_REDUCERS:
        raise ConfigError(f"robust must be one of {ROBUST_REDUCERS}; got robust={robust!r}.")
    stages: list = [] if max_norm_ratio is None else [RejectNormOutliers(max_norm_ratio, window=norm_window)]
    if clip_median_multiple is not None:
        stages.append(ClipNorm(median_multiple=clip_median_multiple))
    if bucket_size != 1:
        stages.append(Bucket(bucket_size))
    if robust == "krum":
        krum = KrumSelect(num_byzantine, num_selected, count_rejected=True)
        stages += [krum, WeightBy(weight_by), Mean()]
    elif robust == "trimmed_mean":
        stages += [WeightBy(weight_by), TrimmedMean(beta, weighted=True)]
    elif robust == "centered_clip":
        stages += [WeightBy(weight_by), CenteredClip(clip_radius)]
    else:
        stages += [CoordinateMedian()]
    return Pipeline(*stages, name=f"robust ({robust}) then {weight_by}")


def warmup_then_fedavg(
    warmup_rounds: int = 3,
    *,
    local_epochs: int = 5,
    batch_size: int = 10,
    server_learning_rate: float = 1.0,
    server_momentum: float = 0.0,
) -> Schedule:
    """Hybrid schedule: simple averaging of one-epoch updates for ``warmup_rounds`` rounds,
    then FedAvg with ``local_epochs`` epochs.

    Short, equally-weighted rounds first let every client pull the fresh model towards
    its data before long local training starts from a shared, reasonable point.
    """
    warmup = Pipeline(WeightBy("uniform"), Mean(), client_config={"local-epochs": 1},
                      name="warm-up (simple average)")
    fedavg = federated_averaging(
        local_epochs=local_epochs,
        batch_size=batch_size,
        server_learning_rate=server_learning_rate,
        server_momentum=server_momentum,
    )
    warmup.client_config["batch-size"] = int(batch_size)
    return Schedule.switch_after(warmup_rounds, warmup, fedavg)


# --------------------------------------------------------------------------- strategies
_HELP = ("**strategy_options: node sampling, minimums and the other settings of the API's "
         "base strategy (``FedloomStrategy`` / ``FedloomLegacyStrategy``).")


def _split(factory: Callable[..., Any], args: tuple, options: dict[str, Any]) -> tuple[Any, dict]:
    """Build ``factory``'s method from ``args`` and the options it names; return the
    method and the options left for the base strategy."""
    names = [n for n, p in inspect.signature(factory).parameters.items()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    own = {name: options.pop(name) for name in names if name in options}
    return factory(*args, **own), options


def _signature(factory: Callable[..., Any], first: list[inspect.Parameter]) -> inspect.Signature:
    params = [*first, *inspect.signature(factory).parameters.values(),
              inspect.Parameter("strategy_options", inspect.Parameter.VAR_KEYWORD)]
    return inspect.Signature(params)


def strategy_init(factory: Callable[..., Any], base: type) -> Callable[..., None]:
    """An ``__init__`` for a named strategy class on ``base``: ``factory``'s arguments
    build the method, the others go to ``base.__init__(method, ...)``."""

    def __init__(self, *args: Any, **options: Any) -> None:
        method, rest = _split(factory, args, options)
        base.__init__(self, method, **rest)

    __init__.__signature__ = _signature(  # type: ignore[attr-defined]
        factory, [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
    __init__.__doc__ = f"{factory.__doc__}\n\n    {_HELP}"
    return __init__


def strategy_factory(factory: Callable[..., Any]) -> classmethod:
    """A classmethod ``cls.<name>(...)`` building ``cls(factory(...), **strategy_options)``
    (the ready-made hybrids of ``Hybrid``)."""

    @functools.wraps(factory)
    def build(cls, *args: Any, **options: Any):
        method, rest = _split(factory, args, options)
        return cls(method, **rest)

    build.__signature__ = _signature(  # type: ignore[attr-defined]
        factory, [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
    build.__doc__ = f"{factory.__doc__}\n\n    {_HELP}"
    return classmethod(build)
