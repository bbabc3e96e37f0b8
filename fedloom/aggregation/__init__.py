"""The aggregation maths of fedloom: pure numpy, no Flower import.

Functions take a list of client updates (each a list of numpy arrays, one model's
weights) and return new arrays with the same shapes and dtypes. Stages and pipelines
compose them into whole methods (see ``pipeline``); ``stages`` says what a stage is,
and the stages live by kind in ``filters``, ``weighting``, ``reducers`` and
``server_step``.
"""

from fedloom.aggregation.checks import REASONS, check_finite, check_update
from fedloom.aggregation.mean import unweighted_mean, weighted_mean
from fedloom.aggregation.pipeline import AggregationResult, Pipeline
from fedloom.aggregation.schedule import Schedule
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
from fedloom.aggregation.filters import Bucket, ClipNorm, KrumSelect, RejectNormOutliers
from fedloom.aggregation.reducers import (
    Bulyan,
    CenteredClip,
    CoordinateMedian,
    GeometricMedian,
    Mean,
    TrimmedMean,
)
from fedloom.aggregation.server_step import AdaptiveServerStep, ServerStep, server_update
from fedloom.aggregation.stages import Stage
from fedloom.aggregation.weighting import (
    WeightBy,
    num_examples_weights,
    quality_scores,
    quality_weights,
    server_quality_weights,
    size_quality_weights,
)

__all__ = [
    "REASONS",
    "AdaptiveServerStep",
    "AggregationResult",
    "Bucket",
    "Bulyan",
    "CenteredClip",
    "ClientUpdate",
    "ClipNorm",
    "CoordinateMedian",
    "GeometricMedian",
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
    "server_quality_weights",
    "server_update",
    "size_quality_weights",
    "trimmed_mean",
    "unweighted_mean",
    "update_norms",
    "weighted_mean",
]
