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
    AdaptiveServerStep,
    Bucket,
    Bulyan,
    CenteredClip,
    ClientUpdate,
    ClipNorm,
    CoordinateMedian,
    GeometricMedian,
    KrumSelect,
    Mean,
    Pipeline,
    RejectNormOutliers,
    Schedule,
    ServerStep,
    TrimmedMean,
    WeightBy,
)
from fedloom.aggregation.server_step import ADAPTIVE_OPTIMIZERS
from fedloom.aggregation.stages import Stage
from fedloom.aggregation.weight_cap import DEFAULT_CAP_MULTIPLE
from fedloom.aggregation.weighting import (
    CLIENT_QUALITY_CHOICES,
    DEFAULT_QUALITY_FLOOR,
    QualityScorer,
)
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
    "SERVER_OPTIMIZERS",
    "server_step",
    "strategy_init",
    "strategy_factory",
]

ROBUST_REDUCERS = ("trimmed_mean", "median", "krum", "centered_clip", "bulyan", "geometric_median")
#: ``server_optimizer`` choices: FedAvg(M)'s SGD step, or an adaptive one (Reddi et al. 2021).
SERVER_OPTIMIZERS = ("sgd", *ADAPTIVE_OPTIMIZERS)


def server_step(
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.0,
    beta_1: float | None = None,
    beta_2: float | None = None,
    tau: float | None = None,
) -> Stage:
    """The server-step stage for ``optimizer``: :class:`~fedloom.aggregation.ServerStep`
    (``"sgd"``: learning rate, default 1, and momentum; FedAvgM) or
    :class:`~fedloom.aggregation.AdaptiveServerStep` (``"adam"``, ``"yogi"``,
    ``"adagrad"``: ``learning_rate`` is Reddi et al.'s ``eta``; ``None`` for any of
    ``learning_rate``, ``beta_1``, ``beta_2``, ``tau`` takes the default of Flower's
    Message-API ``FedAdam`` / ``FedYogi`` / ``FedAdagrad``)."""
    if optimizer not in SERVER_OPTIMIZERS:
        raise ConfigError(f"server_optimizer must be one of {SERVER_OPTIMIZERS}; got {optimizer!r}.")
    if optimizer == "sgd":
        if (beta_1, beta_2, tau) != (None, None, None):
            raise ConfigError(
                "server_beta_1, server_beta_2 and server_tau belong to the adaptive server "
                f"optimizers {ADAPTIVE_OPTIMIZERS}; with server_optimizer='sgd' leave them null "
                "(use server_momentum for SGD momentum).")
        return ServerStep(1.0 if learning_rate is None else learning_rate, momentum)
    if momentum != 0.0:
        raise ConfigError(
            f"server_momentum={momentum} is SGD's momentum; with server_optimizer={optimizer!r} "
            "set server_beta_1 instead (and server_momentum to 0).")
    return AdaptiveServerStep(optimizer, eta=learning_rate, beta_1=beta_1, beta_2=beta_2, tau=tau)


def simple_average() -> Pipeline:
    """Simple (unweighted) average: every valid update counts the same, ``mean_k u_k``."""
    return Pipeline(WeightBy("uniform"), Mean(), name="simple average")


def weighted_average(
    weight_by: str | Callable[[ClientUpdate], float] = "num_examples",
    *,
    quality_key: str = "quality",
    quality_kind: str = "accuracy",
    quality_floor: float = DEFAULT_QUALITY_FLOOR,
    weight_cap: float | str | None = "auto",
    quality_scorer: QualityScorer | None = None,
) -> Pipeline:
    """Weighted average by data size, by model quality, by both, or by a callable:
    ``sum_k w_k u_k / sum_k w_k``.

    Args:
        weight_by: ``"num_examples"``, ``"quality"``, ``"num_examples*quality"``,
            ``"server_quality"``, ``"num_examples*server_quality"``, ``"uniform"`` or
            ``f(ClientUpdate) -> float >= 0``. ``"server_quality"`` scores each update
            on the server's own data with ``quality_scorer`` instead of trusting the
            client's ``quality`` metric (:mod:`fedloom.aggregation.weighting`).
        quality_key: client metric holding quality (default ``"quality"``: the fedloom
            Keras client reports its validation accuracy after local training there).
        quality_kind: ``"accuracy"`` (higher is better) or ``"loss"`` (lower is better,
            mapped to ``1 / (1 + loss)``).
        quality_floor: least quality weight, so a valid client never weighs 0.
        weight_cap: cap each weight at this multiple of the round's median weight
            (``None``: no cap; :func:`~fedloom.aggregation.weight_cap.cap_weights`).
            ``"auto"`` (the default) caps at 3 when the weights read a quality the client
            reports about itself (``"quality"``, ``"num_examples*quality"``), since
            claiming accuracy 1.0 would otherwise buy up to ``1 / quality_floor`` times
            a poor client's weight, and for ``"num_examples*server_quality"`` (the size
            is a claim); plain ``num_examples`` weighting stays uncapped (FedAvg, as
            Flower computes it), and so does ``"server_quality"`` (nothing claimed).
        quality_scorer: with a server-quality ``weight_by``, ``score(updates) -> (K,)
            values`` of ``quality_kind`` (:data:`~fedloom.aggregation.weighting.
            QualityScorer`); fedloom's experiments pass one built from a validation
            split of the server's test data (``server_val_fraction``).
    """
    if weight_cap == "auto":
        claimed = (*CLIENT_QUALITY_CHOICES, "num_examples*server_quality")
        weight_cap = DEFAULT_CAP_MULTIPLE if weight_by in claimed else None
    weighting = WeightBy(weight_by, quality_key=quality_key, quality_kind=quality_kind,
                         floor=quality_floor, cap=weight_cap, scorer=quality_scorer)
    label = weight_by if isinstance(weight_by, str) else getattr(weight_by, "__name__", "callable")
    return Pipeline(weighting, Mean(), name=f"weighted average ({label})")


