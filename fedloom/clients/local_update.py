"""What a fedloom client does in a round, independent of the Flower API that asks.

:func:`train_on_client` and :func:`evaluate_on_client` hold the client logic that the
legacy ``NumPyClient`` (:mod:`fedloom.clients.numpy_client`) and the Message-API
``ClientApp`` (:mod:`fedloom.clients.client_app`) share; those two modules only
translate Flower's types to and from these functions.

Config keys read from the server's train config (Flower's spelling):

=================  =======  ==========================================
key                default  meaning
=================  =======  ==========================================
``local-epochs``   1        passes over the local training split
``batch-size``     32       examples per SGD step
``learning-rate``  0.1      SGD step size
``server-round``   0        round number (seeds this round's shuffle)
``proximal-mu``    0        FedProx's mu >= 0 (Li et al., MLSys 2020):
                            every step also descends
                            mu/2 ||w - w_global||^2; the key Flower's
                            own ``FedProx`` strategy sends
``client-momentum`` 0       client momentum beta in [0, 1) (0: off;
                            Karimireddy, He & Jaggi, ICML 2021): the
                            client sends ``w_global + m``, ``m`` its
                            running average of updates (needs per-client
                            state, see :func:`train_client_round`)
=================  =======  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from fedloom.clients.client_state import (
    ClientState,
    apply_client_momentum,
    check_client_momentum,
    matching_state,
    scaffold_correction,
    scaffold_variate_update,
)
from fedloom.clients.inputs import check_hyperparameters, check_proximal_mu, local_steps
from fedloom.clients.trainer import KerasTrainer
from fedloom.errors import ConfigError

__all__ = [
    "ClientSplits",
    "ClientState",
    "RoundResult",
    "SplitData",
    "TrainConfig",
    "derive_seed",
    "evaluate_on_client",
    "train_client_round",
    "train_on_client",
]

NDArrays = list[np.ndarray]


class SplitData(Protocol):
    """Anything with a client's train and validation split (e.g. ``fedloom.data.ClientData``).

    ``x_val``/``y_val`` may be ``None`` or empty when the client keeps no validation
    split.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None


@dataclass(frozen=True)
class ClientSplits:
    """A minimal :class:`SplitData` (what :class:`~fedloom.clients.KerasClient` keeps)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


@dataclass(frozen=True)
class TrainConfig:
    """The local training settings of one round, parsed from a Flower config."""

    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1
    server_round: int = 0
    proximal_mu: float = 0.0
    client_momentum: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> TrainConfig:
        """Read the keys of the module's table (missing ones take their defaults).

        Raises:
            ConfigError: a value out of its range, naming the key.
        """
        config = {} if config is None else config
        epochs, batch_size, learning_rate = check_hyperparameters(
            config.get("local-epochs", cls.local_epochs),
            config.get("batch-size", cls.batch_size),
            config.get("learning-rate", cls.learning_rate),
        )
        server_round = config.get("server-round", cls.server_round)
        try:
            server_round_int = int(server_round)
            ok = server_round_int == server_round and server_round_int >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(
                f"config 'server-round' must be a non-negative integer; received {server_round!r}."
            )
        proximal_mu = check_proximal_mu(config.get("proximal-mu", cls.proximal_mu))
        client_momentum = check_client_momentum(config.get("client-momentum", cls.client_momentum))
        return cls(epochs, batch_size, learning_rate, server_round_int, proximal_mu, client_momentum)

    @property
    def needs_state(self) -> bool:
        """Whether this round's training reads and writes per-client state."""
        return self.client_momentum > 0


