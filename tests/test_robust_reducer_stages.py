"""Bulyan and the geometric median as reducer stages in pipelines and named hybrids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import get_object

from fedloom.aggregation import Bulyan, ClientUpdate, GeometricMedian, Mean, Pipeline, WeightBy
from fedloom.errors import ConfigError
from fedloom.strategies import Hybrid

CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"
GLOBAL = [np.zeros((3, 2), np.float32)]


def points(values, sizes=None):
    sizes = sizes or [10] * len(values)
    return [ClientUpdate(f"c{k}", [np.full((3, 2), v, np.float32)], n, {})
            for k, (v, n) in enumerate(zip(values, sizes))]


def test_bulyan_needs_4f_plus_3_updates_and_says_so():
    result = Pipeline(Bulyan(num_byzantine=2))(GLOBAL, points(range(10)), server_round=4)
    assert result.weights is None
    assert "Bulyan with num_byzantine=2 needs at least 11 valid updates (n >= 4f + 3); 10 " \
           "reached it" in result.skipped_reason
    assert Pipeline(Bulyan(num_byzantine=2))(GLOBAL, points(range(11))).weights is not None
    with pytest.raises(ConfigError, match="num_byzantine >= 0"):
        Bulyan(num_byzantine=-1)
    with pytest.raises(ConfigError, match="selection must be one of"):
        Bulyan(1, selection="krum")


def test_bulyan_leaves_out_what_its_selection_drops_and_resists_outliers():
    # 8 honest clients near 1, one attacker far away: f=1 needs 7; 9 updates
    rng = np.random.default_rng(0)
    honest = [1.0 + 0.01 * rng.standard_normal() for _ in range(8)]
    result = Pipeline(Bulyan(num_byzantine=1))(GLOBAL, points([*honest, 1000.0]))
    assert result.rejected_counts() == {"bulyan": 2}  # n - 2f = 7 of 9 kept
    assert "c8" not in result.used  # the attacker is never selected
    assert abs(float(result.weights[0][0, 0]) - 1.0) < 0.05
    mean = Pipeline(Mean())(GLOBAL, points([*honest, 1000.0]))
    assert float(mean.weights[0][0, 0]) > 100


def test_weighted_geometric_median_follows_a_weight_majority_and_the_middle_otherwise():
    # three collinear points: uniform weights put the geometric median on the middle one
    uniform = Pipeline(WeightBy("uniform"), GeometricMedian())(GLOBAL, points([0.0, 1.0, 10.0]))
    np.testing.assert_allclose(uniform.weights[0], 1.0, atol=1e-4)
    # more than half the weight at 10 moves it there (the weighting stage's coefficients count)
    weighted = Pipeline(WeightBy("num_examples"), GeometricMedian())(
        GLOBAL, points([0.0, 1.0, 10.0], sizes=[10, 10, 30]))
    np.testing.assert_allclose(weighted.weights[0], 10.0, atol=1e-4)
    assert weighted.coefficients == pytest.approx([0.2, 0.2, 0.6])
    with pytest.raises(ConfigError, match="max_iterations >= 1"):
        GeometricMedian(max_iterations=0)


def test_geometric_median_hybrid_resists_a_minority_of_attackers_without_the_norm_filter():
    rng = np.random.default_rng(1)
    values = [float(v) for v in 1.0 + 0.1 * rng.standard_normal(7)] + [50.0] * 3  # 30% attackers
    result = Hybrid.robust_weighted("geometric_median", max_norm_ratio=None).schedule.at(1)(
        GLOBAL, points(values))
    assert abs(float(result.weights[0][0, 0]) - 1.0) < 0.2
    assert float(Pipeline(Mean())(GLOBAL, points(values)).weights[0][0, 0]) > 15


def test_named_configs_compose_what_they_say():
    def stages(name):
        options = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        pipeline = get_object(options.pop("_target_"))(**options).schedule.at(1)
        return [type(s).__name__ for s in pipeline.stages], pipeline

    names, pipeline = stages("robust_geomed")
    assert names == ["RejectNormOutliers", "Bucket", "WeightBy", "GeometricMedian"]
    assert pipeline.stages[1].size == 2 and pipeline.stages[2].cap == 3.0
    names, pipeline = stages("robust_bulyan")
    assert names == ["RejectNormOutliers", "Bulyan"]
    assert pipeline.stages[1].num_byzantine == 1 and pipeline.stages[1].selection == "recursive"


def test_the_experiment_config_check_refuses_too_few_clients_for_bulyan():
    from fedloom.experiment import RunSettings

    from conftest import config

    RunSettings.from_config(config("strategy=robust_bulyan", "clients_per_round=7"))
    with pytest.raises(ConfigError, match=r"strategy.num_byzantine=1 needs 7 updates for Bulyan "
                                          r"\(n >= 4f \+ 3\) and clients_per_round=6 gives 6\."):
        RunSettings.from_config(config("strategy=robust_bulyan", "clients_per_round=6"))
