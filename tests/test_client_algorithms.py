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
