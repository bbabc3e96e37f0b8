"""The fast Keras client: one training core, two Flower client APIs.

- :class:`KerasTrainer` (``trainer.py``, graphs in ``update_graphs.py``) and
  :func:`get_trainer` (``trainer_cache.py``): builds and compiles a model once per
  process and runs a whole local update in one ``tf.function`` call.
- :func:`train_on_client` / :func:`evaluate_on_client` (``local_update.py``): what a
  client does in a round, API-independent.
- :class:`ClientState` (``client_state.py``): what a client keeps between rounds
  (client momentum, SCAFFOLD's control variate) and the numpy maths using it.
- :class:`KerasClient` (``numpy_client.py``): legacy ``flwr.client.NumPyClient``.
- :func:`make_client_app` (``client_app.py``): Message-API ``flwr.clientapp.ClientApp``.
- :func:`configure_tensorflow` (``tensorflow_setup.py``): TensorFlow's threads and GPU
  memory growth, once per process; building the first trainer calls it with its
  defaults unless the process did.

Importing this package does not import TensorFlow; building a trainer does
(``KERAS_BACKEND=tensorflow`` and ``TF_CPP_MIN_LOG_LEVEL=2`` unless set). Set
``FEDLOOM_TF_THREADS=N`` in the environment (or pass ``threads`` to
:func:`configure_tensorflow`) to cap TensorFlow at N intra-op and N inter-op threads
per process (recommended: 1 when a simulation runs one client process per core).
"""

from fedloom.clients.tensorflow_setup import (
    TensorflowSettings,
    configure_tensorflow,
    configure_tensorflow_threads,
)
from fedloom.clients.trainer import KerasTrainer
from fedloom.clients.trainer_cache import clear_trainer_cache, get_trainer
from fedloom.clients.local_update import (  # isort: skip
    ClientSplits,
    ClientState,
    TrainConfig,
    derive_seed,
    evaluate_on_client,
    train_client_round,
    train_on_client,
)
from fedloom.clients.numpy_client import KerasClient  # isort: skip
from fedloom.clients.client_app import make_client_app  # isort: skip
from fedloom.models import ModelSpec, build_model

__all__ = [
    "ClientSplits",
    "ClientState",
    "KerasClient",
    "KerasTrainer",
    "ModelSpec",
    "TensorflowSettings",
    "TrainConfig",
    "build_model",
    "clear_trainer_cache",
    "configure_tensorflow",
    "configure_tensorflow_threads",
    "derive_seed",
    "evaluate_on_client",
    "get_trainer",
    "make_client_app",
    "train_client_round",
    "train_on_client",
]
