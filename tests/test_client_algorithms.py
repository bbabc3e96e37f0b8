"""FedProx, client momentum and SCAFFOLD in the Keras client, against numpy references
written here (softmax regression on real digits), and through Flower's own classes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("sklearn")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedProx  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from fedloom.clients import ClientSplits, KerasTrainer, TrainConfig, derive_seed, make_client_app  # noqa: E402
from fedloom.clients.trainer import shuffle_order  # noqa: E402
from fedloom.engine import LocalGrid  # noqa: E402
from fedloom.errors import ConfigError  # noqa: E402
from fedloom.models import ModelSpec  # noqa: E402

LOGREG = ModelSpec("logreg", (64,), 10, seed=2)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], data.target.astype(np.int64)[order]


@pytest.fixture(scope="module")
def trainer() -> KerasTrainer:
    return KerasTrainer(LOGREG)


def softmax_regression_sgd(w, b, x, y, *, epochs, batch, lr, seed, mu=0.0, cw=None, cb=None):
    """float64 numpy reference: SGD on cross-entropy + mu/2 ||(w, b) - (w0, b0)||^2, each
    step's gradient plus the constant correction (cw, cb), in the trainer's order."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    w0, b0 = w.copy(), b.copy()
    cw = np.zeros_like(w) if cw is None else cw
    cb = np.zeros_like(b) if cb is None else cb
    onehot = np.eye(10)[y]
    for row in shuffle_order(len(x), epochs, seed).reshape(epochs, -1):
        for s in range(0, len(x), batch):
            idx = row[s : s + batch]
            z = x[idx] @ w + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            dz = (p - onehot[idx]) / len(idx)
            gw = x[idx].T @ dz + mu * (w - w0) + cw
            gb = dz.sum(axis=0) + mu * (b - b0) + cb
            w, b = w - lr * gw, b - lr * gb
    return w, b


# ---------------------------------------------------------------------------- FedProx
def test_proximal_term_matches_numpy_reference(trainer, digits) -> None:
    x, y = digits[0][:23], digits[1][:23]
    start = trainer.get_weights()
    kwargs = dict(epochs=2, batch_size=5, learning_rate=0.5, seed=11)
    new, _ = trainer.fit(start, x, y, proximal_mu=0.8, **kwargs)
    plain, _ = trainer.fit(start, x, y, **kwargs)
    w, b = softmax_regression_sgd(*start, x, y, epochs=2, batch=5, lr=0.5, seed=11, mu=0.8)
    np.testing.assert_allclose(new[0], w, atol=2e-5)
    np.testing.assert_allclose(new[1], b, atol=2e-5)
    # the term pulls towards the global model: it matters here, and only with mu > 0
    assert np.abs(new[0] - plain[0]).max() > 1e-3
    assert np.linalg.norm(new[0] - start[0]) < np.linalg.norm(plain[0] - start[0])
    assert trainer.tracing_count["fit_extra_terms"] == 1


def test_proximal_mu_is_read_from_the_round_config_and_checked() -> None:
    assert TrainConfig.from_config({"proximal-mu": 0.1}).proximal_mu == 0.1
    assert TrainConfig.from_config({}).proximal_mu == 0.0
    with pytest.raises(ConfigError, match="proximal-mu must be a finite number >= 0"):
        TrainConfig.from_config({"proximal-mu": -1.0})


