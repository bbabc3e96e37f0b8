"""The round loop of a Message-API strategy, resumable at any round.

Flower's ``Strategy.start(grid, initial_arrays, num_rounds, ...)`` always runs rounds
``1..num_rounds`` from ``initial_arrays``, with no hook between rounds. To continue a
killed run from its last checkpoint fedloom needs two things ``start`` lacks: a first
round other than 1, and a call after every completed round (to write the checkpoint).

Why a loop here rather than a ``first_round`` argument on ``FedloomStrategy.start``:
the strategy that runs is not always a fedloom class. Flower's DP wrappers
(``DifferentialPrivacyServerSideFixedClipping(FedloomStrategy(...))``) and Flower's own
strategies inherit ``Strategy.start`` unchanged, so an override on fedloom's class
would not reach them. :func:`run_rounds` drives *any* Message-API strategy through its
public methods (``configure_train``, ``aggregate_train``, ``configure_evaluate``,
``aggregate_evaluate``) in exactly the order and with exactly the arguments of Flower's
``Strategy.start`` (1.42 and 1.43 run the same loop), so with ``first_round=1`` it gives
the same global model as ``start`` (tested bit for bit on the local engine), and a
strategy needs no change to be resumable beyond exposing its state
(``FedloomStrategy.state_dict``).

Early stopping follows Flower 1.43's ``start(..., should_stop=...)``: ``should_stop(round,
result)`` is called after each round (after its central evaluation and
``on_round_end``) and ends the loop when it returns ``True``; ``result`` is built as
``Result(arrays=initial_arrays)`` and its ``arrays`` kept current, as 1.43 does, so the
callable sees the model of the round. It works the same on Flower 1.42, whose ``start``
has no such argument (see :func:`start_accepts_should_stop`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

__all__ = ["run_rounds", "RoundEnd", "ShouldStop", "start_accepts_should_stop"]

#: ``on_round_end(server_round, arrays, result)``: called after each completed round,
#: once the global model of that round (``arrays``) is final and evaluated (its
#: ``evaluate_fn`` metrics are in ``result.evaluate_metrics_serverapp[server_round]``),
#: and, on a fresh run, as round 0 after the initial model was evaluated.
RoundEnd = Callable[[int, ArrayRecord, Result], None]

#: ``should_stop(server_round, result) -> bool``: Flower 1.43's early-stopping predicate.
ShouldStop = Callable[[int, Result], bool]


def start_accepts_should_stop(strategy: Strategy) -> bool:
    """Whether ``strategy.start`` takes Flower 1.43's ``should_stop`` argument (checked on
    the signature, so a strategy that overrides ``start`` answers for itself)."""
    return "should_stop" in inspect.signature(strategy.start).parameters


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    *,
    first_round: int = 1,
    timeout: float = 3600,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    on_round_end: RoundEnd | None = None,
    should_stop: ShouldStop | None = None,
) -> Result:
    """Run rounds ``first_round..num_rounds`` of ``strategy`` on ``grid``.

    Args:
        strategy: any Flower Message-API strategy (fedloom's, Flower's, a DP wrapper).
        grid: the ``flwr.serverapp.Grid`` (fedloom's ``LocalGrid`` or Flower's).
        initial_arrays: the global model at the start of ``first_round`` (the initial
            model, or the checkpointed one when resuming).
        num_rounds: the last round to run.
        first_round: 1 for a fresh run (the model is evaluated as round 0 first); the
            checkpoint's round + 1 when resuming. ``num_rounds + 1`` runs nothing.
        timeout, train_config, evaluate_config, evaluate_fn: as in ``Strategy.start``.
        on_round_end: called after every completed round, and after the initial
            evaluation as round 0 (see :data:`RoundEnd`).
        should_stop: called after ``on_round_end``; ``True`` ends the run after that
            round (Flower 1.43's early stopping, see :data:`ShouldStop`).

    Returns:
        Flower's ``Result`` of the rounds run here; ``result.arrays`` is always the
        final global model (also when the last rounds were skipped or the run stopped
        early).
    """
    if not 1 <= first_round <= num_rounds + 1:
        raise ValueError(
            f"first_round={first_round} is not allowed with num_rounds={num_rounds}: it "
            f"must be in [1, {num_rounds + 1}]."
        )
    log(INFO, "Starting %s strategy at round %d of %d:", type(strategy).__name__,
        first_round, num_rounds)
    strategy.summary()
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    result = Result(arrays=initial_arrays)
    started = time.time()
    if evaluate_fn and first_round == 1:
        metrics = evaluate_fn(0, initial_arrays)
        if metrics is not None:
            result.evaluate_metrics_serverapp[0] = metrics
        if on_round_end is not None:
            on_round_end(0, initial_arrays, result)
    arrays = initial_arrays
    last_round = first_round - 1
    for current_round in range(first_round, num_rounds + 1):
        last_round = current_round
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
        train_replies = grid.send_and_receive(
            messages=strategy.configure_train(current_round, arrays, train_config, grid),
            timeout=timeout,
        )
        aggregated, train_metrics = strategy.aggregate_train(current_round, train_replies)
        if aggregated is not None:
            arrays = aggregated
            result.arrays = arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[current_round] = train_metrics
        evaluate_replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(current_round, arrays, evaluate_config, grid),
            timeout=timeout,
        )
        evaluate_metrics = strategy.aggregate_evaluate(current_round, evaluate_replies)
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[current_round] = evaluate_metrics
        if evaluate_fn:
            metrics = evaluate_fn(current_round, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[current_round] = metrics
        if on_round_end is not None:
            on_round_end(current_round, arrays, result)
        if should_stop is not None and should_stop(current_round, result):
            log(INFO, "Stopping early after round %s", current_round)
            break
    result.arrays = arrays
    log(INFO, "Rounds %d..%d finished in %.2fs", first_round, last_round, time.time() - started)
    return result
