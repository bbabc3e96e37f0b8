"""The TensorFlow graphs of :class:`~fedloom.clients.KerasTrainer`: a whole local update,
and an evaluation, each one ``tf.function`` call.

Every graph has an ``input_signature`` with a ``None`` batch dimension and takes the
learning rate, epochs, batch size and proximal weight as tensors, so it is traced once
per trainer and never again across rounds, clients, data sizes or settings.

The local update (:meth:`UpdateGraphs.fit_function`) loads the received weights
``w0``, then for every mini-batch ``b`` (``order`` gives the batches, see
:func:`fedloom.clients.trainer.shuffle_order`) takes one SGD step on the trainable
weights ``w``::

    g = grad(mean cross-entropy of b + regularisation losses)(w)
        + mu * (w - w0)          # FedProx's proximal term mu/2 ||w - w0||^2
        + correction             # SCAFFOLD's c - c_i (zero without)
    v = m * v + g;  w = w - lr * v      # m = 0: plain SGD (v = g)

The proximal term is FedProx's (Li et al., "Federated Optimization in Heterogeneous
Networks", MLSys 2020) and the correction SCAFFOLD's (Karimireddy et al., "SCAFFOLD:
Stochastic Controlled Averaging for Federated Learning", ICML 2020). Both live in a
second graph (``extra_terms=True``), traced only when a round uses one of them, so a
plain update pays nothing for them.
"""

from __future__ import annotations

from typing import Any

from fedloom.clients.tensorflow_setup import import_tensorflow

__all__ = ["DEFAULT_EVAL_BATCH_SIZE", "UpdateGraphs"]

DEFAULT_EVAL_BATCH_SIZE = 256


