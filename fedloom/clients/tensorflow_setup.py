"""TensorFlow process set-up for the Keras client: imports, threads, GPU memory.

Nothing here runs at import time. :func:`import_tensorflow` imports TensorFlow and
Keras with fedloom's environment defaults; :func:`configure_tensorflow` sizes
TensorFlow's CPU thread pools and sets GPU memory growth, once per process, and
:class:`~fedloom.clients.KerasTrainer` calls it (with its defaults, unless the process
already called it) when it is built, before its first TensorFlow op.

Both settings only take effect before TensorFlow starts its runtime (its first op):
afterwards TensorFlow refuses them, and :func:`configure_tensorflow` reports which
were applied instead of failing.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from types import ModuleType

from fedloom.errors import ConfigError

__all__ = [
    "TensorflowSettings",
    "configure_tensorflow",
    "configure_tensorflow_threads",
    "import_tensorflow",
    "tensorflow_settings",
]

LOGGER = logging.getLogger("fedloom")

THREADS_ENVIRONMENT_VARIABLE = "FEDLOOM_TF_THREADS"


def import_tensorflow() -> tuple[ModuleType, ModuleType]:
    """``(tensorflow, keras)``, imported with ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's
    C++ info and warning logs off) and ``KERAS_BACKEND=tensorflow`` unless the
    environment already sets them.

    Raises:
        ConfigError: Keras was already imported with another backend.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"fedloom.clients needs the Keras TensorFlow backend; KERAS_BACKEND is "
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing "
            "keras."
        )
    return tf, keras


@dataclass(frozen=True)
class TensorflowSettings:
    """What :func:`configure_tensorflow` asked for and what TensorFlow accepted.

    ``threads``: intra- and inter-op threads (``None``: TensorFlow's default, all
    cores). ``gpu_memory_growth``: allocate GPU memory as needed instead of all of it
    at start. ``num_gpus``: GPUs TensorFlow sees. ``applied``: False where TensorFlow
    had already started and refused a setting.
    """

    threads: int | None
    gpu_memory_growth: bool
    num_gpus: int
    applied: bool


_SETTINGS: TensorflowSettings | None = None
_LOCK = threading.Lock()


def tensorflow_settings() -> TensorflowSettings | None:
    """The settings this process applied, or ``None`` before :func:`configure_tensorflow`."""
    return _SETTINGS


def configure_tensorflow(
    *, threads: int | None = None, gpu_memory_growth: bool = True
) -> TensorflowSettings:
    """Set TensorFlow's thread pools and GPU memory growth for this process (once).

    Args:
        threads: intra- and inter-op threads per process. ``None`` reads
            ``FEDLOOM_TF_THREADS`` from the environment, else leaves TensorFlow's
            default (all cores). One thread per process avoids oversubscribing the
            CPU when a simulation runs one client process per core.
        gpu_memory_growth: ``tf.config.experimental.set_memory_growth`` for every
            GPU (on by default: several client processes can share a GPU instead of
            the first taking all its memory); no effect without a GPU.

    Returns:
        The settings in force. The first call of a process decides; a later call
        with other settings logs a warning and returns the first ones (TensorFlow
        cannot change them once it runs).
    """
    global _SETTINGS
    if threads is None:
        threads = _threads_from_environment()
    elif not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads must be a positive integer or None; received {threads!r}.")
    with _LOCK:
        if _SETTINGS is not None:
            wanted = (threads, bool(gpu_memory_growth))
            if wanted != (_SETTINGS.threads, _SETTINGS.gpu_memory_growth):
                LOGGER.warning(
                    "TensorFlow is already configured with threads=%s, gpu_memory_growth=%s; "
                    "threads=%s, gpu_memory_growth=%s is ignored (configure before the "
                    "first trainer is built)", _SETTINGS.threads, _SETTINGS.gpu_memory_growth,
                    threads, gpu_memory_growth)
            return _SETTINGS
        tf, _ = import_tensorflow()
        applied = threads is None or configure_tensorflow_threads(threads, threads)
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, bool(gpu_memory_growth))
            except RuntimeError:  # the GPU is already initialised
                applied = False
        if not applied:
            LOGGER.warning(
                "TensorFlow had already started; its thread pools or GPU memory growth "
                "could not be changed (call fedloom.clients.configure_tensorflow before "
                "any TensorFlow op)")
        _SETTINGS = TensorflowSettings(threads, bool(gpu_memory_growth), len(gpus), applied)
        return _SETTINGS


def configure_tensorflow_threads(intra_op: int | None = 1, inter_op: int | None = 1) -> bool:
    """Set TensorFlow's CPU thread pools; returns False if TensorFlow already started.

    TensorFlow sizes its pools to all cores by default. In a simulation that runs one
    client process per core this oversubscribes the CPU, and for the small models
    of cross-device FL a single thread per process is as fast or faster anyway.
    """
    tf, _ = import_tensorflow()
    try:
        if intra_op is not None:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op is not None:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError:
        return False
    return True


def _threads_from_environment() -> int | None:
    value = os.environ.get(THREADS_ENVIRONMENT_VARIABLE, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(
            f"{THREADS_ENVIRONMENT_VARIABLE} must be a positive integer; it is {value!r}."
        )
    return threads
