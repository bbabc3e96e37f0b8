"""Keras model builders for the fedloom clients.

Every builder returns an *uncompiled* ``keras.Model`` whose last layer is a softmax,
so ``model(x)`` gives class probabilities of shape ``(batch, num_classes)``. The
matching loss is sparse categorical cross-entropy on integer labels with
``from_logits=False`` (Keras recovers the logits from the softmax op inside a graph,
so the loss stays numerically stable). :class:`fedloom.clients.KerasTrainer` compiles
the model with exactly that loss.

Weights are initialised deterministically from ``seed``: each layer gets its own
seeded Keras initialiser (Glorot-uniform kernels, zero biases, as Keras' defaults),
so the same ``(name, input_shape, num_classes, seed, options)`` always gives the same
initial weights, in any process, without touching global random state.

Keras is imported lazily (``import fedloom.models`` is cheap); the first call to
:func:`build_model` imports it with ``KERAS_BACKEND=tensorflow`` unless the
environment already chose a backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedloom.errors import ConfigError

if TYPE_CHECKING:
    import keras

__all__ = ["MODEL_NAMES", "ModelSpec", "build_model", "count_params"]


def _import_keras():  # noqa: ANN202 - returns the keras module
    """Import keras with fedloom's defaults (TensorFlow backend, quiet TF logs)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


class _Seeds:
    """Hands out one independent integer seed per layer, derived from a base seed."""

    def __init__(self, seed: int) -> None:
        self._sequence = np.random.SeedSequence(int(seed))

    def next(self) -> int:
        (child,) = self._sequence.spawn(1)
        # Keras seeds must fit a signed 32-bit int.
        return int(child.generate_state(1)[0] & 0x7FFFFFFF)


def _dense(keras, units: int, seeds: _Seeds, activation: str | None = None, name=None):
    return keras.layers.Dense(
        units,
        activation=activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.next()),
        bias_initializer="zeros",
        name=name,
    )


def _conv(keras, filters: int, kernel: int, seeds: _Seeds, name=None):
    return keras.layers.Conv2D(
        filters,
        kernel,
        padding="same",
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.next()),
        bias_initializer="zeros",
        name=name,
    )


def _image_layers(keras, name: str, input_shape: tuple[int, ...]) -> list:
    """Layers that turn the input into (H, W, C); refuses flat inputs."""
    if len(input_shape) == 3:
        return []
    if len(input_shape) == 2:  # (H, W) grey-scale images: add the channel axis
        return [keras.layers.Reshape((*input_shape, 1))]
    raise ConfigError(
        f"model {name!r} is a convolutional network and needs image inputs of shape "
        f"(height, width, channels) or (height, width); received input_shape="
        f"{input_shape}. Use model 'mlp' (or 'mcmahan_2nn') for flat feature vectors, "
        "or reshape the data to images."
    )


def _logreg(keras, input_shape, num_classes, seeds, **options):
    _no_options("logreg", options)
    return [
        keras.layers.Flatten(),
        _dense(keras, num_classes, seeds, "softmax", name="output"),
    ]


def _mlp(keras, input_shape, num_classes, seeds, hidden=(64, 64), **options):
    _no_options("mlp", options)
    hidden = _as_int_tuple("mlp", "hidden", hidden)
    layers = [keras.layers.Flatten()]
    layers += [_dense(keras, h, seeds, "relu", name=f"hidden_{i}") for i, h in enumerate(hidden)]
    layers.append(_dense(keras, num_classes, seeds, "softmax", name="output"))
    return layers