def federated_averaging(
    *,
    local_epochs: int = 1,
    batch_size: int = 10,
    server_learning_rate: float | None = None,
    server_momentum: float = 0.0,
    proximal_mu: float = 0.0,
    server_optimizer: str = "sgd",
    server_beta_1: float | None = None,
    server_beta_2: float | None = None,
    server_tau: float | None = None,
) -> Pipeline:
    """FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629), and FedOpt.

    Clients run ``local_epochs`` (E) epochs of minibatch SGD with ``batch_size`` (B);
    the server takes the ``num_examples``-weighted mean and, optionally, a server step
    with learning rate and momentum (FedAvgM, Hsu et al. 2019) or an adaptive server
    optimiser: FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021, "Adaptive Federated
    Optimization", https://arxiv.org/abs/2003.00295), as Flower's classes of those names.

    Args:
        local_epochs: E, sent to clients as ``local-epochs`` in the train config.
        batch_size: B, sent as ``batch-size``.
        server_learning_rate: the server's step size; ``None``: 1.0 for SGD (the plain
            weighted model average), Flower's ``eta`` for an adaptive optimiser (0.1
            for Adam and Adagrad, 0.01 for Yogi).
        server_momentum: FedAvgM momentum on the pseudo-gradient (0 disables it; SGD only).
        proximal_mu: FedProx's proximal term ``mu/2 ||w - w_global||^2`` added to each
            client's local loss (Li et al. 2020, https://arxiv.org/abs/1812.06127), sent
            to clients as ``proximal-mu`` (the key Flower's ``FedProx`` sends); 0 is
            plain FedAvg and sends nothing.
        server_optimizer: ``"sgd"`` (FedAvg / FedAvgM), ``"adam"``, ``"yogi"`` or
            ``"adagrad"``; the moments are stage state, saved in checkpoints.
        server_beta_1, server_beta_2, server_tau: the adaptive optimiser's moment decays
            and adaptivity (``None``: Flower's Message-API defaults 0.9, 0.99, 1e-3;
            Adagrad's ``beta_1`` is 0).

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
    name = "federated averaging" if proximal_mu == 0 else "federated averaging (proximal)"
    if server_optimizer != "sgd":
        name += f" with server {server_optimizer}"
    return Pipeline(
        WeightBy("num_examples"),
        Mean(),
        server_step(server_optimizer, server_learning_rate, server_momentum,
                    server_beta_1, server_beta_2, server_tau),
        client_config=client_config,
        name=name,
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
    weight_cap: float | None = DEFAULT_CAP_MULTIPLE,
) -> Pipeline:
    """Hybrid: weight by ``num_examples * max(quality score, quality_floor)``, each weight
    capped at ``weight_cap`` (default 3) times the round's median weight, since both
    factors are the client's own claims (arguments as in :func:`weighted_average`;
    ``weight_cap=None`` trusts them)."""
    pipeline = weighted_average(
        "num_examples*quality", quality_key=quality_key, quality_kind=quality_kind,
        quality_floor=quality_floor, weight_cap=weight_cap,
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
    weight_cap: float | None = DEFAULT_CAP_MULTIPLE,
    max_norm_ratio: float | None = 2.5,
    norm_window: int = 5,
    clip_median_multiple: float | None = None,
    bucket_size: int = 1,
    clip_radius: float = 1.0,
    bulyan_selection: str = "recursive",
    server_optimizer: str = "sgd",
    server_learning_rate: float | None = None,
    server_beta_1: float | None = None,
    server_beta_2: float | None = None,
    server_tau: float | None = None,
    quality_scorer: QualityScorer | None = None,
) -> Pipeline:
    """Hybrid: robust filtering, then weighting, then (optionally) a server optimiser.

    Args:
        robust: ``"trimmed_mean"`` (per coordinate drop ``floor(beta*K)`` values at each
            end, average the rest weighted by ``weight_by``), ``"krum"`` (keep the
            ``num_selected`` Multi-Krum updates, default ``K - num_byzantine``, then the
            weighted mean), ``"median"`` (coordinate-wise median, unweighted),
            ``"centered_clip"`` (centred clipping around the last round's step with
            radius ``clip_radius`` times the round's median distance from it, weighted
            by ``weight_by``; :class:`~fedloom.aggregation.CenteredClip`), ``"bulyan"``
            (:class:`~fedloom.aggregation.Bulyan` tolerating ``num_byzantine`` among the
            updates that reach it, unweighted; needs ``K >= 4 num_byzantine + 3``, else
            the round is skipped with that reason) or ``"geometric_median"`` (the
            weighted geometric median, :class:`~fedloom.aggregation.GeometricMedian`).
            Krum counts the updates the filter already rejected against
            ``num_byzantine`` (:class:`~fedloom.aggregation.KrumSelect`
            ``count_rejected``): ``num_byzantine`` is the number of attackers expected
            among the updates that arrive in a round.
        weight_by: what the weighted rules (trimmed mean, Krum's mean, centred clipping,
            geometric median) weigh by; the median and Bulyan weigh every update the same.
            ``"server_quality"`` (or ``"num_examples*server_quality"``) scores the updates
            that reach the rule on the server's data with ``quality_scorer``, so a client
            cannot claim its way to more weight.
        weight_cap: each weight is capped at this multiple of the round's median weight
            (default 3; ``None`` trusts the reports): a client reporting
            ``num_examples=1e9`` or ``quality=1.0`` then weighs at most 3 typical
            clients, so the weighted rules' bounds (centred clipping's "at most its
            weight times the radius") hold with lying clients
            (:func:`~fedloom.aggregation.weight_cap.cap_weights`). Honest clients with
            more than 3x the median data count as 3x.
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
            groups). Groups differ less than non-IID clients do, so the robust rules
            discard less honest signal: ``conf/strategy/robust_trimmed.yaml``,
            ``robust_median.yaml`` and ``robust_geomed.yaml`` use 2. With Krum and
            Bulyan, ``num_byzantine`` then counts bad groups (Krum needs
            ``ceil(K / bucket_size) >= num_byzantine + 3``).
        clip_radius: with ``robust="centered_clip"``, the clipping radius as a multiple
            of the round's median distance of the updates from the centre.
        bulyan_selection: with ``robust="bulyan"``, ``"recursive"`` (the paper's Krum
            applied ``n - 2f`` times; Flower's legacy ``Bulyan``) or ``"multi_krum"`` (one
            Multi-Krum pass; Flower's Message-API ``Bulyan``). They select different sets.
        server_optimizer, server_learning_rate, server_beta_1, server_beta_2, server_tau:
            the server step after the robust rule, as in :func:`federated_averaging`
            (``"sgd"`` with the default learning rate: the new model is the robust
            aggregate; ``"adam"``: e.g. ``conf/strategy/robust_trimmed_adam.yaml``, a
            hybrid Flower's classes cannot express).
        quality_scorer: the server's scorer under a server-quality ``weight_by`` (see
            :func:`weighted_average`).
    """
    if robust not in ROBUST_REDUCERS:
        raise ConfigError(f"robust must be one of {ROBUST_REDUCERS}; got robust={robust!r}.")
    stages: list = [] if max_norm_ratio is None else [RejectNormOutliers(max_norm_ratio, window=norm_window)]
    if clip_median_multiple is not None:
        stages.append(ClipNorm(median_multiple=clip_median_multiple))
    if bucket_size != 1:
        stages.append(Bucket(bucket_size))
    weighting = WeightBy(weight_by, cap=weight_cap, scorer=quality_scorer)
    if robust == "krum":
        krum = KrumSelect(num_byzantine, num_selected, count_rejected=True)
        stages += [krum, weighting, Mean()]
    elif robust == "trimmed_mean":
        stages += [weighting, TrimmedMean(beta, weighted=True)]
    elif robust == "centered_clip":
        stages += [weighting, CenteredClip(clip_radius)]
    elif robust == "geometric_median":
        stages += [weighting, GeometricMedian()]
    elif robust == "bulyan":
        stages += [Bulyan(num_byzantine, selection=bulyan_selection)]
    else:
        stages += [CoordinateMedian()]
    weighted = robust not in ("median", "bulyan")  # those two weigh every update the same
    name = f"robust ({robust}) then {weight_by}" if weighted else f"robust ({robust})"
    step = server_step(server_optimizer, server_learning_rate, 0.0,
                       server_beta_1, server_beta_2, server_tau)
    if not (isinstance(step, ServerStep) and step.is_identity):
        stages.append(step)
        name += f" with server {server_optimizer}"
    return Pipeline(*stages, name=name)


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
