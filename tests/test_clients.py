"""Tests of fedloom.models and fedloom.clients with real Keras on real data (digits)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("sklearn")

from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import (  # noqa: E402
    EvaluateIns,
    FitIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from sklearn.datasets import load_digits  # noqa: E402

from fedloom.clients import (  # noqa: E402
    ClientSplits,
    KerasClient,
    KerasTrainer,
    TrainConfig,
    derive_seed,
    get_trainer,
    make_client_app,
)
from fedloom.clients.trainer import shuffle_order  # noqa: E402
from fedloom.errors import ConfigError, DataError, FedloomError  # noqa: E402
from fedloom.models import MODEL_NAMES, ModelSpec, build_model, count_params  # noqa: E402

MLP = ModelSpec("mlp", (64,), 10, seed=0)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


@pytest.fixture(scope="module")
def trainer() -> KerasTrainer:
    return get_trainer(MLP)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))


# ----------------------------------------------------------------------------- models
def test_mcmahan_parameter_counts() -> None:
    assert count_params(build_model("mcmahan_2nn", (784,), 10)) == 199_210
    assert count_params(build_model("mcmahan_cnn", (28, 28, 1), 10)) == 1_663_370


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("logreg", (64,)),
        ("mlp", (64,)),
        ("cnn", (8, 8, 1)),
        ("cnn", (8, 8)),
        ("mcmahan_2nn", (8, 8, 1)),
    ],
)
def test_models_output_probabilities(name: str, shape: tuple[int, ...], digits) -> None:
    x, _ = digits
    model = build_model(name, shape, 10, seed=1)
    probs = np.asarray(model(x[:5].reshape(5, *shape)))
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_build_model_is_deterministic_in_seed() -> None:
    a = build_model("mlp", (64,), 10, seed=3, hidden=(16,)).get_weights()
    b = build_model("mlp", (64,), 10, seed=3, hidden=[16]).get_weights()
    c = build_model("mlp", (64,), 10, seed=4, hidden=(16,)).get_weights()
    assert [w.shape for w in a] == [(64, 16), (16,), (16, 10), (10,)]
    assert _same(a, b)
    assert not np.array_equal(a[0], c[0])


def test_model_config_errors() -> None:
    with pytest.raises(ConfigError, match="mlp"):
        build_model("cnn", (64,), 10)
    with pytest.raises(ConfigError, match="logreg"):  # lists the known names
        build_model("resnet", (64,), 10)
    with pytest.raises(ConfigError, match="hidden"):
        build_model("logreg", (64,), 10, hidden=(3,))
    assert set(MODEL_NAMES) == {"logreg", "mlp", "cnn", "mcmahan_2nn", "mcmahan_cnn", "char_lstm", "mcmahan_lstm"}


def test_get_trainer_caches_per_spec(trainer: KerasTrainer) -> None:
    assert get_trainer(ModelSpec("mlp", [64], 10, options={})) is trainer
    assert get_trainer(ModelSpec("mlp", (64,), 10, options={"hidden": [8]})) is not trainer


# ---------------------------------------------------------------------------- trainer
def test_fit_lowers_loss_and_changes_weights(trainer: KerasTrainer, digits) -> None:
    x, y = digits
    start = trainer.get_weights()
    loss_before, acc_before = trainer.evaluate(start, x[1000:], y[1000:])
    weights, metrics = trainer.fit(
        start, x[:300], y[:300], epochs=3, batch_size=10, learning_rate=0.1, seed=0
    )
    loss_after, acc_after = trainer.evaluate(weights, x[1000:], y[1000:])
    assert loss_after < 0.5 * loss_before
    assert acc_after > 0.8 > acc_before
    assert not any(np.array_equal(a, b) for a, b in zip(start, weights))
    assert all(w.dtype == np.float32 for w in weights)
    assert set(metrics) == {"train_loss", "train_accuracy"}
    assert all(type(v) is float for v in metrics.values())
    assert metrics["train_loss"] < loss_before and 0.0 <= metrics["train_accuracy"] <= 1.0
    # fit returns copies: later training does not change them
    snapshot = [w.copy() for w in weights]
    trainer.fit(weights, x[:20], y[:20], epochs=1, batch_size=10, learning_rate=0.1, seed=1)
    assert _same(weights, snapshot)


def test_fit_is_reproducible_in_seed(trainer: KerasTrainer, digits) -> None:
    x, y = digits
    start = build_model("mlp", (64,), 10, seed=7).get_weights()
    kwargs = dict(epochs=2, batch_size=10, learning_rate=0.1)
    a, ma = trainer.fit(start, x[:45], y[:45], seed=5, **kwargs)
    b, mb = trainer.fit(start, x[:45], y[:45], seed=5, **kwargs)
    c, _ = trainer.fit(start, x[:45], y[:45], seed=6, **kwargs)
    assert _same(a, b) and ma == mb
    assert not np.array_equal(a[0], c[0])


def test_graph_is_never_retraced(digits) -> None:
    x, y = digits
    trainer = KerasTrainer(ModelSpec("mlp", (64,), 10, options={"hidden": (8,)}))
    weights = trainer.get_weights()
    runs = [(7, 0.01, 1, 3), (14, 0.1, 2, 10), (33, 0.5, 1, 32), (100, 0.05, 3, 7)]
    for n, lr, epochs, batch in runs:
        weights, _ = trainer.fit(
            weights, x[:n], y[:n], epochs=epochs, batch_size=batch, learning_rate=lr, seed=n
        )
        trainer.evaluate(weights, x[:n], y[:n], batch_size=batch)
    assert trainer.tracing_count == {"fit": 1, "evaluate": 1}
    assert trainer._fit_fn.experimental_get_tracing_count() == 1
    assert trainer._evaluate_fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fit_matches_numpy_sgd_including_last_partial_batch(momentum: float, digits) -> None:
    """Softmax regression against a float64 numpy reference: 23 examples, batch 5,
    so every epoch ends with a batch of 3 that must not be dropped."""
    x, y = digits
    x, y = x[:23], y[:23]
    trainer = KerasTrainer(ModelSpec("logreg", (64,), 10, seed=2), momentum=momentum)
    start = trainer.get_weights()
    epochs, batch, lr, seed = 2, 5, 0.5, 11
    new, metrics = trainer.fit(
        start, x, y, epochs=epochs, batch_size=batch, learning_rate=lr, seed=seed
    )

    w, b = (a.astype(np.float64) for a in start)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(10)[y]
    last_loss = last_hits = 0.0
    for epoch, row in enumerate(shuffle_order(len(x), epochs, seed).reshape(epochs, -1)):
        for s in range(0, len(x), batch):
            idx = row[s : s + batch]
            z = x[idx] @ w + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            if epoch == epochs - 1:
                last_loss += -np.log(p[np.arange(len(idx)), y[idx]]).sum()
                last_hits += (p.argmax(axis=1) == y[idx]).sum()
            dz = (p - onehot[idx]) / len(idx)
            vw, vb = momentum * vw + x[idx].T @ dz, momentum * vb + dz.sum(axis=0)
            w, b = w - lr * vw, b - lr * vb
    np.testing.assert_allclose(new[0], w, atol=2e-5)
    np.testing.assert_allclose(new[1], b, atol=2e-5)
    assert metrics["train_loss"] == pytest.approx(last_loss / len(x), rel=1e-4)
    assert metrics["train_accuracy"] == pytest.approx(last_hits / len(x))


def test_image_inputs_28x28(digits) -> None:
    x, y = digits
    upsampled = np.kron(x[:40].reshape(-1, 8, 8), np.ones((3, 3)))  # (40, 24, 24)
    images = np.pad(upsampled, ((0, 0), (2, 2), (2, 2)))
    images = images[..., None].astype(np.float32)  # (40, 28, 28, 1)
    trainer = KerasTrainer(ModelSpec("cnn", (28, 28, 1), 10))
    start = trainer.get_weights()
    weights, _ = trainer.fit(
        start, images, y[:40], epochs=2, batch_size=10, learning_rate=0.05, seed=0
    )
    loss, accuracy = trainer.evaluate(weights, images, y[:40])
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
    assert not np.array_equal(weights[0], start[0])
    with pytest.raises(DataError, match="Reshape"):
        trainer.fit(start, x[:10], y[:10], epochs=1, batch_size=10, learning_rate=0.1, seed=0)


def test_set_weights_and_bad_inputs_raise_clear_errors(trainer: KerasTrainer, digits) -> None:
    x, y = digits
    weights = trainer.get_weights()
    with pytest.raises(ConfigError, match=r"Expected 6 arrays with shapes .*; received 5"):
        trainer.set_weights(weights[:-1])
    bad = [*weights[:-1], np.zeros(11, np.float32)]
    with pytest.raises(ConfigError, match=r"received 6 arrays with shapes .*\(11,\)"):
        trainer.set_weights(bad)
    with pytest.raises(ConfigError):
        trainer.fit(bad, x[:10], y[:10], epochs=1, batch_size=10, learning_rate=0.1, seed=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        trainer.fit(weights, x[:10], y[:10], epochs=1, batch_size=10, learning_rate=-1, seed=0)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\]"):
        trainer.fit(
            weights, x[:10], y[:10] + 5, epochs=1, batch_size=10, learning_rate=0.1, seed=0
        )
    trainer.set_weights(weights)
    assert _same(trainer.get_weights(), weights)
    assert issubclass(ConfigError, FedloomError)


# ---------------------------------------------------------------------- client logic
def test_train_config_parsing() -> None:
    cfg = TrainConfig.from_config(
        {"local-epochs": 2, "batch-size": 16.0, "learning-rate": 0.05, "server-round": 3}
    )
    assert cfg == TrainConfig(2, 16, 0.05, 3)
    assert TrainConfig.from_config({}) == TrainConfig(1, 32, 0.1, 0)
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig.from_config({"local-epochs": 0})
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_config({"batch-size": 2.5})


def test_numpy_client_fit_and_evaluate(trainer: KerasTrainer, digits) -> None:
    x, y = digits
    client = KerasClient(trainer, x[:40], y[:40], x[40:60], y[40:60], seed=3)
    start = trainer.get_weights()
    config = {"local-epochs": 2, "batch-size": 10, "learning-rate": 0.1, "server-round": 1}
    new, num_examples, metrics = client.fit(start, config)
    assert isinstance(new, list) and len(new) == len(start)
    assert type(num_examples) is int and num_examples == 40
    assert set(metrics) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "quality"}
    assert all(type(v) is float for v in metrics.values())
    assert metrics["quality"] == metrics["val_accuracy"]
    assert (metrics["val_loss"], metrics["val_accuracy"]) == pytest.approx(
        trainer.evaluate(new, x[40:60], y[40:60])
    )
    again, _, _ = client.fit(start, config)
    other_round, _, _ = client.fit(start, {**config, "server-round": 2})
    assert _same(new, again) and not np.array_equal(new[0], other_round[0])

    loss, n, eval_metrics = client.evaluate(new, {})
    assert type(loss) is float and type(n) is int and n == 20
    assert eval_metrics == {"accuracy": pytest.approx(metrics["val_accuracy"])}
    assert loss == pytest.approx(metrics["val_loss"])

    # Through Flower's own wrapper, which checks the return types.
    flwr_client = client.to_client()
    fit_res = flwr_client.fit(FitIns(ndarrays_to_parameters(start), config))
    assert fit_res.num_examples == 40
    assert _same(parameters_to_ndarrays(fit_res.parameters), new)
    eval_res = flwr_client.evaluate(EvaluateIns(ndarrays_to_parameters(new), {}))
    assert eval_res.num_examples == 20 and eval_res.loss == pytest.approx(loss)


def test_client_without_validation_split_falls_back_to_train_data(trainer, digits) -> None:
    x, y = digits
    client = KerasClient(trainer, x[:15], y[:15], None, None)
    new, n, metrics = client.fit(trainer.get_weights(), {"batch-size": 10})
    assert n == 15
    loss, accuracy = trainer.evaluate(new, x[:15], y[:15])
    assert metrics["quality"] == metrics["val_accuracy"] == pytest.approx(accuracy)
    assert client.evaluate(new, {})[1] == 15


# ----------------------------------------------------------------------- Message API
@pytest.fixture()
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower 1.42 stamps new instruction messages with the identity of the running
    task (``TaskIdentity``), which only a ServerApp process has; pose as one."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def _context(partition_id: int) -> Context:
    return Context(
        run_id=1, node_id=100 + partition_id, node_config={"partition-id": partition_id},
        state=RecordDict(), run_config={},
    )


def test_client_app_train_and_evaluate_replies(trainer, digits, server_identity) -> None:
    x, y = digits
    data = ClientSplits(x[:40], y[:40], x[40:60], y[40:60])
    app = make_client_app(lambda context: (trainer, data), seed=9)
    start = trainer.get_weights()
    config = {"local-epochs": 1, "batch-size": 10, "learning-rate": 0.1, "server-round": 4}
    msg = Message(
        content=RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord(config)}),
        dst_node_id=100,
        message_type=MessageType.TRAIN,
    )
    reply = app(msg, _context(0))
    assert not reply.has_error()
    arrays = reply.content["arrays"]
    assert list(arrays.keys()) == [str(i) for i in range(len(start))]
    new = arrays.to_numpy_ndarrays()
    assert [w.shape for w in new] == [w.shape for w in start]
    metrics = reply.content["metrics"]
    assert isinstance(metrics, MetricRecord) and metrics["num-examples"] == 40
    assert set(metrics) == {
        "num-examples", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "quality"
    }

    # Same shared core as the NumPyClient: identical weights for the same seed.
    legacy = KerasClient(
        trainer, data.x_train, data.y_train, data.x_val, data.y_val, seed=derive_seed(9, 0)
    )
    expected, _, expected_metrics = legacy.fit(start, config)
    assert _same(new, expected)
    assert metrics["quality"] == pytest.approx(expected_metrics["quality"])

    eval_msg = Message(
        content=RecordDict({"arrays": ArrayRecord(new), "config": ConfigRecord({})}),
        dst_node_id=100,
        message_type=MessageType.EVALUATE,
    )
    eval_reply = app(eval_msg, _context(0))
    eval_metrics = eval_reply.content["metrics"]
    assert dict(eval_metrics) == {
        "num-examples": 20,
        "loss": pytest.approx(expected_metrics["val_loss"]),
        "accuracy": pytest.approx(expected_metrics["val_accuracy"]),
    }


def test_importing_fedloom_does_not_import_tensorflow() -> None:
    code = (
        "import sys, fedloom, fedloom.models, fedloom.errors; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------- regularised losses
def _l2_model():
    import keras

    inputs = keras.Input(shape=(64,))
    hidden = keras.layers.Dense(
        16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01),
        kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inputs)
    outputs = keras.layers.Dense(
        10, activation="softmax", activity_regularizer=keras.regularizers.L1(0.001),
        kernel_initializer=keras.initializers.GlorotUniform(seed=2))(hidden)
    return keras.Model(inputs, outputs)


def test_reported_losses_include_regularisers_like_keras(digits) -> None:
    """train_loss, val_loss and evaluate() equal what Keras reports for the same model:
    model.evaluate's loss, and model.fit's epoch loss (the batch-size-weighted mean of
    each batch's loss before its step), both with the L2 kernel and L1 activity terms."""
    x, y = digits
    trainer = KerasTrainer(_l2_model)
    start = trainer.get_weights()
    model = trainer.model
    model.set_weights(start)
    keras_loss, keras_acc = model.evaluate(x[:100], y[:100], batch_size=32, verbose=0)
    loss, accuracy = trainer.evaluate(start, x[:100], y[:100])
    ce_only = float(np.mean(-np.log(model.predict(x[:100], verbose=0)[np.arange(100), y[:100]])))
    assert keras_loss > ce_only + 0.01  # the regularisers matter in this test
    assert loss == pytest.approx(keras_loss, rel=1e-5)
    assert accuracy == pytest.approx(keras_acc)

    new, metrics = trainer.fit(
        start, x[:40], y[:40], epochs=1, batch_size=40, learning_rate=0.1, seed=0,
        validation=(x[100:160], y[100:160]),
    )
    model.set_weights(new)
    val_loss, _ = model.evaluate(x[100:160], y[100:160], verbose=0)
    assert metrics["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    # One full batch: the epoch loss is the loss of the starting weights on it.
    model.set_weights(start)
    batch_loss, _ = model.evaluate(x[:40], y[:40], batch_size=40, verbose=0)
    assert metrics["train_loss"] == pytest.approx(batch_loss, rel=1e-5)


def test_integer_token_inputs_train_as_int32() -> None:
    """A next-token model (Embedding over integer ids) is fed int32, not float32;
    non-integer values are refused with the reason."""
    import keras

    def model():
        inputs = keras.Input(shape=(6,), dtype="int32")
        embedded = keras.layers.Embedding(
            20, 8, embeddings_initializer=keras.initializers.RandomUniform(seed=0))(inputs)
        pooled = keras.layers.GlobalAveragePooling1D()(embedded)
        return keras.Model(inputs, keras.layers.Dense(
            20, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=1))(pooled))

    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(64, 6))
    y = x[:, 0]  # predict the first token: learnable from the embedding
    trainer = KerasTrainer(model)
    assert trainer.input_dtype == np.int32
    start = trainer.get_weights()
    loss_before, _ = trainer.evaluate(start, x, y)
    weights, _ = trainer.fit(start, x, y, epochs=60, batch_size=16, learning_rate=3.0, seed=0)
    loss_after, _ = trainer.evaluate(weights, x, y)
    assert loss_after < 0.8 * loss_before
    with pytest.raises(DataError, match="takes integer inputs"):
        trainer.evaluate(weights, x + 0.5, y)