def _two_conv_layers(keras, name, input_shape, num_classes, seeds, *, filters, kernel, dense):
    """conv(filters[0], kernel) -> 2x2 max-pool -> conv(filters[1], kernel) -> 2x2 max-pool
    -> dense ReLU -> softmax: the shape of both CNNs below."""
    return [
        *_image_layers(keras, name, input_shape),
        _conv(keras, filters[0], kernel, seeds, name="conv_0"),
        keras.layers.MaxPooling2D(2),
        _conv(keras, filters[1], kernel, seeds, name="conv_1"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        _dense(keras, dense, seeds, "relu", name="dense"),
        _dense(keras, num_classes, seeds, "softmax", name="output"),
    ]


def _cnn(keras, input_shape, num_classes, seeds, **options):
    _no_options("cnn", options)
    return _two_conv_layers(keras, "cnn", input_shape, num_classes, seeds,
                            filters=(16, 32), kernel=3, dense=64)


def _mcmahan_2nn(keras, input_shape, num_classes, seeds, **options):
    """The MNIST "2NN" of McMahan et al. (2017), "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS: two fully connected hidden
    layers of 200 ReLU units; 199,210 parameters on 784 inputs and 10 classes."""
    _no_options("mcmahan_2nn", options)
    return _mlp(keras, input_shape, num_classes, seeds, hidden=(200, 200))


def _mcmahan_cnn(keras, input_shape, num_classes, seeds, **options):
    """The MNIST "CNN" of McMahan et al. (2017), "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS: 5x5 conv (32) -> 2x2 max-pool ->
    5x5 conv (64) -> 2x2 max-pool -> dense 512 ReLU -> softmax; 1,663,370 parameters
    for 28x28x1 inputs and 10 classes ("same" padding)."""
    _no_options("mcmahan_cnn", options)
    return _two_conv_layers(keras, "mcmahan_cnn", input_shape, num_classes, seeds,
                            filters=(32, 64), kernel=5, dense=512)


def _lstm(keras, units: int, seeds: _Seeds, return_sequences: bool, name: str, unroll: bool):
    return keras.layers.LSTM(
        units,
        return_sequences=return_sequences,
        unroll=unroll,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.next()),
        recurrent_initializer=keras.initializers.Orthogonal(seed=seeds.next()),
        bias_initializer="zeros",  # plus Keras' unit_forget_bias: forget-gate bias 1
        name=name,
    )


def _character_layers(keras, name, input_shape, num_classes, seeds, *, embedding, units,
                      vocabulary_size, unroll):
    """Embedding -> stacked LSTMs -> softmax over the next character.

    ``unroll`` builds the time steps as one straight graph instead of a loop: the same
    maths, about 1.6x faster per SGD step on CPU for 80 steps, a longer first trace."""
    if len(input_shape) != 1:
        raise ConfigError(
            f"model {name!r} reads sequences of token ids and needs input_shape "
            f"(sequence_length,); received input_shape={input_shape}. Use it with "
            "dataset=shakespeare (or another token dataset)."
        )
    vocabulary_size = num_classes if vocabulary_size is None else int(vocabulary_size)
    if vocabulary_size < 2:
        raise ConfigError(
            f"model {name!r} needs vocabulary_size >= 2; received {vocabulary_size}."
        )
    layers = [
        keras.layers.Embedding(
            vocabulary_size,
            int(embedding),
            embeddings_initializer=keras.initializers.RandomUniform(
                -0.05, 0.05, seed=seeds.next()),
            name="embedding",
        )
    ]
    for i, width in enumerate(units):
        last = i == len(units) - 1
        layers.append(_lstm(keras, width, seeds, return_sequences=not last, name=f"lstm_{i}",
                            unroll=bool(unroll)))
    layers.append(_dense(keras, num_classes, seeds, "softmax", name="output"))
    return layers


def _char_lstm(keras, input_shape, num_classes, seeds, embedding=8, units=(64,),
               vocabulary_size=None, unroll=True, **options):
    """A small next-character model, fast on CPU: 8-dim embedding -> one LSTM of 64
    -> softmax. ``units`` lists the LSTM widths (one layer each)."""
    _no_options("char_lstm", options)
    units = _as_int_tuple("char_lstm", "units", units)
    embedding = _as_int_tuple("char_lstm", "embedding", embedding)[0]
    return _character_layers(keras, "char_lstm", input_shape, num_classes, seeds,
                             embedding=embedding, units=units,
                             vocabulary_size=vocabulary_size, unroll=unroll)


def _mcmahan_lstm(keras, input_shape, num_classes, seeds, unroll=True, **options):
    """The Shakespeare LSTM of McMahan et al. (2017), "Communication-Efficient Learning
    of Deep Networks from Decentralized Data", AISTATS: characters embedded in 8
    dimensions -> 2 LSTM layers of 256 -> softmax with one unit per character;
    818,137 parameters with the 81 classes of ``dataset=shakespeare``. Option:
    ``unroll`` (see ``char_lstm``)."""
    _no_options("mcmahan_lstm", options)
    return _character_layers(keras, "mcmahan_lstm", input_shape, num_classes, seeds,
                             embedding=8, units=(256, 256), vocabulary_size=None,
                             unroll=unroll)


