"""One :class:`~fedloom.clients.KerasTrainer` per model spec per thread of a process.

A Flower simulation worker serves many clients; with this cache it builds, compiles
and traces the model once instead of once per client or round. The local engine's
worker threads (``engine.workers``) each get their own replica: a trainer serialises its
calls, so one shared trainer would serialise the workers.
"""

from __future__ import annotations

import threading
import weakref

from fedloom.clients.trainer import KerasTrainer
from fedloom.errors import ConfigError
from fedloom.models import ModelSpec

__all__ = ["clear_trainer_cache", "get_trainer"]

# (thread -> {(spec, momentum): trainer}); a finished thread's entries go with its Thread.
_TRAINERS: weakref.WeakKeyDictionary[threading.Thread, dict[tuple[ModelSpec, float], KerasTrainer]] = (
    weakref.WeakKeyDictionary())
_TRAINERS_LOCK = threading.Lock()


def get_trainer(
    spec: ModelSpec, *, momentum: float = 0.0, gpu_memory_growth: bool = True
) -> KerasTrainer:
    """This thread's trainer for ``(spec, momentum)``, built on first use.

    Trainers never keep client state between calls (each call loads the weights it is
    given), so sharing one within a thread is safe; replicas of one spec are built from
    the same seed and compute the same results. The cache lives only as long as the
    process (and a replica as long as its thread): in a deployment every message starts
    a fresh ``flwr-clientapp`` process. ``gpu_memory_growth`` is passed to the first
    trainer's TensorFlow set-up.
    """
    if not isinstance(spec, ModelSpec):
        raise ConfigError(
            f"get_trainer needs a fedloom.models.ModelSpec; received {type(spec).__name__}. "
            "Build a KerasTrainer directly for a model-builder callable."
        )
    key = (spec, float(momentum))
    with _TRAINERS_LOCK:  # also serialises model building (Keras/TF tracing) across threads
        trainers = _TRAINERS.setdefault(threading.current_thread(), {})
        trainer = trainers.get(key)
        if trainer is None:
            trainer = trainers[key] = KerasTrainer(
                spec, momentum=momentum, gpu_memory_growth=gpu_memory_growth)
        return trainer


def clear_trainer_cache() -> None:
    """Forget all cached trainers of every thread (their models are freed when
    unreferenced)."""
    with _TRAINERS_LOCK:
        _TRAINERS.clear()
