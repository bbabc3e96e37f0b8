"""Early stopping: the rule, run_rounds(should_stop=...) and Flower's own start() where it
has should_stop (Flower >= 1.43). No TensorFlow: runs in the flwr-nightly CI venv too."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedloom.early_stopping import EarlyStop
from fedloom.engine import LocalGrid
from fedloom.rounds import run_rounds, start_accepts_should_stop

from numpy_apps import INITIAL_WEIGHTS, message_app


def test_target_accuracy_stops_at_the_first_round_that_reaches_it():
    rule = EarlyStop(target_accuracy=0.9)
    assert rule.reason([(0, 0.1), (1, 0.89)]) is None
    assert "reached the target 0.9 in round 2" in rule.reason([(0, 0.1), (1, 0.89), (2, 0.9)])
    assert rule.reason([(0, 0.1), (1, math.nan)]) is None


def test_patience_counts_rounds_since_the_best_value():
    rule = EarlyStop(patience=2)
    assert rule.reason([(0, 0.1), (1, 0.5), (2, 0.4)]) is None
    reason = rule.reason([(0, 0.1), (1, 0.5), (2, 0.4), (3, 0.5)])  # equal is no improvement
    assert reason == "accuracy did not improve for 2 rounds (patience 2; best 0.5000 in round 1)"
    assert rule.reason([(0, 0.1), (1, 0.5), (2, 0.4), (3, 0.51)]) is None
    assert EarlyStop(patience=2, min_delta=0.02).reason([(0, 0.5), (1, 0.51), (2, 0.515)]) is not None
    assert EarlyStop(patience=2).reason([(0, math.nan), (1, math.inf)]) is not None


@pytest.mark.parametrize(("section", "message"), [
    ({"target_accuracy": 1.5}, "target_accuracy=1.5 is not allowed"),
    ({"patience": 0}, "patience=0 is not allowed"),
    ({"patience": 2.5}, "patience=2.5 is not allowed"),
    ({"patients": 3}, "early_stop.patients is not a setting"),
])
def test_bad_settings_are_refused_naming_the_key(section, message):
    with pytest.raises(ValueError, match=message):
        EarlyStop.from_config(section)


def test_rules_off_give_no_rule():
    assert EarlyStop.from_config({"target_accuracy": None, "patience": None}) is None
    assert EarlyStop.from_config(None) is None


def mean_weight_accuracy(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """A stand-in 'accuracy' that rises with every FedAvg round of the numpy clients."""
    return MetricRecord({"accuracy": float(np.tanh(np.mean(arrays.to_numpy_ndarrays()[1]) / 10))})


def fedavg() -> FedAvg:
    return FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)


def test_run_rounds_stops_after_the_round_that_meets_the_rule():
    rule = EarlyStop(target_accuracy=0.5)
    seen = []
    result = run_rounds(fedavg(), LocalGrid(message_app, 3, seed=0), ArrayRecord(INITIAL_WEIGHTS), 10,
                        evaluate_fn=mean_weight_accuracy,
                        on_round_end=lambda r, arrays, res: seen.append(r), should_stop=rule)
    accuracies = {r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()}
    last = max(accuracies)
    assert 1 < last < 10 and seen == list(range(0, last + 1))  # round 0: the initial evaluation
    assert accuracies[last] >= 0.5 > accuracies[last - 1]
    # result.arrays is the model of the stopping round
    assert mean_weight_accuracy(last, result.arrays)["accuracy"] == accuracies[last]


def test_run_rounds_with_early_stop_equals_flowers_start():
    """On Flower >= 1.43 against ``start(should_stop=...)``; on 1.42 (no should_stop)
    against ``start`` run for the rounds early stopping kept."""
    rule = EarlyStop(target_accuracy=0.5)
    looped = run_rounds(fedavg(), LocalGrid(message_app, 3, seed=0), ArrayRecord(INITIAL_WEIGHTS), 10,
                        evaluate_fn=mean_weight_accuracy, should_stop=rule)
    rounds_run = max(looped.evaluate_metrics_serverapp)
    strategy = fedavg()
    if start_accepts_should_stop(strategy):
        flower = strategy.start(grid=LocalGrid(message_app, 3, seed=0),
                                initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=10,
                                evaluate_fn=mean_weight_accuracy, should_stop=rule)
    else:
        flower = strategy.start(grid=LocalGrid(message_app, 3, seed=0),
                                initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=rounds_run,
                                evaluate_fn=mean_weight_accuracy)
    assert sorted(flower.evaluate_metrics_serverapp) == list(range(rounds_run + 1))
    # FedAvg samples its nodes in random order: the float32 sums may differ in the last bit
    for got, want in zip(looped.arrays.to_numpy_ndarrays(), flower.arrays.to_numpy_ndarrays()):
        np.testing.assert_allclose(got, want, rtol=1e-6)