def test_flowers_fedprox_strategy_makes_the_client_app_apply_the_term(trainer, digits) -> None:
    """Flower's own Message-API FedProx sends 'proximal-mu' in its train config; one
    round with one client returns that client's update, which must be the proximal one."""
    x, y = digits
    data = ClientSplits(x[:40], y[:40], x[40:60], y[40:60])
    app = make_client_app(lambda context: (trainer, data), seed=4)
    start = trainer.initial_weights()
    config = {"local-epochs": 2, "batch-size": 8, "learning-rate": 0.5}
    strategy = FedProx(proximal_mu=0.9, fraction_evaluate=0.0, min_available_nodes=1,
                       min_train_nodes=1)
    result = strategy.start(grid=LocalGrid(app, 1, seed=0), initial_arrays=ArrayRecord(start),
                            num_rounds=1, train_config=ConfigRecord(config))
    got = result.arrays.to_numpy_ndarrays()
    seed = derive_seed(derive_seed(4, 0), 1)  # client partition 0, server round 1
    kwargs = dict(epochs=2, batch_size=8, learning_rate=0.5, seed=seed)
    expected, _ = trainer.fit(start, x[:40], y[:40], proximal_mu=0.9, **kwargs)
    without, _ = trainer.fit(start, x[:40], y[:40], **kwargs)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert np.abs(got[0] - without[0]).max() > 1e-3


# -------------------------------------------------------------------- client momentum
def _train_message(grid: LocalGrid, weights, config) -> Message:
    (node,) = grid.get_node_ids()
    content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(config)})
    (reply,) = grid.send_and_receive([grid.create_message(content, MessageType.TRAIN, node, "1")])
    assert not reply.has_error(), reply.error
    return reply


def test_client_momentum_follows_its_recurrence_over_two_rounds_in_context_state(
    trainer, digits
) -> None:
    """m_1 = (1 - b) d_1, m_2 = b m_1 + (1 - b) d_2, the client sends global + m_r, with
    d_r the plain local update of round r; m survives in the node's context.state."""
    x, y = digits
    data = ClientSplits(x[:30], y[:30], x[30:40], y[30:40])
    beta, client_seed = 0.9, derive_seed(5, 0)
    config = {"local-epochs": 1, "batch-size": 10, "learning-rate": 0.5, "client-momentum": beta}
    grid = LocalGrid(make_client_app(lambda context: (trainer, data), seed=5), 1, seed=0)
    globals_ = [trainer.initial_weights(), [w + 0.01 for w in trainer.initial_weights()]]
    momentum = [np.zeros(w.shape) for w in globals_[0]]
    for server_round, start in enumerate(globals_, start=1):
        reply = _train_message(grid, start, {**config, "server-round": server_round})
        sent = reply.content["arrays"].to_numpy_ndarrays()
        local, _ = trainer.fit(start, x[:30], y[:30], epochs=1, batch_size=10, learning_rate=0.5,
                               seed=derive_seed(client_seed, server_round))
        momentum = [beta * m + (1 - beta) * (a.astype(np.float64) - s) for m, a, s in zip(momentum, local, start)]
        for got, s, m in zip(sent, start, momentum):
            np.testing.assert_allclose(got, s + m, rtol=1e-6, atol=1e-7)
    (context,) = grid.contexts.values()
    stored = context.state["fedloom.client-momentum"].to_numpy_ndarrays()
    for got, m in zip(stored, momentum):
        np.testing.assert_allclose(got, m, rtol=1e-6, atol=1e-7)
    # Without the stored buffer (a fresh node) round 2 would send a different update.
    fresh = LocalGrid(make_client_app(lambda context: (trainer, data), seed=5), 1, seed=0)
    other = _train_message(fresh, globals_[1], {**config, "server-round": 2})
    assert not np.allclose(other.content["arrays"].to_numpy_ndarrays()[0], sent[0])


