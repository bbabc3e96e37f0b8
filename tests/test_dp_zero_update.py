"""A client that sends the global model back unchanged must not end a DP run.

Flower 1.42's server-side clipping divides by the update's norm
(``clip_inputs_inplace``: ``min(1, C / norm)``), so one unchanged reply raised
``ZeroDivisionError`` in ``aggregate_train`` and ended the run. fedloom's
:class:`~fedloom.privacy.ScreenReplies` screens it first as ``zero_update``.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedloom.aggregation import REASONS
from fedloom.engine import LocalGrid
from fedloom.privacy import ScreenReplies
from fedloom.privacy.wrappers import dp_wrapper
from fedloom.privacy.settings import PrivacySettings
from fedloom.strategies import SimpleAverage

from numpy_apps import INITIAL_WEIGHTS, client_step, message_app

FREERIDER = 1  # partition id of the client that returns the global model unchanged


def freerider_app() -> ClientApp:
    """``numpy_apps`` clients, except partition ``FREERIDER`` replies with what it got."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context):
        if int(context.node_config["partition-id"]) != FREERIDER:
            return message_app(msg, context)
        content = RecordDict({"arrays": msg.content["arrays"],
                              "metrics": MetricRecord({"num-examples": 20})})
        return Message(content, reply_to=msg)

    return app


def dp_run(mode: str = "central_fixed", num_nodes: int = 3, rounds: int = 2):
    """``dp=<mode> clipping_side=server strategy=simple`` as the experiment builds it."""
    norm = {"clipping_norm": 100.0} if mode == "central_fixed" else {"initial_clipping_norm": 100.0}
    settings = PrivacySettings.from_config(
        {"mode": mode, "noise_multiplier": 1e-9, "clipping_side": "server", **norm},
        num_nodes, num_nodes)
    inner = SimpleAverage(min_available_nodes=num_nodes, min_train_nodes=num_nodes,
                          fraction_evaluate=0.0, seed=0)
    wrapped = ScreenReplies(dp_wrapper(inner, settings, np.random.default_rng(0)), inner)
    grid = LocalGrid(freerider_app(), num_nodes, seed=0)
    result = wrapped.start(grid=grid, initial_arrays=ArrayRecord(INITIAL_WEIGHTS), num_rounds=rounds)
    return inner, result


@pytest.mark.parametrize("mode", ["central_fixed", "central_adaptive"])
def test_an_unchanged_reply_is_screened_as_zero_update_and_the_dp_run_completes(mode):
    inner, result = dp_run(mode)
    assert [r.server_round for r in inner.reports] == [1, 2]
    for report in inner.reports:
        assert report.rejected_counts() == {"zero_update": 1}
        assert len(report.clients_used) == 2
    # the two honest clients (partition 0 and 2) move every weight by their step each
    # round; noise std ~3e-8 (count noise too small to move a norm of 100 much), clipping
    # norm far above their updates
    expected = 2 * np.mean([client_step(0, 1), client_step(2, 1)])
    for array in result.arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(array, expected, rtol=1e-6)


def test_an_update_that_underflows_to_norm_zero_in_float32_is_screened_too():
    """Flower's ``get_norm`` squares float32 norms: a 1e-30 move has norm 0 there."""
    inner = SimpleAverage(min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0, seed=0)
    grid = LocalGrid(message_app, 2, seed=0)
    messages = list(inner.configure_train(1, ArrayRecord(INITIAL_WEIGHTS), _config(), grid))
    tiny = [w + np.float32(1e-30) for w in INITIAL_WEIGHTS]
    honest = [w + np.float32(1.0) for w in INITIAL_WEIGHTS]
    replies = [_reply(messages[0], tiny), _reply(messages[1], honest)]
    kept = inner.screen_replies(replies)
    assert kept == [replies[1]]
    arrays, metrics = inner.aggregate_train(1, kept)
    assert metrics["rejected-zero_update"] == 1 and metrics["clients-used"] == 1


def test_reject_takes_only_known_reasons():
    inner = SimpleAverage()
    assert "zero_update" in REASONS
    with pytest.raises(ValueError, match="unknown rejection reason 'lazy'"):
        inner.reject("7", "lazy", "no")


def _config():
    from flwr.app import ConfigRecord

    return ConfigRecord({"local-epochs": 1})


def _reply(message: Message, arrays: list[np.ndarray]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 5})})
    return Message(content, reply_to=message)
