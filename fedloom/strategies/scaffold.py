"""SCAFFOLD's server control variate (Karimireddy et al., "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", ICML 2020, Algorithm 1).

The server keeps ``c``, one array per model array (the model's shapes; zero at first).
Every train message carries it (ArrayRecord :data:`SCAFFOLD_RECORD`); each client
corrects its local steps by ``c - c_i`` and replies with ``delta_c_i = c_i+ - c_i``
(ArrayRecord :data:`SCAFFOLD_DELTA_RECORD`, option II, see
``fedloom.clients.client_state``). After the round the server sets

    c <- c + (|S| / N) * mean_{i in S} delta_c_i   (= c + (1/N) sum_{i in S} delta_c_i)

with ``S`` the clients whose updates made the new model and ``N`` the number of
nodes. The model itself is updated by the pipeline (FedAvg's weighted mean and server
step; the paper's ``x <- x + eta_g * mean(delta_y)`` is the plain mean with server
learning rate ``eta_g``). Pure numpy, no Flower import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SCAFFOLD_RECORD", "SCAFFOLD_DELTA_RECORD", "ServerControlVariate"]

#: train message: the server's control variate ``c`` (same keys as the model)
SCAFFOLD_RECORD = "scaffold-c"
#: train reply: the client's ``c_i+ - c_i`` (same keys as the model)
SCAFFOLD_DELTA_RECORD = "scaffold-delta-c"


class ServerControlVariate:
    """The server's ``c``: float32 arrays of the model's shapes (integer model arrays
    get a float32 zero array that stays zero: clients neither correct nor report them).

    Attributes:
        variate: the arrays of ``c``, or ``None`` until :meth:`ensure` saw the model.
    """

    def __init__(self) -> None:
        self.variate: list[np.ndarray] | None = None

    def ensure(self, model: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``c``, set to zeros like ``model`` first if unset or of other shapes."""
        shapes = [np.shape(w) for w in model]
        if self.variate is None or [v.shape for v in self.variate] != shapes:
            self.variate = [np.zeros(shape, np.float32) for shape in shapes]
        return self.variate

    def check_delta(self, delta: Sequence[np.ndarray]) -> tuple[str, str] | None:
        """``(reason, detail)`` why ``delta`` (one client's ``delta_c``) cannot be used
        (reasons ``malformed`` or ``non_finite``, see ``checks.REASONS``); ``None`` if it
        can."""
        if self.variate is None:
            return "malformed", "the server has no control variate yet"
        if len(delta) != len(self.variate):
            return "malformed", f"delta_c has {len(delta)} arrays; the model has {len(self.variate)}"
        for index, (d, c) in enumerate(zip(delta, self.variate)):
            if np.shape(d) != c.shape:
                return "malformed", f"delta_c array {index} has shape {np.shape(d)}; expected {c.shape}"
            if not np.issubdtype(np.asarray(d).dtype, np.floating):
                return "malformed", f"delta_c array {index} has dtype {np.asarray(d).dtype}; expected floats"
            if not np.all(np.isfinite(d)):
                return "non_finite", f"delta_c array {index} contains NaN or Inf"
        return None

    def update(self, deltas: Sequence[Sequence[np.ndarray]], num_nodes: int) -> None:
        """``c += (1 / num_nodes) * sum(deltas)`` (``deltas``: the used clients'
        ``delta_c``, checked by :meth:`check_delta`), summed in float64 in the order
        given, stored as float32. No deltas: ``c`` is unchanged.

        Raises:
            ValueError: ``num_nodes`` < the number of deltas (``N`` counts every node).
        """
        if not deltas or self.variate is None:
            return
        if num_nodes < len(deltas):
            raise ValueError(
                f"SCAFFOLD's c update needs N (the number of nodes) >= |S| = {len(deltas)}; "
                f"got N = {num_nodes}.")
        for index, current in enumerate(self.variate):
            total = np.zeros(current.shape, np.float64)
            for delta in deltas:
                total += np.asarray(delta[index], dtype=np.float64)
            self.variate[index] = (current.astype(np.float64) + total / num_nodes).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """``{"c": [arrays]}`` (none until set), for checkpoints."""
        return {} if self.variate is None else {"c": [v.copy() for v in self.variate]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        arrays = state.get("c")
        self.variate = None if arrays is None else [np.asarray(a, np.float32).copy() for a in arrays]
