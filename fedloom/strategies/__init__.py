"""fedloom aggregation strategies for Flower.

Message API (``flwr.serverapp``, the current one) — importable from here::

    from fedloom.strategies import SimpleAverage, WeightedAverage, FederatedAveraging, Hybrid

Legacy API (``flwr.server.strategy``: ``NumPyClient`` projects, SecAgg+) — the same
names in ``fedloom.strategies.legacy``. Needs only numpy and flwr (no TensorFlow).

Both APIs' classes only translate Flower's types: the round itself (schedule, guards,
minimum of valid updates, sampling, reports, state) is owned by
:class:`~fedloom.strategies.round.RoundAggregator`, and the named methods' arguments
are written once, in :mod:`fedloom.strategies.methods`.
"""

from fedloom.strategies import legacy, methods
from fedloom.strategies.message_api import (
    FederatedAveraging,
    FedloomStrategy,
    Hybrid,
    Scaffold,
    SimpleAverage,
    WeightedAverage,
)
from fedloom.strategies.reporting import RoundReport
from fedloom.strategies.round import RoundAggregator

__all__ = [
    "FederatedAveraging",
    "FedloomStrategy",
    "Hybrid",
    "RoundAggregator",
    "RoundReport",
    "Scaffold",
    "SimpleAverage",
    "WeightedAverage",
    "legacy",
    "methods",
]
