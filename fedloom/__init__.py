"""fedloom: aggregation strategies, a fast Keras client and offline data for Flower.

The top-level package imports nothing heavy. Pick what you need:

- ``fedloom.aggregation``: the maths, pure numpy (no Flower import).
- ``fedloom.strategies``: Flower strategies (Message API); ``fedloom.strategies.legacy``
  for the legacy ``flwr.server.strategy`` API. Needs only numpy and flwr.
- ``fedloom.clients``: the Keras client (TensorFlow/Keras are imported there only).
- ``fedloom.data``: offline datasets and ``flwr-datasets`` partitioning.
"""

from fedloom.errors import FedloomError

__version__ = "0.1.0"

__all__ = ["FedloomError", "__version__"]
