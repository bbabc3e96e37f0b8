"""The aggregation maths of fedloom: pure numpy, no Flower import.

Functions take a list of client updates (each a list of numpy arrays, one model's
weights) and return new arrays with the same shapes and dtypes. Stages and pipelines
compose them into whole methods (see ``pipeline``).
"""

from fedloom.aggregation.checks import REASONS, check_finite, check_update
from fedloom.aggregation.mean import unweighted_mean, weighted_mean
from fedloom.aggregation.pipeline import AggregationResult, Pipeline, Schedule
from fedloom.aggregation.robust import (
    centered_clip,
    clip_to_norm,
    coordinate_median,
    krum_scores,
    multi_krum,
    pairwise_squared_distances,
    trimmed_mean,
    update_norms,
)
from fedloom.aggregation.round_state import ClientUpdate, Rejection, RoundState
from fedloom.aggregation.server_step import server_update
from fedloom.aggregation.stages import (
    Bucket,
    CenteredClip,
    ClipNorm,
    CoordinateMedian,
    KrumSelect,
    Mean,
    RejectNormOutliers,
    ServerStep,
    Stage,
    TrimmedMean,
    WeightBy,
)
from fedloom.aggregation.weighting import (
    num_examples_weights,
    quality_scores,
    quality_weights,
    size_quality_weights,
)

__all__ = [
    "REASONS",
    "AggregationResult",
    "Bucket",
    "CenteredClip",
    "ClientUpdate",
    "ClipNorm",
    "CoordinateMedian",
    "KrumSelect",
    "Mean",
    "Pipeline",
    "Rejection",
    "RejectNormOutliers",
    "RoundState",
    "Schedule",
    "ServerStep",
    "Stage",
    "TrimmedMean",
    "WeightBy",
    "centered_clip",
    "check_finite",
    "check_update",
    "clip_to_norm",
    "coordinate_median",
    "krum_scores",
    "multi_krum",
    "num_examples_weights",
    "pairwise_squared_distances",
    "quality_scores",
    "quality_weights",
    "server_update",
    "size_quality_weights",
    "trimmed_mean",
    "unweighted_mean",
    "update_norms",
    "weighted_mean",
]
