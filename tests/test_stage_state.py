"""Stage state is explicit (made by ``init``, returned by ``update``, kept by the pipeline
by stage name), stages declare what they read, and the round owner's sampling is seeded
or secret."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from fedloom.aggregation import (
    CenteredClip,
    ClientUpdate,
    ClipNorm,
    KrumSelect,
    Mean,
    Pipeline,
    RejectNormOutliers,
    RoundState,
    Schedule,
    ServerStep,
    TrimmedMean,
    WeightBy,
)
from fedloom.checkpoint import load_checkpoint, save_checkpoint
from fedloom.errors import ConfigError
from fedloom.strategies import FederatedAveraging, legacy
from fedloom.strategies.round import RoundAggregator

GLOBAL = [np.zeros(2, np.float32)]


def updates(values) -> list[ClientUpdate]:
    return [ClientUpdate(f"c{k}", [np.array(v, np.float32)], 1, {}) for k, v in enumerate(values)]


@pytest.mark.parametrize("stage", [RejectNormOutliers(3.0, window=3), CenteredClip(),
                                   ServerStep(0.5, 0.9)], ids=lambda s: type(s).__name__)
def test_update_returns_the_new_state_and_leaves_the_stage_unchanged(stage):
    settings = copy.deepcopy(vars(stage))
    state = RoundState(1, GLOBAL, updates([[1, 1], [2, 2], [3, 3]]))
    if stage.kind == "server_step":
        Mean().update(state, None)
    first = stage.init()
    second = stage.update(state, first)
    assert second != first and vars(stage).keys() == settings.keys()
    assert all(np.array_equal(vars(stage)[k], v) for k, v in settings.items())
    assert first == stage.init()  # the old state is not changed in place


def test_pipeline_keeps_states_by_stage_name_through_a_checkpoint(tmp_path):
    def make():
        return Pipeline(("window", RejectNormOutliers(3.0, window=4)), Mean(), ServerStep(0.5, 0.9))

    pipeline = make()
    assert pipeline.stage_names == ("window", "mean", "server_step")
    for _ in range(2):
        pipeline(GLOBAL, updates([[1, 1], [2, 2], [3, 3]]))
    saved = pipeline.state_dict()
    assert sorted(saved) == ["server_step", "window"] and len(saved["window"]["recent_medians"]) == 2
    save_checkpoint(tmp_path / "c.npz", {"pipeline": saved})
    resumed = make()
    resumed.load_state_dict(load_checkpoint(tmp_path / "c.npz")["pipeline"])
    a = pipeline([np.ones(2, np.float32)], updates([[1, 2], [2, 2], [3, 1]]))
    b = resumed([np.ones(2, np.float32)], updates([[1, 2], [2, 2], [3, 1]]))
    assert a.weights[0].tobytes() == b.weights[0].tobytes()
    with pytest.raises(ConfigError, match=r"no stateful stage named \['centered_clip'\]"):
        make().load_state_dict({"centered_clip": {"step": None}})


def test_names_are_unique_in_a_pipeline_and_for_stateful_stages_in_a_schedule():
    twice = Pipeline(RejectNormOutliers(50.0), RejectNormOutliers(3.0, window=2), Mean())
    assert twice.stage_names[:2] == ("reject_norm_outliers", "reject_norm_outliers_2")
    with pytest.raises(ConfigError, match="names must be unique"):
        Pipeline(("a", ClipNorm(1.0)), ("a", RejectNormOutliers()), Mean())
    with pytest.raises(ConfigError, match=r"\['server_step'\] appear in several phases"):
        Schedule([(1, Pipeline(Mean(), ServerStep(0.5, 0.9))), (3, Pipeline(Mean(), ServerStep(0.9)))])
    schedule = Schedule([(1, Pipeline(Mean(), ("early", ServerStep(0.5, 0.9)))),
                         (3, Pipeline(Mean(), ("late", ServerStep(0.9, 0.5))))])
    schedule.at(1)(GLOBAL, updates([[1, 1]]))
    assert list(schedule.state_dict()) == ["early"]


def test_stages_declare_what_they_read():
    assert RejectNormOutliers().needs_global_model and RejectNormOutliers().may_reject
    assert not WeightBy("num_examples").may_reject and WeightBy("quality").may_reject
    assert ServerStep(0.5).needs_global_model and not ServerStep().needs_global_model
    assert not KrumSelect(1).needs_global_model and KrumSelect(1).may_reject
    assert TrimmedMean(0.1, weighted=True).uses_weights and not TrimmedMean(0.1).uses_weights
    assert [s.dp_sensitivity_preserving for s in (ClipNorm(1.0), WeightBy("uniform"), Mean(),
                                                  ServerStep(), WeightBy("num_examples"),
                                                  ServerStep(0.5), TrimmedMean(0.1))] == [
        True, True, True, True, False, False, False]
    pipeline = Pipeline(ClipNorm(1.0), WeightBy("uniform"), Mean(), ServerStep())
    assert pipeline.stages_needing_global_model() == ["clip_norm"]
    with pytest.raises(ConfigError, match=r"stages \['clip_norm'\] read it"):
        pipeline(None, updates([[1, 1], [2, 2]]))
    plain = Pipeline(WeightBy("uniform"), Mean())(None, updates([[1, 1], [3, 3]]))
    np.testing.assert_array_equal(plain.weights[0], [2, 2])


def test_sampling_is_seeded_or_secret():
    nodes = list(range(100))
    seeded = [RoundAggregator(Pipeline(Mean()), seed=3) for _ in range(2)]
    assert seeded[0].sample(nodes, 10) == seeded[1].sample(nodes, 10)
    assert "rng" in seeded[0].state_dict()
    for strategy in (FederatedAveraging(seed=3, secure_sampling=True),
                     legacy.FederatedAveraging(seed=3, secure_sampling=True)):
        assert isinstance(strategy.round.rng, random.SystemRandom)
        assert "rng" not in strategy.state_dict()
    secret = [RoundAggregator(Pipeline(Mean()), seed=3, secure_sampling=True) for _ in range(2)]
    assert secret[0].sample(nodes, 10) != secret[1].sample(nodes, 10)  # 1 in C(100, 10) to fail
