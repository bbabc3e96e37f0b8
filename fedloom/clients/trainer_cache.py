"""One :class:`~fedloom.clients.KerasTrainer` per model spec per process.

A Flower simulation worker serves many clients; with this cache it builds, compiles
and traces the model once instead of once per client or round.
"""

from __future__ import annotations

import threading

from fedloom.clients.trainer import KerasTrainer
from fedloom.errors import ConfigError
from fedloom.models import ModelSpec

__all__ = ["clear_trainer_cache", "get_trainer"]

_TRAINERS: dict[tuple[ModelSpec, float], KerasTrainer] = {}
_TRAINERS_LOCK = threading.Lock()


def get_trainer(
    spec: ModelSpec, *, momentum: float = 0.0, gpu_memory_growth: bool = True
) -> KerasTrainer:
    """The process-wide trainer for ``(spec, momentum)``, built on first use.

    A Flower simulation worker serves many clients; with this cache it builds,
    compiles and traces the model once instead of once per client or round.
    Trainers never keep client state between calls (each call loads the weights
    it is given), so sharing is safe. The cache lives only as long as the process:
    in a deployment every message starts a fresh ``flwr-clientapp`` process.
    ``gpu_memory_growth`` is passed to the first trainer's TensorFlow set-up.
    """
    if not isinstance(spec, ModelSpec):
        raise ConfigError(
            f"get_trainer needs a fedloom.models.ModelSpec; received {type(spec).__name__}. "
            "Build a KerasTrainer directly for a model-builder callable."
        )
    key = (spec, float(momentum))
    with _TRAINERS_LOCK:
        trainer = _TRAINERS.get(key)
        if trainer is None:
            trainer = _TRAINERS[key] = KerasTrainer(
                spec, momentum=momentum, gpu_memory_growth=gpu_memory_growth)
        return trainer


def clear_trainer_cache() -> None:
    """Forget all cached trainers (their models are freed when unreferenced)."""
    with _TRAINERS_LOCK:
        _TRAINERS.clear()
