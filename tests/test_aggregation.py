"""The aggregation maths: one conformance suite every rule passes, plus hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

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
    centered_clip,
    clip_to_norm,
    coordinate_median,
    multi_krum,
    quality_weights,
    server_update,
    size_quality_weights,
    trimmed_mean,
    unweighted_mean,
    update_norms,
    weighted_mean,
)
from fedloom.errors import ConfigError

SHAPES = [(7, 5), (5,), (3, 4, 2)]


def make_updates(num_clients: int, dtype=np.float32, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(num_clients)]


def krum_then_mean(updates, weights):
    selected = multi_krum(updates, num_byzantine=1, num_selected=len(updates) - 1)
    return weighted_mean([updates[i] for i in selected], np.asarray(weights)[selected])


# name -> (rule(updates, weights), honours weights?)
RULES = {
    "weighted_mean": (weighted_mean, True),
    "unweighted_mean": (lambda u, w: unweighted_mean(u), False),
    "coordinate_median": (lambda u, w: coordinate_median(u), False),
    "trimmed_mean": (lambda u, w: trimmed_mean(u, 0.2), False),
    "trimmed_mean_weighted": (lambda u, w: trimmed_mean(u, 0.2, w), True),
    "multi_krum_mean": (krum_then_mean, True),
    "centered_clip": (lambda u, w: centered_clip(u, coordinate_median(u), 1.0, w), True),
}


@pytest.fixture(params=sorted(RULES))
def rule(request):
    return RULES[request.param]


def test_client_order_does_not_matter(rule):
    fn, _ = rule
    updates = make_updates(6)
    weights = np.arange(1.0, 7.0)
    order = np.random.default_rng(1).permutation(6)
    expected = fn(updates, weights)
    shuffled = fn([updates[i] for i in order], weights[order])
    for a, b in zip(expected, shuffled):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_identical_updates_give_that_update_back_with_shapes_and_dtype(rule, dtype):
    fn, _ = rule
    update = make_updates(1, dtype)[0]
    result = fn([update] * 5, np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert [a.shape for a in result] == [a.shape for a in update]
    assert all(a.dtype == dtype for a in result)
    for got, want in zip(result, update):  # equal up to the accumulation's rounding
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_weights_are_honoured_or_ignored_as_documented(rule):
    fn, honours = rule
    updates = make_updates(5)
    uniform = fn(updates, np.ones(5))
    skewed = fn(updates, np.array([10.0, 1.0, 1.0, 1.0, 1.0]))
    same = all(np.allclose(a, b) for a, b in zip(uniform, skewed))
    assert same != honours
    if honours:  # scaling all weights changes nothing
        scaled = fn(updates, np.array([10.0, 1.0, 1.0, 1.0, 1.0]) * 7.5)
        for a, b in zip(skewed, scaled):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_input_is_refused_with_a_clear_message(rule):
    fn, _ = rule
    updates = make_updates(5)
    updates[3] = [updates[3][0][:, :4], *updates[3][1:]]
    with pytest.raises(ValueError, match=r"update 3 .*expected shape \(7, 5\), received \(7, 4\)"):
        fn(updates, np.ones(5))
    with pytest.raises(ValueError, match="at least one client update"):
        fn([], np.ones(0))


def test_integer_arrays_keep_their_dtype_and_are_rounded():
    updates = [[np.array([1, 2], dtype=np.int64)], [[np.array([2, 2], dtype=np.int64)][0]]]
    result = weighted_mean(updates, [1, 3])
    assert result[0].dtype == np.int64
    np.testing.assert_array_equal(result[0], [2, 2])  # 1.75 -> 2, 2 -> 2


def test_weighted_mean_matches_float64_reference_to_1e6():
    updates = make_updates(100, seed=3)
    weights = np.random.default_rng(4).random(100) * 1000
    result = weighted_mean(updates, weights)
    for index, got in enumerate(result):
        reference = sum(w * u[index].astype(np.float64) for u, w in zip(updates, weights)) / weights.sum()
        np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max())


def test_weighted_mean_crosses_block_boundaries_exactly():
    # 40,000 > the 16,384-value block: every block must be reduced and written.
    rng = np.random.default_rng(5)
    updates = [[rng.standard_normal(40_000).astype(np.float32)] for _ in range(3)]
    x = [u[0].astype(np.float64) for u in updates]
    reference = (x[0] * 1.0 + x[1] * 2.0 + x[2] * 5.0) / 8.0
    result = weighted_mean(updates, [1, 2, 5])[0]
    np.testing.assert_allclose(result, reference, rtol=1e-6, atol=1e-7 * np.abs(reference).max())


# ----------------------------------------------------------------- hand-computed values
def test_hand_computed_weighted_and_simple_mean():
    updates = [[np.array([1.0, 2.0])], [np.array([3.0, 4.0])]]
    np.testing.assert_allclose(weighted_mean(updates, [1, 3])[0], [2.5, 3.5])
    np.testing.assert_allclose(unweighted_mean(updates)[0], [2.0, 3.0])


def test_hand_computed_median_and_trimmed_mean():
    odd = [[np.array([v])] for v in (1.0, 2.0, 10.0)]
    even = [[np.array([v])] for v in (1.0, 2.0, 3.0, 100.0)]
    assert coordinate_median(odd)[0][0] == 2.0
    assert coordinate_median(even)[0][0] == 2.5
    assert trimmed_mean(even, 0.25)[0][0] == 2.5  # drops 1 and 100
    # weighted variant: keeps 2 (w=1) and 3 (w=3) -> 2.75
    assert trimmed_mean(even, 0.25, [5, 1, 3, 5])[0][0] == pytest.approx(2.75)


def test_trimmed_mean_refuses_beta_outside_its_range():
    two = [[np.array([1.0])], [np.array([2.0])]]
    with pytest.raises(ValueError, match="0 <= beta < 0.5; received beta=0.5"):
        trimmed_mean(two, 0.5)


def test_hand_computed_krum_picks_the_cluster():
    points = [[np.array([v, 0.0])] for v in (0.0, 0.1, 0.2, 100.0)]
    selected = multi_krum(points, num_byzantine=1, num_selected=3)
    assert sorted(selected.tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="needs at least 5 client updates; received 4"):
        multi_krum(points, num_byzantine=2)


def test_hand_computed_centered_clipping_bounds_a_far_update():
    points = [[np.array([v])] for v in (0.0, 0.0, 0.0, 100.0)]
    # one iteration: c = 0 + 1/4 * clip(100 - 0, radius 1) = 0.25
    assert centered_clip(points, [np.array([0.0])], 1.0, iterations=1)[0][0] == pytest.approx(0.25)
    for far in (100.0, 1e6, -1e9):  # however far the update, it moves c by <= w * radius per step
        result = centered_clip([*points[:3], [np.array([far])]], [np.array([0.0])], 1.0, iterations=3)
        assert abs(result[0][0]) <= 3 * 0.25 + 1e-12
    with pytest.raises(ValueError, match="radius > 0 and iterations >= 1"):
        centered_clip(points, [np.array([0.0])], 0.0)


def test_centered_clip_stage_starts_from_the_last_step_and_saves_it():
    first = client_updates([[1, 1]] * 3)  # everybody moves the model by (1, 1)
    pipeline = Pipeline(CenteredClip())
    pipeline(GLOBAL, first)
    np.testing.assert_allclose(pipeline.state_dict()["centered_clip"]["step"][0], [1, 1])
    moved = [np.ones(2, np.float32)]
    # honest clients step (1, 1) again, one attacker pulls back hard; the centre (2, 2)
    # is where the last step leads, and the median distance from it is 0
    second = [ClientUpdate(f"c{k}", [np.full(2, 2.0, np.float32)], 1) for k in range(3)]
    second.append(ClientUpdate("bad", [np.full(2, -100.0, np.float32)], 1))
    resumed = Pipeline(CenteredClip())
    resumed.load_state_dict(pipeline.state_dict())
    result = resumed(moved, second)
    np.testing.assert_allclose(result.weights[0], [2, 2])
    with pytest.raises(ConfigError, match="median_multiple > 0"):
        CenteredClip(median_multiple=0)


def test_hand_computed_clipping_and_norms():
    reference = [np.zeros(2, np.float32)]
    update = [np.array([3.0, 4.0], np.float32)]
    assert update_norms([update], reference)[0] == pytest.approx(5.0)
    clipped = clip_to_norm(update, reference, 1.0)
    np.testing.assert_allclose(clipped[0], [0.6, 0.8], rtol=1e-6)
    assert clipped[0].dtype == np.float32
    assert clip_to_norm(update, reference, 10.0)[0] is update[0]


def test_hand_computed_server_momentum():
    new, velocity = server_update([np.array([1.0])], [np.array([0.0])], learning_rate=0.5, momentum=0.9)
    assert new[0][0] == pytest.approx(0.5) and velocity[0][0] == pytest.approx(1.0)
    new, velocity = server_update(new, [np.array([0.0])], learning_rate=0.5, momentum=0.9, velocity=velocity)
    assert velocity[0][0] == pytest.approx(1.4) and new[0][0] == pytest.approx(-0.2)
    same, none = server_update([np.array([1.0])], [np.array([0.25])])
    assert same[0][0] == 0.25 and none is None


def test_quality_mapping_and_floor():
    np.testing.assert_allclose(quality_weights([0.0, 0.5, 1.2]), [0.01, 0.5, 1.0])
    np.testing.assert_allclose(quality_weights([0.0, 1.0, 9.0], kind="loss"), [1.0, 0.5, 0.1])
    np.testing.assert_allclose(size_quality_weights([10, 20], [0.5, 0.0], floor=0.1), [5.0, 2.0])
    with pytest.raises(ValueError, match="kind must be 'accuracy' or 'loss'"):
        quality_weights([0.5], kind="f1")


# ----------------------------------------------------------------- pipelines
def client_updates(values, num_examples=None, quality=None):
    out = []
    for k, v in enumerate(values):
        metrics = {} if quality is None else {"quality": quality[k]}
        n = 1 if num_examples is None else num_examples[k]
        out.append(ClientUpdate(f"c{k}", [np.array(v, dtype=np.float32)], n, metrics))
    return out


GLOBAL = [np.zeros(2, np.float32)]


def test_pipeline_rejects_bad_updates_with_reasons_and_never_raises():
    updates = client_updates([[1, 1], [3, 3], [np.nan, 0], [5, 5]], num_examples=[1, 1, 1, 1])
    updates.append(ClientUpdate("short", [], 1))
    updates.append(ClientUpdate("shape", [np.zeros(3, np.float32)], 1))
    updates.append(ClientUpdate("dtype", [np.zeros(2, np.float64)], 1))
    updates.append(ClientUpdate("count", [np.zeros(2, np.float32)], -4))
    result = Pipeline(WeightBy("num_examples"), Mean())(GLOBAL, updates, server_round=3)
    np.testing.assert_allclose(result.weights[0], [3.0, 3.0])
    assert result.used == ["c0", "c1", "c3"]
    assert result.rejected_counts() == {
        "non_finite": 1, "wrong_num_arrays": 1, "shape_mismatch": 1,
        "dtype_mismatch": 1, "bad_num_examples": 1,
    }
    detail = {r.client_id: r.detail for r in result.rejected}
    assert "expected shape (2,), received (3,)" in detail["shape"]


def test_nan_update_with_zero_weight_is_still_found():
    updates = client_updates([[1, 1], [np.inf, 0]], num_examples=[2, 0])
    result = Pipeline(WeightBy("num_examples"), Mean())(GLOBAL, updates)
    np.testing.assert_allclose(result.weights[0], [1.0, 1.0])
    assert result.rejected_counts() == {"non_finite": 1}


def test_too_few_valid_updates_skip_the_round():
    updates = client_updates([[1, 1], [np.nan, 1]])
    result = Pipeline(Mean())(GLOBAL, updates, server_round=7, min_updates=2)
    assert result.weights is None
    assert "round 7: 1 valid updates, 2 needed" in result.skipped_reason
    krum = Pipeline(KrumSelect(num_byzantine=2), Mean())(GLOBAL, client_updates([[1, 1]] * 3))
    assert krum.weights is None and "needs at least 5 valid updates" in krum.skipped_reason


def test_quality_weighting_rejects_missing_metric_and_applies_floor():
    updates = client_updates([[0, 0], [4, 4], [8, 8]], num_examples=[1, 1, 3], quality=[0.0, 1.0, 0.5])
    updates[2].metrics = {}
    result = Pipeline(WeightBy("quality", floor=0.25), Mean())(GLOBAL, updates)
    np.testing.assert_allclose(result.weights[0], [3.2, 3.2])  # (0*0.25 + 4*1) / 1.25
    assert result.rejected_counts() == {"missing_metric": 1}
    np.testing.assert_allclose(result.coefficients, [0.2, 0.8])


def test_size_times_quality_and_callable_weights():
    updates = client_updates([[0, 0], [10, 10]], num_examples=[30, 10], quality=[0.5, 1.0])
    result = Pipeline(WeightBy("num_examples*quality"), Mean())(GLOBAL, updates)
    np.testing.assert_allclose(result.weights[0], [4.0, 4.0])  # 10*10 / (15 + 10)
    by_id = Pipeline(WeightBy(lambda u: 3.0 if u.client_id == "c1" else 1.0), Mean())(GLOBAL, updates)
    np.testing.assert_allclose(by_id.weights[0], [7.5, 7.5])


def test_clip_folded_into_mean_equals_clipping_each_update():
    rng = np.random.default_rng(0)
    updates = [ClientUpdate(str(k), [rng.standard_normal(50).astype(np.float32)], k + 1) for k in range(6)]
    global_weights = [rng.standard_normal(50).astype(np.float32)]
    result = Pipeline(ClipNorm(2.0), WeightBy("num_examples"), Mean())(global_weights, updates)
    clipped = [clip_to_norm(u.weights, global_weights, 2.0) for u in updates]
    expected = weighted_mean(clipped, [u.num_examples for u in updates])
    np.testing.assert_allclose(result.weights[0], expected[0], rtol=1e-5, atol=1e-6)


def test_norm_outliers_rejected_before_they_dominate():
    updates = client_updates([[1, 1], [1.2, 1], [0.9, 1.1], [1000, 1000]])
    result = Pipeline(RejectNormOutliers(max_ratio=5), Mean())(GLOBAL, updates)
    assert result.rejected_counts() == {"norm_outlier": 1}
    assert float(result.weights[0][0]) == pytest.approx((1 + 1.2 + 0.9) / 3, rel=1e-6)


def test_norm_reference_over_rounds_outvotes_a_round_with_attacker_majority():
    honest = [[1, 0], [0, 1], [0.8, 0.6]]  # norms 1
    attackers = [[30, 0], [0, 30], [21, 21], [25, 15]]  # a majority of this round, norms ~30
    windowed = Pipeline(RejectNormOutliers(max_ratio=2.5, window=5), Mean())
    one_round = Pipeline(RejectNormOutliers(max_ratio=2.5), Mean())
    for _ in range(4):  # clean rounds fill the window with medians of 1
        windowed(GLOBAL, client_updates(honest))
        one_round(GLOBAL, client_updates(honest))
    attacked = client_updates(honest + attackers)
    assert windowed(GLOBAL, attacked).rejected_counts() == {"norm_outlier": 4}
    assert one_round(GLOBAL, attacked).rejected_counts() == {}  # the round's median is ~30
    saved = windowed.state_dict()
    assert saved == {"reject_norm_outliers": {"recent_medians": [1.0, 1.0, 1.0, 1.0,
                                                                 pytest.approx(np.hypot(25, 15))]}}
    fresh = Pipeline(RejectNormOutliers(max_ratio=2.5, window=5), Mean())
    fresh.load_state_dict(saved)
    assert fresh(GLOBAL, attacked).rejected_counts() == {"norm_outlier": 4}
    with pytest.raises(ConfigError, match="integer window >= 1"):
        RejectNormOutliers(window=0)


def test_krum_counts_filtered_updates_against_its_byzantine_budget():
    cluster = [[1, 1], [1.1, 1], [1, 1.1], [0.9, 1], [1, 0.9], [1.05, 1.05]]
    updates = client_updates(cluster + [[40, 40], [-40, 40]])
    stages = (RejectNormOutliers(max_ratio=3),)
    plain = Pipeline(*stages, KrumSelect(num_byzantine=2, num_selected=None), Mean())(GLOBAL, updates)
    assert plain.rejected_counts() == {"norm_outlier": 2, "krum": 2}  # 2 honest ones dropped too
    counted = Pipeline(*stages, KrumSelect(num_byzantine=2, num_selected=None, count_rejected=True),
                       Mean())(GLOBAL, updates)
    assert counted.rejected_counts() == {"norm_outlier": 2}
    assert counted.used == [f"c{k}" for k in range(6)]
    partly = Pipeline(*stages, KrumSelect(num_byzantine=3, num_selected=None, count_rejected=True),
                      Mean())(GLOBAL, updates)
    assert partly.rejected_counts() == {"norm_outlier": 2, "krum": 1}


def test_buckets_keep_the_weighted_mean_and_report_every_client():
    rng = np.random.default_rng(3)
    values = rng.standard_normal((9, 2)).tolist()
    sizes = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    updates = client_updates(values, num_examples=sizes, quality=[0.5] * 9)
    plain = Pipeline(WeightBy("num_examples"), Mean())(GLOBAL, updates, server_round=4)
    grouped = Pipeline(Bucket(2), WeightBy("num_examples"), Mean())(GLOBAL, updates, server_round=4)
    np.testing.assert_allclose(grouped.weights[0], plain.weights[0], rtol=1e-5)
    assert sorted(grouped.used) == sorted(plain.used)  # 5 groups (the last of one), 9 clients
    share = dict(zip(grouped.used, grouped.coefficients))
    np.testing.assert_allclose([share[c] for c in plain.used], plain.coefficients)
    again = Pipeline(Bucket(2), WeightBy("num_examples"), Mean())(GLOBAL, updates, server_round=4)
    other = Pipeline(Bucket(2), WeightBy("num_examples"), Mean())(GLOBAL, updates, server_round=5)
    assert again.used == grouped.used != other.used  # groups drawn from (seed, round)
    quality = Pipeline(Bucket(3), WeightBy("quality"), Mean())(GLOBAL, updates, server_round=4)
    assert quality.rejected == [] and len(quality.used) == 9  # groups carry their quality
    with pytest.raises(ConfigError, match="integer size >= 1"):
        Bucket(0)


def test_a_rejected_group_rejects_each_member_and_krum_counts_groups():
    cluster = [[1, 1], [1.1, 1], [1, 1.1], [0.9, 1], [1, 0.9], [1.05, 1.05], [0.95, 1], [1, 1.05]]
    updates = client_updates(cluster + [[40, 40], [-2, 2]])  # a boosted and a small bad update
    result = Pipeline(RejectNormOutliers(max_ratio=3), Bucket(2),
                      KrumSelect(num_byzantine=2, num_selected=None, count_rejected=True),
                      Mean())(GLOBAL, updates, server_round=1)
    # the filter caught c8, so Krum expects 1 bad group among the 5 groups of 9 updates
    assert result.rejected_counts()["norm_outlier"] == 1
    krum = [r for r in result.rejected if r.reason == "krum"]
    assert "c9" in {r.client_id for r in krum} and len({r.detail for r in krum}) == 1
    assert len(result.used) + len(krum) == 9 and "c9" not in result.used
    np.testing.assert_allclose(result.weights[0], [1, 1], atol=0.1)


def test_buckets_let_the_median_follow_dissimilar_honest_clients():
    # two kinds of honest clients, 6 near 0 and 4 near 10: the median of single updates
    # sits with the larger kind, the median of random pairs moves towards the mean (4)
    updates = client_updates([[0, 0]] * 6 + [[10, 10]] * 4)
    single = Pipeline(CoordinateMedian())(GLOBAL, updates).weights[0]
    pairs = [Pipeline(Bucket(2, seed=s), CoordinateMedian())(GLOBAL, updates, server_round=1).weights[0]
             for s in range(20)]
    assert single.tolist() == [0, 0]
    assert 2 < float(np.mean(pairs)) < 6
    with_attacker = client_updates([[1, 1]] * 9 + [[1e6, -1e6]])
    robust = Pipeline(Bucket(2), CoordinateMedian())(GLOBAL, with_attacker, server_round=1)
    np.testing.assert_allclose(robust.weights[0], [1, 1])  # one bad update spoils one group


def test_grouped_clients_count_towards_min_updates():
    updates = client_updates([[1, 1]] * 6)
    result = Pipeline(Bucket(3), Mean())(GLOBAL, updates, server_round=1, min_updates=6)
    assert result.weights is not None and len(result.used) == 6


def test_robust_reducers_in_pipelines():
    updates = client_updates([[1, 1], [2, 2], [3, 3], [100, -100]])
    assert Pipeline(CoordinateMedian())(GLOBAL, updates).weights[0].tolist() == [2.5, 1.5]
    assert Pipeline(TrimmedMean(0.25))(GLOBAL, updates).weights[0].tolist() == [2.5, 1.5]


def test_server_step_keeps_state_across_rounds_and_round_trips():
    pipeline = Pipeline(Mean(), ServerStep(learning_rate=0.5, momentum=0.9))
    weights = [np.array([1.0], np.float32)]
    target = client_updates([[0.0]])
    weights = pipeline(weights, target).weights
    saved = pipeline.state_dict()
    weights = pipeline(weights, target).weights
    assert float(weights[0][0]) == pytest.approx(-0.2)
    fresh = Pipeline(Mean(), ServerStep(learning_rate=0.5, momentum=0.9))
    fresh.load_state_dict(saved)
    again = fresh([np.array([0.5], np.float32)], target).weights
    assert float(again[0][0]) == pytest.approx(-0.2)


def test_schedule_switches_pipelines_by_round():
    first, then = Pipeline(WeightBy("uniform"), Mean()), Pipeline(WeightBy("num_examples"), Mean())
    schedule = Schedule.switch_after(3, first, then)
    assert [schedule.at(r) is first for r in (1, 3, 4, 10)] == [True, True, False, False]
    with pytest.raises(ConfigError, match="starting at 1"):
        Schedule([(2, first)])


def test_pipeline_order_is_enforced():
    with pytest.raises(ConfigError, match="filter -> weighting -> reducer -> server_step"):
        Pipeline(Mean(), WeightBy("uniform"))
    with pytest.raises(ConfigError, match="at most one reducer"):
        Pipeline(Mean(), TrimmedMean(0.1))
    assert isinstance(Pipeline(WeightBy("uniform")).stages[-1], Mean)
    with pytest.raises(ConfigError, match="weight_by must be one of"):
        WeightBy("size")


def test_clip_to_the_round_median_norm_bounds_boosted_updates():
    updates = client_updates([[1, 0], [0, 1], [3, 4], [30, 40]])  # norms 1, 1, 5, 50
    result = Pipeline(ClipNorm(median_multiple=1.0), Mean())(GLOBAL, updates)
    # median norm 3: the last two are scaled to norm 3 -> (1.8, 2.4) each
    np.testing.assert_allclose(result.weights[0], [(1 + 0 + 1.8 + 1.8) / 4, (0 + 1 + 2.4 + 2.4) / 4], rtol=1e-6)
    with pytest.raises(ConfigError, match="needs max_norm or median_multiple"):
        ClipNorm()


@pytest.mark.parametrize("stages", [
    lambda: [RejectNormOutliers(3.0), WeightBy("num_examples"), Mean()],
    lambda: [RejectNormOutliers(50.0), ClipNorm(median_multiple=1.0), WeightBy("num_examples"), Mean()],
    lambda: [RejectNormOutliers(50.0), WeightBy("num_examples"), Mean(), ServerStep(0.5, 0.9)],
])
def test_one_pass_pipeline_equals_running_the_stages_one_by_one(stages):
    from fedloom.aggregation import RoundState

    rng = np.random.default_rng(7)
    global_weights = [rng.standard_normal((300, 70)).astype(np.float32), np.zeros(70, np.float32)]
    updates = [ClientUpdate(str(k), [g + rng.normal(scale=0.1 * (k + 1), size=g.shape).astype(np.float32)
                                     for g in global_weights], 10 + k) for k in range(8)]
    updates[5].weights[0][0, 0] = np.nan
    updates[6] = ClientUpdate("6", [g + 100.0 for g in global_weights], 16)  # far outlier
    fused = Pipeline(*stages())(global_weights, updates)
    state = RoundState(0, global_weights, list(updates))
    for stage in stages():
        stage(state)
    assert fused.used == [u.client_id for u in state.updates]
    assert sorted(r.reason for r in fused.rejected) == sorted(r.reason for r in state.rejected)
    for a, b in zip(fused.weights, state.aggregate):
        assert a.tobytes() == b.tobytes()  # the documented order's result, bit for bit


def test_one_pass_pipeline_keeps_the_documented_order_when_the_weighting_rejects():
    # norms 0.1, 1, 1, 3, 3, 7.5; client c0 reports no quality. In the documented order
    # the filter sees all six norms (median 2, limit 6) and rejects c5; only then does
    # the weighting leave c0 out. Weighing first would hide c0's norm (median 3, limit 9).
    norms = [0.1, 1.0, 1.0, 3.0, 3.0, 7.5]
    updates = client_updates([[n, 0.0] for n in norms], num_examples=[10] * 6,
                             quality=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    updates[0] = ClientUpdate("c0", updates[0].weights, 10, {})

    def stages():
        return [RejectNormOutliers(max_ratio=3.0), WeightBy("quality"), Mean()]

    fused = Pipeline(*stages())(GLOBAL, updates)
    from fedloom.aggregation import RoundState

    state = RoundState(0, GLOBAL, list(updates))
    for stage in stages():
        stage(state)
    assert [(r.client_id, r.reason) for r in fused.rejected] == [
        ("c5", "norm_outlier"), ("c0", "missing_metric")]
    assert fused.used == [u.client_id for u in state.updates] == ["c1", "c2", "c3", "c4"]
    assert fused.weights[0].tobytes() == state.aggregate[0].tobytes()
