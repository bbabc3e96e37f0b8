"""Server quality: the server's validation split and the Keras scorer of client updates.

Under ``weight_by=server_quality`` (:mod:`fedloom.aggregation.weighting`) each update's
weight is its quality measured by the server on data the server holds, so a client
cannot raise its weight by claiming ``quality=1.0``. That data is a validation split
of the server's test set: :func:`split_server_validation` holds out
``server_val_fraction`` of it (stratified by label, seeded by the experiment's seed),
and the test accuracy the run reports is measured on the rest only, so no example
both decides the weights and grades the result. In simulation the test set is the
dataset's; in a deployment the ServerApp loads the experiment's ``dataset`` section on
the server machine (e.g. ``dataset=file dataset.path=/server/data.npz``, a file only
the server has) and splits it the same way.

The scorer (:func:`keras_quality_scorer`) evaluates each update with the server's own
compiled Keras trainer (the one of the central evaluation): one graph call per update
over the held-out examples, no training, so a round of ``K`` updates costs ``K``
forward passes over the split. It keeps no state between rounds: a resumed run scores
the same updates the same way.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from fedloom.aggregation.weighting import QualityScorer
from fedloom.data import Dataset
from fedloom.data._core import stratified_split
from fedloom.errors import ConfigError

__all__ = ["split_server_validation", "keras_quality_scorer", "SPLIT_SEED_TAG"]

LOGGER = logging.getLogger("fedloom")

#: mixed into the experiment's seed so the server's split draws its own random numbers
SPLIT_SEED_TAG = 0x5E5A


def split_server_validation(dataset: Dataset, fraction: float, seed: int
                            ) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * M_c)`` test examples of every class ``c`` for scoring.

    Args:
        dataset: the server's dataset; its test set ``(M, *features)`` is split.
        fraction: share held out, in ``(0, 1)``.
        seed: the experiment's seed.

    Returns:
        ``(reported, x_val, y_val)``: the dataset whose test set is what is left
        (``M - V`` examples, the reported accuracy's), and the ``V`` held-out examples
        ``(V, *features)`` float32 and labels ``(V,)`` int64.

    Raises:
        ConfigError: the split would leave no example on either side.
    """
    y_test = np.asarray(dataset.y_test)
    keep, held_out = stratified_split(y_test, fraction, (int(seed), SPLIT_SEED_TAG))
    if len(held_out) == 0 or len(keep) == 0:
        raise ConfigError(
            f"server_val_fraction={fraction} of the server's {len(y_test)} test examples leaves "
            f"{len(held_out)} to score updates and {len(keep)} to report accuracy on; "
            "weight_by=server_quality needs both. Pick a fraction such as 0.2, or a dataset "
            "with a larger test set.")
    test_ids = dataset.test_client_ids
    reported = dataclasses.replace(
        dataset, x_test=dataset.x_test[keep], y_test=y_test[keep],
        test_client_ids=None if test_ids is None else np.asarray(test_ids)[keep])
    LOGGER.info("server quality: %d of the %d test examples score the updates; accuracy is "
                "reported on the other %d", len(held_out), len(y_test), len(keep))
    return reported, dataset.x_test[held_out], y_test[held_out]


def keras_quality_scorer(trainer, x: np.ndarray, y: np.ndarray, kind: str = "accuracy"
                         ) -> QualityScorer:
    """``score(updates) -> (K,)`` accuracies (or losses) of each update on ``(x, y)``.

    Args:
        trainer: a :class:`fedloom.clients.KerasTrainer` of the global model's
            architecture (its calls are serialised, so it may also serve the central
            evaluation).
        x, y: the server's held-out examples ``(V, *features)`` and labels ``(V,)``.
        kind: ``"accuracy"`` (fraction correct, higher is better) or ``"loss"`` (mean
            cross-entropy, lower is better): what the weighting's ``quality_kind``
            expects.
    """
    if kind not in ("accuracy", "loss"):
        raise ConfigError(f"the server quality scorer measures 'accuracy' or 'loss'; got {kind!r}.")
    if len(x) == 0:
        raise ConfigError("the server quality scorer needs at least one held-out example.")
    column = 1 if kind == "accuracy" else 0

    def score(updates) -> np.ndarray:
        return np.array([trainer.evaluate(list(weights), x, y)[column] for weights in updates],
                        dtype=np.float64)

    return score
