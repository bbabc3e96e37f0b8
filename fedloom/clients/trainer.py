"""The one Keras training core shared by both Flower client APIs.

Why this exists: Flower's TensorFlow quickstart builds and compiles a new model and
calls ``model.fit`` for every client update. On the small local datasets of
cross-device FL (10-100 examples, a few mini-batches) almost all of that time is
Keras overhead, not arithmetic: building and compiling the model, then
``model.fit``'s data adapter, callbacks and epoch iterator (and a first-call graph
trace). :class:`KerasTrainer` instead

* builds and compiles the model once (and :func:`get_trainer` keeps one trainer per
  model spec per process, so a simulation worker serving many clients builds once);
* runs a whole local update -- load the received weights, all epochs, all
  mini-batches, plain SGD (optionally with momentum) -- in ONE call of a
  ``tf.function`` with a ``tf.while_loop`` over mini-batches, and returns the new
  weights from the same call;
* gives that function an ``input_signature`` with a ``None`` batch dimension and the
  learning rate, epochs and batch size as tensor arguments, so it is traced once per
  trainer and never retraced across rounds, clients, data sizes or learning rates
  (see :attr:`KerasTrainer.tracing_count`).

The maths is the usual mini-batch SGD: each epoch visits every example once in a
fresh random order drawn from ``seed`` (``numpy.random.default_rng``), in batches of
``batch_size``; the last batch of an epoch may be smaller (no example is dropped);
every batch takes one step ``w <- w - lr * grad(mean batch loss)`` (with momentum
``m``: ``v <- m * v + grad; w <- w - lr * v``, ``v`` reset to zero at the start of
every local update, as a freshly built optimizer would be). The loss is sparse
categorical cross-entropy on integer labels.

TensorFlow and Keras are imported here (with ``KERAS_BACKEND=tensorflow`` and
``TF_CPP_MIN_LOG_LEVEL=2`` unless already set), never by ``import fedloom``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import threading  # noqa: E402
import weakref  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras  # noqa: E402
from fedloom.errors import ConfigError, DataError  # noqa: E402
from fedloom.models import ModelSpec  # noqa: E402

if keras.backend.backend() != "tensorflow":  # pragma: no cover - environment guard
    raise ConfigError(
        f"fedloom.clients needs the Keras TensorFlow backend; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing "
        "keras (or import fedloom.clients first)."
    )

__all__ = [
    "KerasTrainer",
    "ModelSpec",
    "clear_trainer_cache",
    "configure_tensorflow_threads",
    "get_trainer",
    "shuffle_order",
]

NDArrays = list[np.ndarray]

DEFAULT_EVAL_BATCH_SIZE = 256


def configure_tensorflow_threads(intra_op: int | None = 1, inter_op: int | None = 1) -> bool:
    """Set TensorFlow's CPU thread pools; returns False if TF already started.

    TensorFlow sizes its pools to all cores by default. In a simulation that runs one
    client process per core this oversubscribes the CPU, and for the small models
    of cross-device FL a single thread per process is as fast or faster anyway.
    Must run before the first TensorFlow op of the process (e.g. at the top of the
    ClientApp module, or in the simulation worker before building the trainer);
    afterwards TensorFlow refuses the change and this returns False.
    """
    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:
        return False
    return True


def _threads_from_environment() -> None:
    value = os.environ.get("FEDLOOM_TF_THREADS", "").strip()
    if not value:
        return
    try:
        threads = int(value)
    except ValueError:
        raise ConfigError(
            f"FEDLOOM_TF_THREADS must be a positive integer; it is {value!r}."
        ) from None
    if threads < 1:
        raise ConfigError(f"FEDLOOM_TF_THREADS must be a positive integer; it is {value!r}.")
    configure_tensorflow_threads(threads, threads)


_threads_from_environment()

ModelSource = ModelSpec | keras.Model | Callable[[], keras.Model]


class KerasTrainer:
    """Owns one compiled Keras model and trains it with one graph call per update.

    Args:
        model: a :class:`~fedloom.models.ModelSpec`, a built ``keras.Model`` or a
            zero-argument callable returning one. The model must have a known input
            shape ``(None, *input_shape)`` and output ``(None, num_classes)`` class
            probabilities (softmax; or logits with ``from_logits=True``).
        momentum: SGD momentum ``m`` in ``[0, 1)``; 0 (default) is plain SGD.
        from_logits: the model outputs logits instead of softmax probabilities.

    A trainer is stateful (it holds the Keras variables), so calls are serialised
    with a lock; one trainer may serve any number of clients one after another,
    because every :meth:`fit`/:meth:`evaluate` starts by loading the weights it is
    given. Use :func:`get_trainer` to share one per thread of a process.
    """

    def __init__(
        self, model: ModelSource, *, momentum: float = 0.0, from_logits: bool = False
    ) -> None:
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(
                f"SGD momentum must be in [0, 1); received momentum={momentum}. "
                "Use 0 for plain SGD or a value such as 0.9."
            )
        self.spec: ModelSpec | None = model if isinstance(model, ModelSpec) else None
        if isinstance(model, ModelSpec):
            model = model.build()
        elif not isinstance(model, keras.Model):
            model = model()
            if not isinstance(model, keras.Model):
                raise ConfigError(
                    "the model builder must return a keras.Model; it returned "
                    f"{type(model).__name__}."
                )
        self.model: keras.Model = model
        self.momentum = momentum
        self.from_logits = bool(from_logits)
        self._lock = threading.RLock()

        try:
            input_shape = tuple(model.inputs[0].shape[1:])
            output_shape = tuple(model.outputs[0].shape)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(
                "KerasTrainer needs a model with a known input shape (a Sequential or "
                "functional model starting with keras.Input(shape=...)); the given "
                f"model {model.name!r} has none."
            ) from exc
        if any(d is None for d in input_shape) or len(output_shape) != 2:
            raise ConfigError(
                f"KerasTrainer needs a fixed input shape and a (batch, num_classes) "
                f"output; model {model.name!r} has input (None, *{input_shape}) and "
                f"output {output_shape}."
            )
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in input_shape)
        self.num_classes: int = int(output_shape[1])

        # Compiled once so that model.fit / model.evaluate also work for users;
        # fedloom's own loops below do not go through compile().
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=momentum),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
            metrics=["accuracy"],
        )

        self._variables = list(model.weights)  # Keras get_weights() order
        self._shapes = [tuple(int(d) for d in v.shape) for v in self._variables]
        self._dtypes = [
            np.dtype(keras.backend.standardize_dtype(v.dtype)) for v in self._variables
        ]
        self._trainable = [v.value for v in model.trainable_weights]
        self._velocity = (
            [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._trainable]
            if momentum > 0
            else []
        )
        self._initial_weights = [np.array(v.numpy(), copy=True) for v in self._variables]
        self._python_traces = {"fit": 0, "evaluate": 0}
        self._fit_fn = self._make_fit_fn()
        self._evaluate_fn = self._make_evaluate_fn()
        # Traced once here; calling the concrete graphs skips tf.function's per-call
        # signature matching (measured: 0.95 -> 0.55 ms per small client update).
        self._fit_graph = self._fit_fn.get_concrete_function()
        self._evaluate_graph = self._evaluate_fn.get_concrete_function()

    # ------------------------------------------------------------------ weights
    def initial_weights(self) -> NDArrays:
        """Copies of the weights the model was built with (its seeded initialisation).

        Unlike :meth:`get_weights`, the answer does not depend on what this (shared,
        cached) trainer trained before: use it as a run's starting global model.
        """
        return [w.copy() for w in self._initial_weights]

    def get_weights(self) -> NDArrays:
        """The model's current weights (the last ones loaded or trained) as numpy
        copies, in ``model.get_weights()`` order."""
        with self._lock:
            return [np.array(v.numpy(), copy=True) for v in self._variables]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Load weights (same order and shapes as :meth:`get_weights`)."""
        arrays = self._check_weights(weights)
        with self._lock:
            for variable, array in zip(self._variables, arrays):
                variable.assign(array)

    def _check_weights(self, weights: Sequence[np.ndarray]) -> NDArrays:
        arrays = [np.asarray(w) for w in weights]
        if len(arrays) != len(self._shapes) or any(
            a.shape != s for a, s in zip(arrays, self._shapes)
        ):
            raise ConfigError(
                f"Expected {len(self._shapes)} arrays with shapes {self._shapes} for "
                f"model {self.model.name!r}; received {len(arrays)} arrays with shapes "
                f"{[a.shape for a in arrays]}. Send the weights of the same model "
                "(same name, input_shape, num_classes and options)."
            )
        return [
            a if a.dtype == d else a.astype(d, copy=False)
            for a, d in zip(arrays, self._dtypes)
        ]

    # --------------------------------------------------------------------- data
    def _check_data(
        self, x: np.ndarray, y: np.ndarray, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if x.shape[1:] != self.input_shape:
            raise DataError(
                f"{what}: model {self.model.name!r} expects examples of shape "
                f"{self.input_shape}; received x with shape {x.shape}. Reshape the data "
                f"to (num_examples, *{self.input_shape})."
            )
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{what}: expected integer labels of shape ({len(x)},) for x of shape "
                f"{x.shape}; received y with shape {y.shape}. One-hot labels must be "
                "converted with argmax(axis=1)."
            )
        if len(x) == 0:
            raise DataError(f"{what}: received no examples (x has shape {x.shape}).")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.mod(y, 1) == 0):
                raise DataError(f"{what}: labels must be integers; received dtype {y.dtype}.")
        y = y.astype(np.int32, copy=False)
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= self.num_classes:
            raise DataError(
                f"{what}: labels must lie in [0, {self.num_classes - 1}] for a "
                f"{self.num_classes}-class model; received labels in [{low}, {high}]."
            )
        return x, y

    # ------------------------------------------------------------------ training
    def fit(
        self,
        weights: Sequence[np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        seed: int,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[NDArrays, dict[str, float]]:
        """One local update: load ``weights``, run SGD on ``(x, y)``, return the result.

        With ``validation=(x_val, y_val)`` the UPDATED model is also evaluated on it in
        the same graph call (no second call, no reloading of weights), adding
        ``val_loss`` and ``val_accuracy`` to the metrics.

        Args:
            weights: starting weights (the global model), ``get_weights()`` order.
            x: ``(N, *input_shape)`` features (cast to float32); ``y``: ``(N,)``
                integer labels in ``[0, num_classes)``.
            epochs: passes over the data (>= 1).
            batch_size: examples per SGD step (>= 1); the last batch of each epoch
                holds the remainder, so every example is used in every epoch.
            learning_rate: SGD step size (> 0).
            seed: seeds the shuffling; same seed and inputs give the same weights.

        Returns:
            ``(new_weights, metrics)``: float32 numpy copies in ``get_weights()``
            order, and ``{"train_loss", "train_accuracy"}`` as Python floats: the
            example-weighted mean loss and accuracy over the mini-batches of the
            LAST epoch, each measured on the batch before its SGD step (what
            ``model.fit`` reports for an epoch).
        """
        epochs, batch_size, learning_rate = _check_hyperparameters(
            epochs, batch_size, learning_rate
        )
        arrays = self._check_weights(weights)
        x, y = self._check_data(x, y, "fit")
        if validation is not None:
            x_val, y_val = self._check_data(*validation, "fit validation")
        else:
            x_val, y_val = x[:0], y[:0]
        n = len(x)
        order = shuffle_order(n, epochs, seed)
        with self._lock:
            outputs = self._fit_graph(
                arrays,
                x,
                y,
                order,
                np.int32(epochs),
                np.int32(batch_size),
                np.float32(learning_rate),
                x_val,
                y_val,
            )
            new_weights, loss_sum, correct, val_loss_sum, val_correct = outputs
            new_weights = [np.array(w, copy=True) for w in new_weights]
        metrics = {
            "train_loss": float(loss_sum) / n,
            "train_accuracy": float(correct) / n,
        }
        if validation is not None:
            metrics["val_loss"] = float(val_loss_sum) / len(x_val)
            metrics["val_accuracy"] = float(val_correct) / len(x_val)
        return new_weights, metrics

    def evaluate(
        self,
        weights: Sequence[np.ndarray] | None,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    ) -> tuple[float, float]:
        """Mean loss and accuracy of ``weights`` on ``(x, y)`` (Python floats).

        ``weights=None`` evaluates the weights currently loaded in the model.
        ``batch_size`` only bounds memory; the result does not depend on it.
        """
        batch_size = _positive_int("batch_size", batch_size)
        x, y = self._check_data(x, y, "evaluate")
        with self._lock:
            arrays = (
                self._check_weights(weights)
                if weights is not None
                else [v.numpy() for v in self._variables]
            )
            loss_sum, correct = self._evaluate_graph(arrays, x, y, np.int32(batch_size))
        n = len(x)
        return float(loss_sum) / n, float(correct) / n

    @property
    def tracing_count(self) -> dict[str, int]:
        """How often the fit/evaluate graphs were traced (1 each after first use)."""
        return dict(self._python_traces)

    # ------------------------------------------------------------------- graphs
    def _signature(self) -> tuple[list[tf.TensorSpec], tf.TensorSpec, tf.TensorSpec]:
        weights = [
            tf.TensorSpec(shape, tf.as_dtype(dtype))
            for shape, dtype in zip(self._shapes, self._dtypes)
        ]
        x = tf.TensorSpec((None, *self.input_shape), tf.float32)
        y = tf.TensorSpec((None,), tf.int32)
        return weights, x, y

    def _per_example(
        self, x: tf.Tensor, y: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-example cross-entropy and 0/1 correctness of one batch."""
        outputs = self.model(x, training=training)
        loss = keras.ops.sparse_categorical_crossentropy(y, outputs, from_logits=self.from_logits)
        hit = tf.cast(tf.equal(tf.argmax(outputs, axis=-1, output_type=tf.int32), y), tf.float32)
        return loss, hit

    def _load(self, arrays: list[tf.Tensor]) -> None:
        for variable, value in zip(self._variables, arrays):
            variable.assign(value)

    def _make_fit_fn(self):
        weight_specs, x_spec, y_spec = self._signature()
        scalar_int = tf.TensorSpec((), tf.int32)
        signature = [
            weight_specs,
            x_spec,
            y_spec,
            tf.TensorSpec((None,), tf.int32),  # order: epochs concatenated permutations
            scalar_int,  # epochs
            scalar_int,  # batch_size
            tf.TensorSpec((), tf.float32),  # learning rate
            x_spec,  # validation examples (may be empty)
            y_spec,
        ]
        trainable, velocity, momentum = self._trainable, self._velocity, self.momentum

        @tf.function(input_signature=signature, autograph=False)
        def fit_fn(weights, x, y, order, epochs, batch_size, learning_rate, x_val, y_val):
            self._python_traces["fit"] += 1  # runs only while tracing
            self._load(weights)
            for v in velocity:
                v.assign(tf.zeros_like(v))
            n = tf.shape(x)[0]
            num_batches = (n + batch_size - 1) // batch_size
            last_epoch = epochs - 1

            def step(i, loss_sum, correct):
                epoch, batch = i // num_batches, i % num_batches
                start = epoch * n + batch * batch_size
                stop = epoch * n + tf.minimum((batch + 1) * batch_size, n)
                index = order[start:stop]
                xb, yb = tf.gather(x, index), tf.gather(y, index)
                with tf.GradientTape() as tape:
                    loss, hit = self._per_example(xb, yb, training=True)
                    mean_loss = tf.reduce_mean(loss)
                    if self.model.losses:  # weight regularisers, if the model has any
                        mean_loss += tf.add_n(self.model.losses)
                grads = tape.gradient(mean_loss, trainable)
                if momentum > 0:
                    for v, g in zip(velocity, grads):
                        v.assign(momentum * v + g)
                    grads = [v.read_value() for v in velocity]
                for w, g in zip(trainable, grads):
                    w.assign_sub(learning_rate * g)
                in_last = tf.cast(tf.equal(epoch, last_epoch), tf.float32)
                return (
                    i + 1,
                    loss_sum + in_last * tf.reduce_sum(loss),
                    correct + in_last * tf.reduce_sum(hit),
                )

            _, loss_sum, correct = tf.while_loop(
                lambda i, *_: i < epochs * num_batches,
                step,
                (tf.constant(0), tf.constant(0.0), tf.constant(0.0)),
            )
            new_weights = [tf.identity(v.value) for v in self._variables]
            with tf.control_dependencies(new_weights):
                val_loss_sum, val_correct = self._evaluate_loaded(
                    x_val, y_val, tf.constant(DEFAULT_EVAL_BATCH_SIZE))
            return new_weights, loss_sum, correct, val_loss_sum, val_correct

        return fit_fn

    def _evaluate_loaded(self, x: tf.Tensor, y: tf.Tensor, batch_size: tf.Tensor):
        """Graph ops: summed loss and correct predictions of the loaded model on (x, y)."""
        n = tf.shape(x)[0]

        def step(start, loss_sum, correct):
            stop = tf.minimum(start + batch_size, n)
            loss, hit = self._per_example(x[start:stop], y[start:stop], training=False)
            return stop, loss_sum + tf.reduce_sum(loss), correct + tf.reduce_sum(hit)

        _, loss_sum, correct = tf.while_loop(
            lambda start, *_: start < n,
            step,
            (tf.constant(0), tf.constant(0.0), tf.constant(0.0)),
        )
        return loss_sum, correct

    def _make_evaluate_fn(self):
        weight_specs, x_spec, y_spec = self._signature()
        signature = [weight_specs, x_spec, y_spec, tf.TensorSpec((), tf.int32)]

        @tf.function(input_signature=signature, autograph=False)
        def evaluate_fn(weights, x, y, batch_size):
            self._python_traces["evaluate"] += 1
            self._load(weights)
            return self._evaluate_loaded(x, y, batch_size)

        return evaluate_fn


def shuffle_order(num_examples: int, epochs: int, seed: int) -> np.ndarray:
    """The example order of a local update: ``epochs`` permutations, concatenated.

    Row ``e`` of ``order.reshape(epochs, num_examples)`` is the visiting order of
    epoch ``e``; batch ``b`` of that epoch is ``row[b * batch_size:(b + 1) *
    batch_size]``. Drawn with ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(int(seed))
    ordered = np.tile(np.arange(num_examples, dtype=np.int32), (epochs, 1))
    return rng.permuted(ordered, axis=1).ravel()


def _positive_int(name: str, value: Any) -> int:
    try:
        as_int = int(value)
        ok = as_int == value and as_int >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a positive integer; received {name}={value!r}.")
    return as_int


def _check_hyperparameters(
    epochs: Any, batch_size: Any, learning_rate: Any
) -> tuple[int, int, float]:
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    try:
        lr = float(learning_rate)
    except (TypeError, ValueError):
        lr = float("nan")
    if not (lr > 0 and np.isfinite(lr)):
        raise ConfigError(
            f"learning_rate must be a positive finite number; received {learning_rate!r}."
        )
    return epochs, batch_size, lr


# One trainer per (thread, spec, momentum): the local engine's worker threads each train
# on their own replica (a trainer serialises its calls, so one shared trainer would
# serialise the workers). Entries of a finished thread go with its Thread object.
_TRAINERS: weakref.WeakKeyDictionary[threading.Thread, dict[tuple[ModelSpec, float], KerasTrainer]] = (
    weakref.WeakKeyDictionary())
_TRAINERS_LOCK = threading.Lock()


def get_trainer(spec: ModelSpec, *, momentum: float = 0.0) -> KerasTrainer:
    """This thread's trainer for ``(spec, momentum)``, built on first use.

    A Flower simulation worker serves many clients; with this cache it builds,
    compiles and traces the model once instead of once per client or round.
    Trainers never keep client state between calls (each call loads the weights
    it is given), so sharing is safe. Each thread gets its own trainer (a model
    replica), so the local engine's worker threads train concurrently; replicas of
    one spec are built from the same seed and compute the same results. The cache
    lives only as long as the process (and a replica as long as its thread): in a
    deployment every message starts a fresh ``flwr-clientapp`` process.
    """
    if not isinstance(spec, ModelSpec):
        raise ConfigError(
            f"get_trainer needs a fedloom.models.ModelSpec; received {type(spec).__name__}. "
            "Build a KerasTrainer directly for a model-builder callable."
        )
    key = (spec, float(momentum))
    with _TRAINERS_LOCK:  # also serialises model building (Keras/TF tracing) across threads
        trainers = _TRAINERS.setdefault(threading.current_thread(), {})
        trainer = trainers.get(key)
        if trainer is None:
            trainer = trainers[key] = KerasTrainer(spec, momentum=momentum)
        return trainer


def clear_trainer_cache() -> None:
    """Forget all cached trainers of every thread (their models are freed when
    unreferenced)."""
    with _TRAINERS_LOCK:
        _TRAINERS.clear()