@dataclass(frozen=True)
class RoundResult:
    """What :func:`train_client_round` returns.

    ``weights``: the weights to send (``get_weights()`` order); ``num_examples``: the
    training examples; ``metrics``: Python floats (see :func:`train_client_round`);
    ``state``: the client's state for its next round; ``control_delta``: SCAFFOLD's
    ``c_i+ - c_i`` per model array, ``None`` when the round carried no server variate.
    """

    weights: NDArrays
    num_examples: int
    metrics: dict[str, float]
    state: ClientState
    control_delta: NDArrays | None = None


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixing integers (e.g. a client seed and the server round).

    Uses ``numpy.random.SeedSequence``, so it is the same in every process and
    Python version (unlike ``hash`` of strings); nearby inputs give unrelated seeds.
    """
    entropy = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]  # SeedSequence wants >= 0
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _has_examples(x: Any) -> bool:
    return x is not None and len(x) > 0


def train_on_client(
    trainer: KerasTrainer,
    data: SplitData,
    weights: Sequence[np.ndarray],
    config: Mapping[str, Any] | None,
    *,
    seed: int = 0,
) -> tuple[NDArrays, int, dict[str, float]]:
    """:func:`train_client_round` for a client that keeps no state between rounds.

    Raises:
        ConfigError: the config asks for a method that needs per-client state
            (``client-momentum`` > 0).
    """
    cfg = TrainConfig.from_config(config)
    if cfg.needs_state:
        raise ConfigError(
            f"client-momentum={cfg.client_momentum} needs state kept per client between "
            "rounds; this client keeps none. Use make_client_app (state in the node's "
            "context.state) or give KerasClient the client_fn's context."
        )
    result = train_client_round(trainer, data, weights, cfg, seed=seed, state=ClientState())
    return result.weights, result.num_examples, result.metrics


def train_client_round(
    trainer: KerasTrainer,
    data: SplitData,
    weights: Sequence[np.ndarray],
    config: Mapping[str, Any] | TrainConfig | None,
    *,
    seed: int = 0,
    state: ClientState,
    server_variate: Sequence[np.ndarray] | None = None,
    client: str = "?",
) -> RoundResult:
    """One client update: local SGD from ``weights``, then a look at the validation split.

    The shuffle seed of the round is ``derive_seed(seed, server_round)``: rounds
    differ, and re-running the same experiment repeats exactly. ``state`` is what
    the client kept from its last round (see :mod:`fedloom.clients.client_state`; a
    stored array of another model's shapes is reset, logged with ``client``):

    * with ``client-momentum`` beta > 0 the weights sent are ``weights + m``;
    * with ``server_variate`` (SCAFFOLD's ``c``, ``get_weights()`` order) every
      local step is corrected by ``c - c_i`` and the result carries
      ``control_delta = c_i+ - c_i`` (option II).

    Returns:
        A :class:`RoundResult`. Its metrics: ``train_loss``/``train_accuracy``
        (example-weighted means over the last local epoch, see
        :meth:`KerasTrainer.fit`), ``val_loss``/``val_accuracy`` (the locally UPDATED
        model, before client momentum, on the client's validation split) and
        ``quality`` (= ``val_accuracy``, the client's held-out measure of its own
        update). A client without validation examples reports the updated model's
        loss and accuracy on its own training split as ``val_loss``/``val_accuracy``
        and ``quality`` instead (an optimistic estimate).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_config(config)
    weights = [np.asarray(w) for w in weights]
    client_variate = correction = None
    if server_variate is not None:
        if [np.shape(c) for c in server_variate] != [w.shape for w in weights]:
            raise ConfigError(
                f"the server's SCAFFOLD variate has shapes {[np.shape(c) for c in server_variate]}; "
                f"the model's arrays have {[w.shape for w in weights]}. Send 'scaffold-c' "
                "with the same keys and shapes as the model's arrays.")
        client_variate = matching_state(state.control_variate, weights, "SCAFFOLD variate c_i", client)
        correction = scaffold_correction(server_variate, client_variate, weights)
    has_val = _has_examples(data.x_val)
    local_weights, train_metrics = trainer.fit(
        weights,
        data.x_train,
        data.y_train,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=derive_seed(seed, cfg.server_round),
        validation=(data.x_val, data.y_val) if has_val else (data.x_train, data.y_train),
        proximal_mu=cfg.proximal_mu,
        correction=correction,
    )
    new_state, control_delta, sent = state, None, local_weights
    if server_variate is not None:
        steps = local_steps(len(data.x_train), cfg.local_epochs, cfg.batch_size)
        variate, control_delta = scaffold_variate_update(
            server_variate, client_variate, weights, local_weights, trainer.trainable_mask,
            steps=steps, learning_rate=cfg.learning_rate)
        new_state = replace(new_state, control_variate=variate)
    if cfg.client_momentum > 0:
        buffer = matching_state(state.momentum, weights, "client-momentum buffer", client)
        sent, momentum = apply_client_momentum(weights, local_weights, buffer, cfg.client_momentum)
        new_state = replace(new_state, momentum=momentum)
    metrics = {
        "train_loss": float(train_metrics["train_loss"]),
        "train_accuracy": float(train_metrics["train_accuracy"]),
        "val_loss": float(train_metrics["val_loss"]),
        "val_accuracy": float(train_metrics["val_accuracy"]),
        "quality": float(train_metrics["val_accuracy"]),
    }
    return RoundResult(sent, int(len(data.x_train)), metrics, new_state, control_delta)


def evaluate_on_client(
    trainer: KerasTrainer,
    data: SplitData,
    weights: Sequence[np.ndarray],
    config: Mapping[str, Any] | None = None,
) -> tuple[float, int, dict[str, float]]:
    """Loss and accuracy of ``weights`` on the validation split (else the train split).

    Returns ``(loss, num_examples, {"accuracy": accuracy})`` as Python types.
    """
    del config  # nothing to configure: evaluation batch size only bounds memory
    if _has_examples(data.x_val):
        x, y = data.x_val, data.y_val
    else:
        x, y = data.x_train, data.y_train
    loss, accuracy = trainer.evaluate(weights, x, y)
    return float(loss), int(len(x)), {"accuracy": float(accuracy)}
