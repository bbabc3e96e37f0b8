"""Lossy codecs for client-to-server model updates. Pure numpy, no Flower import.

Each codec turns one update tensor ``delta = client_weights - global_weights`` into a
byte chunk (a 1-D ``uint8`` array) and back; the chunks of all tensors travel as one
array, so the per-array framing of Flower's records is paid once, not per tensor.
Compressing the delta rather than the weights keeps what matters (the change) at full
relative precision.

- :class:`Float16Codec`: the delta in IEEE half precision (2x fewer bytes).
- :class:`Int8Codec`: per-tensor affine quantisation of the delta to 8 bits:
  ``q = round((delta - low) / scale)``, ``scale = (high - low) / 255``; 4x fewer bytes
  plus 8 bytes per tensor; each value is off by at most ``scale / 2``.
- :class:`TopKCodec`: top-k sparsification with error feedback (Stich, Cordonnier,
  Jaggi 2018, "Sparsified SGD with Memory", https://arxiv.org/abs/1809.07599): send the
  ``density`` fraction of the entries of ``delta + residual`` with the largest
  magnitude (int32 index + float32 value each) and keep the rest as the client's
  residual for the next round, so nothing is lost, only delayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedloom.errors import ConfigError

__all__ = ["Codec", "Float16Codec", "Int8Codec", "TopKCodec", "make_codec", "CODECS"]


def _as_bytes(*arrays: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays])


class Codec:
    """Encode one float tensor's delta into a ``uint8`` chunk and decode it back."""

    name = ""
    stateful = False  # True: keeps a per-client residual between rounds

    def encode(
        self, delta: np.ndarray, residual: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ``(chunk, new_residual)``; ``new_residual`` is ``None`` unless stateful."""
        raise NotImplementedError

    def decode(self, chunk: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The delta (approximately) as an array of ``shape`` and ``dtype``."""
        raise NotImplementedError


class Float16Codec(Codec):
    name = "float16"

    def encode(self, delta, residual=None):
        return _as_bytes(delta.astype(np.float16)), None

    def decode(self, chunk, shape, dtype):
        return np.frombuffer(chunk, np.float16).astype(dtype).reshape(shape)


class Int8Codec(Codec):
    name = "int8"

    def encode(self, delta, residual=None):
        flat = delta.reshape(-1).astype(np.float32)
        low = float(flat.min()) if flat.size else 0.0
        high = float(flat.max()) if flat.size else 0.0
        scale = (high - low) / 255.0 or 1.0
        q = np.rint((flat - low) / scale).clip(0, 255).astype(np.uint8)
        return _as_bytes(np.array([low, scale], np.float32), q), None

    def decode(self, chunk, shape, dtype):
        low, scale = (float(v) for v in np.frombuffer(chunk, np.float32, count=2))
        q = np.frombuffer(chunk, np.uint8, offset=8)
        return (q.astype(np.float32) * scale + low).astype(dtype).reshape(shape)


@dataclass
class TopKCodec(Codec):
    density: float = 0.1
    name = "topk"
    stateful = True

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(
                f"compression.density={self.density} is not allowed: use a value in (0, 1]."
            )

    def encode(self, delta, residual=None):
        corrected = delta.reshape(-1).astype(np.float32)
        if residual is not None:
            corrected = corrected + residual.reshape(-1)
        k = max(1, math.ceil(self.density * corrected.size)) if corrected.size else 0
        if k >= corrected.size:
            indices = np.arange(corrected.size, dtype=np.int32)
        else:
            indices = np.sort(np.argpartition(np.abs(corrected), -k)[-k:]).astype(np.int32)
        values = corrected[indices]
        new_residual = corrected.copy()
        new_residual[indices] = 0.0
        return _as_bytes(indices, values), new_residual.reshape(delta.shape)

    def decode(self, chunk, shape, dtype):
        k = len(chunk) // 8
        indices = np.frombuffer(chunk, np.int32, count=k)
        values = np.frombuffer(chunk, np.float32, count=k, offset=4 * k)
        flat = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
        flat[indices] = values
        return flat.reshape(shape)


CODECS = ("none", "float16", "int8", "topk")


def make_codec(method: str, **options) -> Codec | None:
    """The codec for ``method`` (``None`` for ``"none"``); ``options`` e.g. ``density``."""
    if method == "none":
        return None
    if method == "topk":
        return TopKCodec(**options)
    if options:
        raise ConfigError(
            f"compression {method!r} takes no options; got {', '.join(sorted(options))}."
        )
    if method == "float16":
        return Float16Codec()
    if method == "int8":
        return Int8Codec()
    raise ConfigError(
        f"compression.method={method!r} is not allowed: use one of {', '.join(CODECS)}."
    )