class UpdateGraphs:
    """Builds the fit and evaluate ``tf.function``s of one compiled Keras model.

    Args:
        model: a built ``keras.Model`` with output ``(batch, num_classes)``.
        input_shape, input_dtype: one example's shape and the dtype fed to the model
            (float32, or int32 for integer token sequences).
        momentum: SGD momentum in ``[0, 1)``; the velocity restarts at zero in
            every local update, as a freshly built optimizer would.
        from_logits: the model outputs logits rather than softmax probabilities.
        traces: a dict counting Python traces per graph name (for tests).
    """

    def __init__(
        self, model: Any, input_shape: tuple[int, ...], input_dtype: Any, *,
        momentum: float, from_logits: bool, traces: dict[str, int],
    ) -> None:
        tf, _ = import_tensorflow()
        self.model = model
        self.momentum = float(momentum)
        self.from_logits = bool(from_logits)
        self.traces = traces
        self.variables = list(model.weights)  # Keras get_weights() order
        ids = [id(v) for v in self.variables]
        self.trainable_index = [ids.index(id(v)) for v in model.trainable_weights]
        self.trainable = [v.value for v in model.trainable_weights]
        self.velocity = (
            [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.trainable]
            if self.momentum > 0 else []
        )
        self._weight_specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.variables]
        self._trainable_specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.trainable]
        self._x_spec = tf.TensorSpec((None, *input_shape), tf.as_dtype(input_dtype))
        self._y_spec = tf.TensorSpec((None,), tf.int32)

    # ---------------------------------------------------------------- pieces
    def _per_example(self, x, y, training: bool):
        """Per-example cross-entropy, 0/1 correctness and the regularisation term of
        one batch (the sum of ``model.losses``: weight and activity regularisers,
        ``add_loss`` terms; 0 without), the term Keras adds to every batch's loss."""
        tf, keras = import_tensorflow()
        outputs = self.model(x, training=training)
        loss = keras.ops.sparse_categorical_crossentropy(y, outputs, from_logits=self.from_logits)
        hit = tf.cast(tf.equal(tf.argmax(outputs, axis=-1, output_type=tf.int32), y), tf.float32)
        extra = self.model.losses
        regularisation = tf.add_n([tf.cast(t, tf.float32) for t in extra]) if extra else tf.zeros(())
        return loss, hit, regularisation

    def _load(self, arrays) -> None:
        for variable, value in zip(self.variables, arrays):
            variable.assign(value)

    def _evaluate_loaded(self, x, y, batch_size):
        """Graph ops: summed loss and correct predictions of the loaded model on (x, y)."""
        tf, _ = import_tensorflow()
        n = tf.shape(x)[0]

        def step(start, loss_sum, correct):
            stop = tf.minimum(start + batch_size, n)
            loss, hit, regularisation = self._per_example(
                x[start:stop], y[start:stop], training=False)
            batch_loss = tf.reduce_sum(loss) + tf.cast(stop - start, tf.float32) * regularisation
            return stop, loss_sum + batch_loss, correct + tf.reduce_sum(hit)

        _, loss_sum, correct = tf.while_loop(
            lambda start, *_: start < n, step,
            (tf.constant(0), tf.constant(0.0), tf.constant(0.0)),
        )
        return loss_sum, correct

    # ---------------------------------------------------------------- graphs
    def fit_function(self, *, extra_terms: bool):
        """``fit(weights, x, y, order, epochs, batch_size, lr, x_val, y_val[, mu,
        corrections]) -> (new_weights, loss_sum, correct, val_loss_sum, val_correct)``.

        ``order``: ``(epochs * N,)`` int32 example indices, epoch after epoch. Sums are
        over the LAST epoch's batches (each measured before its step) and over the
        validation examples (measured after the update). With ``extra_terms``: ``mu``
        (float32 scalar) and ``corrections`` (one tensor per trainable weight, in
        ``model.trainable_weights`` order) enter every step as the module docstring
        shows.
        """
        tf, _ = import_tensorflow()
        scalar_int = tf.TensorSpec((), tf.int32)
        signature = [
            self._weight_specs, self._x_spec, self._y_spec, tf.TensorSpec((None,), tf.int32),
            scalar_int, scalar_int, tf.TensorSpec((), tf.float32), self._x_spec, self._y_spec,
        ]
        if extra_terms:
            signature += [tf.TensorSpec((), tf.float32), self._trainable_specs]
        name = "fit_extra_terms" if extra_terms else "fit"
        trainable, velocity, momentum = self.trainable, self.velocity, self.momentum

        def body(weights, x, y, order, epochs, batch_size, learning_rate, x_val, y_val,
                 mu, corrections):
            self.traces[name] = self.traces.get(name, 0) + 1  # runs only while tracing
            self._load(weights)
            anchors = [weights[i] for i in self.trainable_index]
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
                    loss, hit, regularisation = self._per_example(xb, yb, training=True)
                    mean_loss = tf.reduce_mean(loss) + regularisation
                grads = tape.gradient(mean_loss, trainable)
                if extra_terms:
                    grads = [g + mu * (w - w0) + c
                             for g, w, w0, c in zip(grads, trainable, anchors, corrections)]
                if momentum > 0:
                    for v, g in zip(velocity, grads):
                        v.assign(momentum * v + g)
                    grads = [v.read_value() for v in velocity]
                for w, g in zip(trainable, grads):
                    w.assign_sub(learning_rate * g)
                in_last = tf.cast(tf.equal(epoch, last_epoch), tf.float32)
                return (
                    i + 1,
                    loss_sum + in_last * tf.cast(stop - start, tf.float32) * mean_loss,
                    correct + in_last * tf.reduce_sum(hit),
                )

            _, loss_sum, correct = tf.while_loop(
                lambda i, *_: i < epochs * num_batches, step,
                (tf.constant(0), tf.constant(0.0), tf.constant(0.0)),
            )
            new_weights = [tf.identity(v.value) for v in self.variables]
            with tf.control_dependencies(new_weights):
                val_loss_sum, val_correct = self._evaluate_loaded(
                    x_val, y_val, tf.constant(DEFAULT_EVAL_BATCH_SIZE))
            return new_weights, loss_sum, correct, val_loss_sum, val_correct

        if extra_terms:
            return tf.function(body, input_signature=signature, autograph=False)

        def plain(weights, x, y, order, epochs, batch_size, learning_rate, x_val, y_val):
            return body(weights, x, y, order, epochs, batch_size, learning_rate, x_val, y_val,
                        None, None)

        return tf.function(plain, input_signature=signature, autograph=False)

    def evaluate_function(self):
        """``evaluate(weights, x, y, batch_size) -> (loss_sum, correct)``."""
        tf, _ = import_tensorflow()
        signature = [self._weight_specs, self._x_spec, self._y_spec, tf.TensorSpec((), tf.int32)]

        @tf.function(input_signature=signature, autograph=False)
        def evaluate_fn(weights, x, y, batch_size):
            self.traces["evaluate"] = self.traces.get("evaluate", 0) + 1
            self._load(weights)
            return self._evaluate_loaded(x, y, batch_size)

        return evaluate_fn
