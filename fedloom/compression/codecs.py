"""Lossy codecs for client-to-server model updates. Pure numpy, no Flower import.

Each codec turns one update tensor ``delta = client_weights - global_weights`` into a
byte chunk (a 1-D ``uint8`` array) and back; the chunks of all tensors travel as one
array, so the per-array framing of Flower's records is paid once, not per tensor.
Compressing the delta rather than the weights keeps what matters (the change) at full
relative precision.

- :class:`Float16Codec`: the delta in IEEE half precision after an exact power-of-two
  scale per tensor (2x fewer bytes plus 4 per tensor). The scale puts the tensor's
  largest magnitude just below ``2**15``, so a finite delta never overflows float16's
  range (max 65504) and small deltas keep float16's 11 significant bits instead of
  being flushed to zero or rounded in its subnormal range. A tensor with a non-finite
  value is sent as float32 (the server then rejects it for what it is).
- :class:`Int8Codec`: per-tensor affine quantisation of the delta to 8 bits:
  ``q = round((delta - low) / scale)``, ``scale = (high - low) / 255``; 4x fewer bytes
  plus 8 bytes per tensor; each value is off by at most ``scale / 2``.
- :class:`TopKCodec`: top-k sparsification with error feedback (Stich, Cordonnier,
  Jaggi 2018, "Sparsified SGD with Memory", https://arxiv.org/abs/1809.07599): send the
  ``density`` fraction of the entries of ``delta + residual`` with the largest
  magnitude (int32 index + float32 value each) and keep the rest as the client's
  residual for the next round, so what is not sent is delayed, not lost. What IS
  sent is lost if the server does not apply it; :func:`fedloom.compression.compression_mod`
  puts it back into the residual when the client's next train message carries the
  very model its last update started from (the round was skipped or failed), but it
  cannot tell a rejected update apart from an accepted one once other clients moved
  the model (a norm filter's rejection, a reply after the deadline): that part is lost.
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

    def chunk_format(self, chunk: np.ndarray) -> str:
        """How ``chunk`` is encoded (recorded per tensor in the reply): the codec's name
        unless the codec falls back to another format for some tensors."""
        del chunk
        return self.name


class Float16Codec(Codec):
    """Chunk: an int32 exponent ``e`` then ``float16(delta * 2**e)``, one per entry.

    ``e`` is chosen per tensor so that ``max|delta| * 2**e`` lies in ``[2**14, 2**15)``;
    the scaling is exact, so every entry is rounded once, to 11 significant bits
    (relative error <= ``2**-11``), entries below ``max|delta| * 2**-24`` only in
    absolute terms (error <= ``max|delta| * 2**-39``). A tensor holding NaN or inf
    (after casting to float32) is sent as float32 behind the marker
    :data:`FLOAT32_FALLBACK` instead (4 bytes per entry); :meth:`chunk_format` tells
    which, and the Flower mod records it per tensor.
    """

    name = "float16"
    FLOAT32_FALLBACK = -(2**31)  # exponent marker of a float32 chunk
    MAX_EXPONENT = 200  # |e| of any finite float32 tensor is below 170

    def encode(self, delta, residual=None):
        values = np.asarray(delta, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            return _as_bytes(np.array([self.FLOAT32_FALLBACK], np.int32), values), None
        largest = float(np.abs(values).max()) if values.size else 0.0
        exponent = 15 - math.frexp(largest)[1] if largest > 0 else 0
        scaled = np.ldexp(values, np.int32(exponent)).astype(np.float16)
        return _as_bytes(np.array([exponent], np.int32), scaled), None

    def chunk_format(self, chunk: np.ndarray) -> str:
        """``"float16"`` or ``"float32"`` (the fallback for a non-finite tensor)."""
        if len(chunk) < 4:
            return "invalid"
        header = int(np.frombuffer(chunk, np.int32, count=1)[0])
        return "float32" if header == self.FLOAT32_FALLBACK else "float16"

    def decode(self, chunk, shape, dtype):
        count = int(np.prod(shape, dtype=np.int64))
        if len(chunk) < 4:
            raise ValueError(f"float16 chunk of {len(chunk)} bytes has no header")
        exponent = int(np.frombuffer(chunk, np.int32, count=1)[0])
        if exponent == self.FLOAT32_FALLBACK:
            values, width = np.frombuffer(chunk, np.float32, offset=4), 4
        elif abs(exponent) <= self.MAX_EXPONENT:
            values, width = np.frombuffer(chunk, np.float16, offset=4), 2
            values = np.ldexp(values.astype(np.float32), np.int32(-exponent))
        else:
            raise ValueError(f"float16 chunk with scale exponent {exponent} out of range")
        if len(chunk) != 4 + width * count:
            raise ValueError(
                f"float16 chunk of {len(chunk)} bytes for {count} values of {width} bytes")
        return values.astype(dtype).reshape(shape)


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
        k, size = len(chunk) // 8, int(np.prod(shape, dtype=np.int64))
        if len(chunk) % 8:
            raise ValueError(f"top-k chunk of {len(chunk)} bytes is not a whole number of entries")
        indices = np.frombuffer(chunk, np.int32, count=k)
        values = np.frombuffer(chunk, np.float32, count=k, offset=4 * k)
        if k and (indices.min() < 0 or indices.max() >= size):
            raise ValueError(f"top-k indices outside [0, {size}) for a tensor of shape {shape}")
        flat = np.zeros(size, dtype=dtype)
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