_BUILDERS: dict[str, Callable[..., list]] = {
    "logreg": _logreg,
    "mlp": _mlp,
    "cnn": _cnn,
    "mcmahan_2nn": _mcmahan_2nn,
    "mcmahan_cnn": _mcmahan_cnn,
    "char_lstm": _char_lstm,
    "mcmahan_lstm": _mcmahan_lstm,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
"""Names accepted by :func:`build_model`."""


def _no_options(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ConfigError(
            f"model {name!r} does not take {sorted(options)}. Remove them (only 'mlp' "
            "takes hidden=(...); 'char_lstm' takes embedding, units, vocabulary_size and unroll; "
            "'mcmahan_lstm' takes unroll)."
        )


def _as_int_tuple(name: str, key: str, value: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        out = (int(value),)
    if not out or any(v < 1 for v in out):
        raise ConfigError(
            f"model {name!r} needs {key} as a non-empty sequence of positive layer "
            f"widths, e.g. {key}=(64, 64); received {key}={value!r}."
        )
    return out


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int = 0,
    **options: Any,
) -> keras.Model:
    """Build an uncompiled Keras classifier with softmax outputs.

    Args:
        name: one of :data:`MODEL_NAMES`:
            ``"logreg"`` (flatten + softmax dense), ``"mlp"`` (option
            ``hidden=(64, 64)``, ReLU), ``"cnn"`` (3x3 conv 16 -> max-pool -> 3x3 conv
            32 -> max-pool -> dense 64; image inputs only), ``"mcmahan_2nn"`` and
            ``"mcmahan_cnn"`` (the two MNIST models of McMahan et al., 2017,
            "Communication-Efficient Learning of Deep Networks from Decentralized
            Data"), ``"char_lstm"`` (embedding 8 -> LSTM 64; options ``embedding``,
            ``units=(64,)``, ``vocabulary_size`` (default ``num_classes``) and
            ``unroll=True``) and
            ``"mcmahan_lstm"`` (embedding 8 -> 2 LSTMs of 256, the paper's
            Shakespeare model): next-token models for inputs ``(sequence_length,)``
            of token ids.
        input_shape: shape of one example without the batch axis, e.g. ``(64,)`` or
            ``(28, 28, 1)``. Convolutional models also accept ``(H, W)``.
        num_classes: number of classes ``C``; the output has shape ``(batch, C)``.
        seed: seeds every layer initialiser; same arguments give the same weights.
        **options: model-specific options (``mlp``: ``hidden``; ``char_lstm``:
            ``embedding``, ``units``, ``vocabulary_size``, ``unroll``;
            ``mcmahan_lstm``: ``unroll``).

    Raises:
        ConfigError: unknown name, bad options, or a convolutional model on flat
            inputs.
    """
    if name not in _BUILDERS:
        raise ConfigError(
            f"unknown model name {name!r}; expected one of {list(MODEL_NAMES)}."
        )
    input_shape = _as_shape(input_shape)
    if int(num_classes) < 2:
        raise ConfigError(
            f"a classifier needs num_classes >= 2; received num_classes={num_classes}."
        )
    keras = _import_keras()
    layers = _BUILDERS[name](keras, input_shape, int(num_classes), _Seeds(seed), **options)
    return keras.Sequential([keras.Input(shape=input_shape), *layers], name=name)


def _as_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError:
        shape = (int(input_shape),)
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(
            "input_shape must be the shape of one example without the batch axis, "
            f"e.g. (64,) or (28, 28, 1); received {input_shape!r}."
        )
    return shape


def count_params(model: keras.Model) -> int:
    """Total number of weights (trainable and not) of a built model."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def _freeze(value: Any) -> Any:
    """Make an option value hashable (lists become tuples, recursively)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


@dataclass(frozen=True)
class ModelSpec:
    """A hashable description of a model: what :func:`build_model` needs.

    Two equal specs build models with identical architecture and initial weights,
    which is what :func:`fedloom.clients.get_trainer` caches on.

    Example:
        ``ModelSpec("mlp", (64,), 10, seed=0, options={"hidden": (64, 64)})``
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    seed: int = 0
    options: Any = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", _as_shape(self.input_shape))
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "seed", int(self.seed))
        options = self.options
        if isinstance(options, Mapping):
            options = options.items()
        object.__setattr__(
            self, "options", tuple(sorted((str(k), _freeze(v)) for k, v in options))
        )
        if self.name not in _BUILDERS:
            raise ConfigError(
                f"unknown model name {self.name!r}; expected one of {list(MODEL_NAMES)}."
            )

    def build(self) -> keras.Model:
        """Build the (uncompiled) model this spec describes."""
        return build_model(
            self.name, self.input_shape, self.num_classes, self.seed, **dict(self.options)
        )