def test_numpy_client_keeps_momentum_in_its_context(trainer, digits) -> None:
    from fedloom.clients import KerasClient

    x, y = digits
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    config = {"batch-size": 10, "learning-rate": 0.5, "client-momentum": 0.5}
    start = trainer.initial_weights()
    sent = []
    for server_round in (1, 2):  # Flower builds a new client for every message
        client = KerasClient(trainer, x[:20], y[:20], seed=3, context=context)
        sent.append(client.fit(start, {**config, "server-round": server_round})[0])
    plain = [KerasClient(trainer, x[:20], y[:20], seed=3).fit(start, {"batch-size": 10, "learning-rate": 0.5, "server-round": r})[0]
             for r in (1, 2)]
    d1, d2 = (p[0].astype(np.float64) - start[0] for p in plain)
    np.testing.assert_allclose(sent[0][0], start[0] + 0.5 * d1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sent[1][0], start[0] + 0.25 * d1 + 0.5 * d2, rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="needs state kept per client"):
        KerasClient(trainer, x[:20], y[:20]).fit(start, config)
    with pytest.raises(ConfigError, match=r"client-momentum must be in \[0, 1\)"):
        TrainConfig.from_config({"client-momentum": 1.0})


def test_a_stored_buffer_of_another_model_is_reset_with_a_logged_reason(trainer, digits, caplog) -> None:
    x, y = digits
    data = ClientSplits(x[:20], y[:20])
    grid = LocalGrid(make_client_app(lambda context: (trainer, data), seed=1), 1, seed=0)
    (context,) = grid.contexts.values()
    context.state["fedloom.client-momentum"] = ArrayRecord([np.ones(3, np.float32)])
    config = {"batch-size": 10, "learning-rate": 0.5, "client-momentum": 0.5, "server-round": 1}
    start = trainer.initial_weights()
    with caplog.at_level("WARNING", logger="fedloom"):
        reply = _train_message(grid, start, config)
    assert "client-momentum buffer has shapes [(3,)]" in caplog.text
    local, _ = trainer.fit(start, x[:20], y[:20], epochs=1, batch_size=10, learning_rate=0.5,
                           seed=derive_seed(derive_seed(1, 0), 1))
    np.testing.assert_allclose(reply.content["arrays"].to_numpy_ndarrays()[0],
                               start[0] + 0.5 * (local[0] - start[0]), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- SCAFFOLD
def test_scaffold_corrected_steps_and_option_two_variates_over_two_rounds(trainer, digits) -> None:
    """Round r: SGD with every gradient corrected by c_r - c_i, then
    c_i+ = c_i - c_r + (x - y_i) / (K lr), reply scaffold-delta-c = c_i+ - c_i; the
    client's c_i survives in context.state (round 2 starts from round 1's)."""
    x, y = digits
    data = ClientSplits(x[:23], y[:23], x[30:40], y[30:40])
    lr, batch, epochs = 0.5, 5, 2
    steps = epochs * 5  # ceil(23 / 5) batches per epoch
    grid = LocalGrid(make_client_app(lambda context: (trainer, data), seed=8), 1, seed=0)
    rng = np.random.default_rng(3)
    start = trainer.initial_weights()
    c_i = [np.zeros(a.shape) for a in start]
    for server_round in (1, 2):
        c = [rng.normal(scale=0.05, size=a.shape).astype(np.float32) for a in start]
        (node,) = grid.get_node_ids()
        content = RecordDict({
            "arrays": ArrayRecord(start), "scaffold-c": ArrayRecord(c),
            "config": ConfigRecord({"local-epochs": epochs, "batch-size": batch,
                                    "learning-rate": lr, "server-round": server_round}),
        })
        (reply,) = grid.send_and_receive([grid.create_message(content, MessageType.TRAIN, node, "1")])
        assert not reply.has_error(), reply.error
        got = reply.content["arrays"].to_numpy_ndarrays()
        delta_c = reply.content["scaffold-delta-c"].to_numpy_ndarrays()

        seed = derive_seed(derive_seed(8, 0), server_round)
        w, b = softmax_regression_sgd(*start, x[:23], y[:23], epochs=epochs, batch=batch, lr=lr,
                                      seed=seed, cw=c[0] - c_i[0], cb=c[1] - c_i[1])
        np.testing.assert_allclose(got[0], w, atol=2e-5)
        np.testing.assert_allclose(got[1], b, atol=2e-5)
        new_c_i = [ci - cc + (s - yi) / (steps * lr)
                   for ci, cc, s, yi in zip(c_i, c, start, (w, b))]
        for d, new, old in zip(delta_c, new_c_i, c_i):
            np.testing.assert_allclose(d, new - old, atol=2e-5)
        c_i = new_c_i
        start = [a.astype(np.float32) for a in (w, b)]  # the server moved
    (context,) = grid.contexts.values()
    stored = context.state["fedloom.scaffold-c-i"].to_numpy_ndarrays()
    for got_c, want in zip(stored, c_i):
        np.testing.assert_allclose(got_c, want, atol=2e-5)


def test_scaffold_variate_of_another_model_is_reset_with_a_logged_reason(trainer, digits, caplog) -> None:
    x, y = digits
    data = ClientSplits(x[:20], y[:20])
    grid = LocalGrid(make_client_app(lambda context: (trainer, data), seed=1), 1, seed=0)
    (context,) = grid.contexts.values()
    context.state["fedloom.scaffold-c-i"] = ArrayRecord([np.ones(3, np.float32)])
    start = trainer.initial_weights()
    c = [np.full(a.shape, 0.1, np.float32) for a in start]
    (node,) = grid.get_node_ids()
    content = RecordDict({"arrays": ArrayRecord(start), "scaffold-c": ArrayRecord(c),
                          "config": ConfigRecord({"batch-size": 20, "learning-rate": 0.5,
                                                  "server-round": 1})})
    with caplog.at_level("WARNING", logger="fedloom"):
        (reply,) = grid.send_and_receive([grid.create_message(content, MessageType.TRAIN, node, "1")])
    assert "SCAFFOLD variate c_i has shapes [(3,)]" in caplog.text
    # reset means c_i = 0: one step corrected by c alone
    seed = derive_seed(derive_seed(1, 0), 1)
    w, _ = softmax_regression_sgd(*start, x[:20], y[:20], epochs=1, batch=20, lr=0.5, seed=seed,
                                  cw=c[0], cb=c[1])
    np.testing.assert_allclose(reply.content["arrays"].to_numpy_ndarrays()[0], w, atol=2e-5)
    assert context.state["fedloom.scaffold-c-i"].to_numpy_ndarrays()[0].shape == start[0].shape


def test_legacy_client_fn_keeps_momentum_in_the_context_flower_hands_it(trainer, digits) -> None:
    """Through Flower's legacy ClientApp(client_fn=...) on the local engine: a new
    KerasClient per message, the buffer carried by the node's context between rounds."""
    from flwr.clientapp import ClientApp
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import fitins_to_recorddict, recorddict_to_fitres

    from fedloom.clients import KerasClient

    x, y = digits
    app = ClientApp(client_fn=lambda context: KerasClient(
        trainer, x[:20], y[:20], seed=3, context=context).to_client())
    grid = LocalGrid(app, 1, seed=0)
    (node,) = grid.get_node_ids()
    start = trainer.initial_weights()
    plain = {"batch-size": 10, "learning-rate": 0.5}
    sent = []
    for server_round in (1, 2):
        config = {**plain, "client-momentum": 0.5, "server-round": server_round}
        content = fitins_to_recorddict(FitIns(ndarrays_to_parameters(start), config), keep_input=True)
        (reply,) = grid.send_and_receive([grid.create_message(content, MessageType.TRAIN, node, "1")])
        assert not reply.has_error(), reply.error
        sent.append(parameters_to_ndarrays(recorddict_to_fitres(reply.content, keep_input=False).parameters))
    d1, d2 = (KerasClient(trainer, x[:20], y[:20], seed=3).fit(start, {**plain, "server-round": r})[0][0]
              .astype(np.float64) - start[0] for r in (1, 2))
    np.testing.assert_allclose(sent[0][0], start[0] + 0.5 * d1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sent[1][0], start[0] + 0.25 * d1 + 0.5 * d2, rtol=1e-6, atol=1e-7)
