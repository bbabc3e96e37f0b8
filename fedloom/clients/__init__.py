"""The fast Keras client: one training core, two Flower client APIs.

- :class:`KerasTrainer` / :func:`get_trainer` (``trainer.py``): builds and compiles a
  model once per process and runs a whole local update in one ``tf.function`` call.
- :func:`train_on_client` / :func:`evaluate_on_client` (``local_update.py``): what a
  client does in a round, API-independent.
- :class:`KerasClient` (``numpy_client.py``): legacy ``flwr.client.NumPyClient``.
- :func:`make_client_app` (``client_app.py``): Message-API ``flwr.clientapp.ClientApp``.

Importing this package imports TensorFlow and Keras (``KERAS_BACKEND=tensorflow``
unless set). Set ``FEDLOOM_TF_THREADS=N`` in the environment to cap TensorFlow at N
intra-op and N inter-op threads per process (recommended: 1 when a simulation runs
one client process per core).
"""

from fedloom.clients.trainer import (
    KerasTrainer,
    clear_trainer_cache,
    configure_tensorflow_threads,
    get_trainer,
)
from fedloom.clients.local_update import (  # isort: skip - after trainer (env setup)
    ClientSplits,
    TrainConfig,
    derive_seed,
    evaluate_on_client,
    train_on_client,
)
from fedloom.clients.numpy_client import KerasClient  # isort: skip
from fedloom.clients.client_app import make_client_app  # isort: skip
from fedloom.models import ModelSpec, build_model

__all__ = [
    "ClientSplits",
    "KerasClient",
    "KerasTrainer",
    "ModelSpec",
    "TrainConfig",
    "build_model",
    "clear_trainer_cache",
    "configure_tensorflow_threads",
    "derive_seed",
    "evaluate_on_client",
    "get_trainer",
    "make_client_app",
    "train_on_client",
]
