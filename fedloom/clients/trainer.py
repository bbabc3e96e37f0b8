"""The one Keras training core shared by both Flower client APIs.

Why this exists: Flower's TensorFlow quickstart builds and compiles a new model and
calls ``model.fit`` for every client update. On the small local datasets of
cross-device FL (10-100 examples, a few mini-batches) almost all of that time is
Keras overhead, not arithmetic: building and compiling the model, then
``model.fit``'s data adapter, callbacks and epoch iterator (and a first-call graph
trace). :class:`KerasTrainer` instead

* builds and compiles the model once (and :func:`fedloom.clients.get_trainer` keeps
  one trainer per model spec per process, so a simulation worker serving many clients
  builds once);
* runs a whole local update -- load the received weights, all epochs, all
  mini-batches, plain SGD (optionally with momentum, FedProx's proximal term and
  SCAFFOLD's correction) -- in ONE call of a ``tf.function`` with a
  ``tf.while_loop`` over mini-batches, and returns the new weights from the same
  call (the graphs: :mod:`fedloom.clients.update_graphs`);
* gives that function an ``input_signature`` with a ``None`` batch dimension and the
  learning rate, epochs and batch size as tensor arguments, so it is traced once per
  trainer and never retraced across rounds, clients, data sizes or learning rates
  (see :attr:`KerasTrainer.tracing_count`).

The maths is the usual mini-batch SGD (the exact step: :mod:`~fedloom.clients.update_graphs`):
each epoch visits every example once in a fresh random order drawn from ``seed``, in
batches of ``batch_size``, the last one possibly smaller (no example is dropped).

Inputs are float32, or int32 when the model's input is an integer tensor (token
sequences for an ``Embedding`` layer, e.g. next-character prediction).

Importing this module does not import TensorFlow; building a trainer does, and sets
TensorFlow up first (:func:`fedloom.clients.tensorflow_setup.configure_tensorflow`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedloom.clients.inputs import (
    ExampleSpec,
    check_examples,
    check_hyperparameters,
    check_proximal_mu,
    local_steps,
    positive_int,
    shuffle_order,
)
from fedloom.clients.tensorflow_setup import (  # configure_tensorflow_threads: re-exported
    configure_tensorflow,
    configure_tensorflow_threads,
    import_tensorflow,
)
from fedloom.clients.update_graphs import DEFAULT_EVAL_BATCH_SIZE, UpdateGraphs
from fedloom.errors import ConfigError
from fedloom.models import ModelSpec

if TYPE_CHECKING:
    import keras

__all__ = [
    "KerasTrainer",
    "ModelSpec",
    "configure_tensorflow_threads",
    "local_steps",
    "shuffle_order",
]

NDArrays = list[np.ndarray]

class KerasTrainer:
    """Owns one compiled Keras model and trains it with one graph call per update.

    Args:
        model: a :class:`~fedloom.models.ModelSpec`, a built ``keras.Model`` or a
            zero-argument callable returning one. The model must have a known input
            shape ``(None, *input_shape)`` (float, or integer for token sequences) and
            output ``(None, num_classes)`` class probabilities (softmax; or logits
            with ``from_logits=True``).
        momentum: SGD momentum ``m`` in ``[0, 1)``; 0 (default) is plain SGD.
        from_logits: the model outputs logits instead of softmax probabilities.
        gpu_memory_growth: passed to :func:`configure_tensorflow` if this process has
            not configured TensorFlow yet (on by default; no effect without a GPU).

    A trainer is stateful (it holds the Keras variables), so calls are serialised
    with a lock; one trainer may serve any number of clients one after another,
    because every :meth:`fit`/:meth:`evaluate` starts by loading the weights it is
    given. Use :func:`fedloom.clients.get_trainer` to share one per process.
    """

    def __init__(
        self,
        model: ModelSpec | keras.Model | Callable[[], keras.Model],
        *,
        momentum: float = 0.0,
        from_logits: bool = False,
        gpu_memory_growth: bool = True,
    ) -> None:
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(
                f"SGD momentum must be in [0, 1); received momentum={momentum}. "
                "Use 0 for plain SGD or a value such as 0.9."
            )
        configure_tensorflow(gpu_memory_growth=gpu_memory_growth)  # once per process
        _, keras = import_tensorflow()
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
            input_dtype = np.dtype(keras.backend.standardize_dtype(model.inputs[0].dtype))
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
        self.input_dtype = np.dtype(np.int32 if input_dtype.kind in "iu" else np.float32)
        self.num_classes: int = int(output_shape[1])
        self._example_spec = ExampleSpec(
            model.name, self.input_shape, self.input_dtype, self.num_classes)

        # Compiled once so that model.fit / model.evaluate also work for users;
        # fedloom's own loops do not go through compile().
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
        self._initial_weights = [np.array(v.numpy(), copy=True) for v in self._variables]
        self._python_traces = {"fit": 0, "evaluate": 0}
        self._graphs = UpdateGraphs(
            model, self.input_shape, self.input_dtype, momentum=momentum,
            from_logits=self.from_logits, traces=self._python_traces,
        )
        self._fit_fn = self._graphs.fit_function(extra_terms=False)
        self._evaluate_fn = self._graphs.evaluate_function()
        # Traced once here; calling the concrete graphs skips tf.function's per-call
        # signature matching, which costs about as much as a small update itself.
        self._fit_graph = self._fit_fn.get_concrete_function()
        self._evaluate_graph = self._evaluate_fn.get_concrete_function()
        self._fit_extra_graph = None  # traced on first use of proximal_mu / correction

    @property
    def trainable_mask(self) -> list[bool]:
        """For each array of :meth:`get_weights`: does SGD train it?"""
        trainable = set(self._graphs.trainable_index)
        return [i in trainable for i in range(len(self._variables))]

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

    def _check_weights(self, weights: Sequence[np.ndarray], what: str = "weights") -> NDArrays:
        arrays = [np.asarray(w) for w in weights]
        if len(arrays) != len(self._shapes) or any(
            a.shape != s for a, s in zip(arrays, self._shapes)
        ):
            raise ConfigError(
                f"Expected {len(self._shapes)} arrays with shapes {self._shapes} for "
                f"model {self.model.name!r}; received {len(arrays)} arrays with shapes "
                f"{[a.shape for a in arrays]} as {what}. Send the weights of the same model "
                "(same name, input_shape, num_classes and options)."
            )
        return [
            a if a.dtype == d else a.astype(d, copy=False)
            for a, d in zip(arrays, self._dtypes)
        ]

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
        proximal_mu: float = 0.0,
        correction: Sequence[np.ndarray] | None = None,
    ) -> tuple[NDArrays, dict[str, float]]:
        """One local update: load ``weights``, run SGD on ``(x, y)``, return the result.

        With ``validation=(x_val, y_val)`` the UPDATED model is also evaluated on it in
        the same graph call (no second call, no reloading of weights), adding
        ``val_loss`` and ``val_accuracy`` to the metrics.

        Args:
            weights: starting weights (the global model), ``get_weights()`` order.
            x: ``(N, *input_shape)`` features; ``y``: ``(N,)`` integer labels in
                ``[0, num_classes)``.
            epochs: passes over the data (>= 1).
            batch_size: examples per SGD step (>= 1); the last batch of each epoch
                holds the remainder, so every example is used in every epoch.
            learning_rate: SGD step size (> 0).
            seed: seeds the shuffling; same seed and inputs give the same weights.
            proximal_mu: FedProx's ``mu >= 0`` (Li et al., MLSys 2020): every step
                also descends ``mu/2 * ||w - weights||^2`` over the trainable
                weights, which keeps the update near the global model.
            correction: SCAFFOLD's ``c - c_i`` (Karimireddy et al., ICML 2020), one
                array per weight in ``get_weights()`` order, added to every step's
                gradient of the trainable weights (other entries are ignored).

        Returns:
            ``(new_weights, metrics)``: float32 numpy copies in ``get_weights()``
            order, and ``{"train_loss", "train_accuracy"}`` as Python floats: the
            example-weighted mean loss and accuracy over the mini-batches of the
            LAST epoch, each measured on the batch before its SGD step (what
            ``model.fit`` reports for an epoch). Every loss fedloom reports is
            cross-entropy plus the model's regularisation losses (``model.losses``),
            as Keras reports it; FedProx's proximal term is not part of it.
        """
        epochs, batch_size, learning_rate = check_hyperparameters(
            epochs, batch_size, learning_rate
        )
        mu = check_proximal_mu(proximal_mu)
        arrays = self._check_weights(weights)
        x, y = check_examples(x, y, self._example_spec, "fit")
        if validation is not None:
            x_val, y_val = check_examples(*validation, self._example_spec, "fit validation")
        else:
            x_val, y_val = x[:0], y[:0]
        n = len(x)
        order = shuffle_order(n, epochs, seed)
        inputs = [arrays, x, y, order, np.int32(epochs), np.int32(batch_size),
                  np.float32(learning_rate), x_val, y_val]
        with self._lock:
            if mu > 0 or correction is not None:
                if correction is None:
                    corrections = [np.zeros_like(arrays[i]) for i in self._graphs.trainable_index]
                else:
                    full = self._check_weights(correction, "correction")
                    corrections = [full[i] for i in self._graphs.trainable_index]
                if self._fit_extra_graph is None:
                    function = self._graphs.fit_function(extra_terms=True)
                    self._fit_extra_graph = function.get_concrete_function()
                outputs = self._fit_extra_graph(*inputs, np.float32(mu), corrections)
            else:
                outputs = self._fit_graph(*inputs)
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

        The loss is what ``model.evaluate`` reports: cross-entropy plus the model's
        regularisation losses, averaged over examples. ``weights=None`` evaluates the
        weights currently loaded in the model. ``batch_size`` only bounds memory; the
        result does not depend on it.
        """
        batch_size = positive_int("batch_size", batch_size)
        x, y = check_examples(x, y, self._example_spec, "evaluate")
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
        """How often each graph was traced (1 each after first use): ``fit``,
        ``evaluate``, and ``fit_extra_terms`` once FedProx or SCAFFOLD was used."""
        return dict(self._python_traces)
