"""The fedloom Keras client for Flower's legacy API (``flwr.client.NumPyClient``).

Use it from a ``client_fn`` with the legacy strategies (``flwr.server.strategy``,
``fedloom.strategies.legacy``), including SecAgg+, which exists only there::

    from fedloom.clients import KerasClient, get_trainer
    from fedloom.models import ModelSpec

    SPEC = ModelSpec("mlp", (64,), 10)

    def client_fn(context):
        pid = int(context.node_config["partition-id"])
        data = load_my_partition(pid)            # x_train, y_train, x_val, y_val
        return KerasClient(get_trainer(SPEC), data.x_train, data.y_train,
                           data.x_val, data.y_val, seed=pid).to_client()

The training itself is :func:`fedloom.clients.local_update.train_on_client`, the same
code the Message-API ``ClientApp`` runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient

from fedloom.clients.client_app import load_client_state, store_client_state
from fedloom.clients.local_update import (
    ClientSplits,
    TrainConfig,
    evaluate_on_client,
    train_client_round,
    train_on_client,
)
from fedloom.clients.trainer import KerasTrainer

__all__ = ["KerasClient"]


class KerasClient(NumPyClient):
    """A ``NumPyClient`` over a shared :class:`~fedloom.clients.KerasTrainer`.

    Args:
        trainer: the (typically process-wide, see ``get_trainer``) trainer.
        x_train, y_train: the local training split, ``(N, *input_shape)`` and
            ``(N,)`` integer labels.
        x_val, y_val: the local validation split (``None`` or empty if the client
            keeps none; evaluation and ``quality`` then fall back to the training
            split, see :meth:`fit`).
        seed: this client's seed; the shuffle of round ``r`` uses
            ``derive_seed(seed, r)``. Give every client a different one (e.g. its
            partition id).
        context: the ``client_fn``'s context. Flower builds a new client for every
            message, so state between rounds (the ``client-momentum`` buffer) is
            kept in ``context.state``, as the Message-API client does; without a
            context, a config that needs state is refused.
    """

    def __init__(
        self,
        trainer: KerasTrainer,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        *,
        seed: int = 0,
        context: Context | None = None,
    ) -> None:
        self.trainer = trainer
        self.data = ClientSplits(x_train, y_train, x_val, y_val)
        self.seed = int(seed)
        self.client_context = context

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """The trainer's current weights (e.g. freshly initialised ones)."""
        return self.trainer.get_weights()

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        """Train locally from ``parameters``.

        Reads ``local-epochs`` (1), ``batch-size`` (32), ``learning-rate`` (0.1),
        ``server-round`` (0), ``proximal-mu`` (0) and ``client-momentum`` (0; needs
        the ``context`` argument) from ``config`` (see
        :mod:`fedloom.clients.local_update`). SCAFFOLD needs the Message API (its
        variates travel as extra ArrayRecords). Returns ``(new_weights,
        num_train_examples, metrics)`` with Python-float metrics ``train_loss``,
        ``train_accuracy`` (last local epoch), ``val_loss``, ``val_accuracy`` (the
        updated model on the validation split) and ``quality`` (= ``val_accuracy``).
        A client without validation examples uses the updated model's accuracy (and
        loss) on its training split for ``quality`` and the ``val_*`` metrics.
        """
        context = self.client_context
        cfg = TrainConfig.from_config(config)
        if context is None or not cfg.needs_state:
            return train_on_client(self.trainer, self.data, parameters, config, seed=self.seed)
        result = train_client_round(
            self.trainer, self.data, parameters, cfg, seed=self.seed,
            state=load_client_state(context), client=str(context.node_id))
        store_client_state(context, result.state)
        return result.weights, result.num_examples, result.metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        """``(loss, num_examples, {"accuracy": ...})`` on the validation split
        (the training split if there is none)."""
        return evaluate_on_client(self.trainer, self.data, parameters, config)
