"""Compressed updates in Flower messages: a client mod and the server-side decoder.

Client side, :func:`compression_mod` is a Flower ``ClientApp`` mod: after the train
handler replies, it replaces the reply's model weights with ONE ``uint8`` array holding
the compressed update (new weights minus the weights the server sent) of every tensor,
and adds a ``ConfigRecord`` ``"compression"`` with the codec, the original array keys,
each tensor's chunk size and each tensor's format (``formats``: the codec's name,
``"float32"`` where float16 fell back for a non-finite tensor, ``"raw"`` for integer
tensors sent as they are). Use it with any Message-API ClientApp::

    app = ClientApp(mods=[compression_mod("int8")])

Server side, fedloom's Message-API strategies recognise such replies and call
:func:`decode_compressed` before validation and aggregation; ``bytes-received`` counts
the compressed bytes that crossed the network.

Top-k's error-feedback residual lives in the node's ``context.state``, which Flower keeps
for each node between rounds (simulation and deployment alike). Beside it the mod keeps
the chunks it last sent and a fingerprint of the model that update started from: when
the node's next train message carries that same model, the server did not apply the
update (the round was skipped or failed), and the sent part goes back into the
residual. Once other clients have moved the model, a rejected or late update cannot be
told apart from an accepted one, and its sent part is lost (see
:class:`~fedloom.compression.TopKCodec`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedloom.compression.codecs import make_codec
from fedloom.records import arrayrecord_views, ndarrays_to_arrayrecord

__all__ = ["compression_mod", "decode_compressed", "COMPRESSION_RECORD"]

COMPRESSION_RECORD = "compression"
_RESIDUAL_RECORD = "fedloom.compression.residual"
_SENT_RECORD = "fedloom.compression.sent"  # the chunks of the node's last update
_SENT_BASE_RECORD = "fedloom.compression.sent-base"  # fingerprint of the model it started from
_PAYLOAD_KEY = "payload"
_RAW_FORMAT = "raw"

LOGGER = logging.getLogger("fedloom")


def compression_mod(method: str, **options) -> Mod:
    """A ClientApp mod compressing train replies with ``method`` (float16, int8, topk)."""
    codec = make_codec(method, **options)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if codec is None or msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        sent = [r for r in msg.content.values() if isinstance(r, ArrayRecord)]
        replied = [(k, r) for k, r in reply.content.items() if isinstance(r, ArrayRecord)]
        if len(sent) != 1 or len(replied) != 1:
            return reply  # not a model update fedloom understands: send it as it is
        name, record = replied[0]
        keys = list(record.keys())
        new, old = arrayrecord_views(record, keys), arrayrecord_views(sent[0])
        if len(new) != len(old) or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(new, old)):
            return reply  # let the server reject the malformed update with its reason
        base = _fingerprint(old) if codec.stateful else ""
        residuals = _load_residuals(context, codec, old, base) if codec.stateful else [None] * len(keys)
        chunks, formats, new_residuals = [], [], []
        for now, before, residual in zip(new, old, residuals):
            if np.issubdtype(now.dtype, np.floating):
                chunk, residual = codec.encode(np.subtract(now, before, dtype=now.dtype), residual)
                formats.append(codec.chunk_format(chunk))
            else:  # integer state (counters): sent as it is
                chunk, residual = np.ascontiguousarray(now).reshape(-1).view(np.uint8), None
                formats.append(_RAW_FORMAT)
            chunks.append(chunk)
            new_residuals.append(np.zeros(0, np.float32) if residual is None else residual)
        if codec.stateful:
            names = [str(i) for i in range(len(keys))]
            context.state[_RESIDUAL_RECORD] = ndarrays_to_arrayrecord(new_residuals, names)
            sent_chunks = [c if f != _RAW_FORMAT else np.zeros(0, np.uint8)
                           for c, f in zip(chunks, formats)]
            context.state[_SENT_RECORD] = ndarrays_to_arrayrecord(sent_chunks, names)
            context.state[_SENT_BASE_RECORD] = ConfigRecord({"fingerprint": base})
        reply.content[name] = ndarrays_to_arrayrecord([np.concatenate(chunks)], [_PAYLOAD_KEY])
        reply.content[COMPRESSION_RECORD] = ConfigRecord(
            {"codec": codec.name, "keys": keys, "sizes": [int(c.size) for c in chunks],
             "formats": formats})
        return reply

    mod.__name__ = f"compression_mod_{method}"
    return mod


def _fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """A 128-bit digest of a model's arrays (shapes, dtypes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    return digest.hexdigest()


def _load_residuals(
    context: Context, codec, received: Sequence[np.ndarray], base: str
) -> list[np.ndarray | None]:
    """The node's residuals, with its last sent part added back if the server's model
    is still the one that update started from (so the update was never applied)."""
    count = len(received)
    record = context.state.get(_RESIDUAL_RECORD)
    if not isinstance(record, ArrayRecord) or len(record) != count:
        return [None] * count
    residuals = [np.array(a) if a.size else None for a in arrayrecord_views(record)]
    sent = context.state.get(_SENT_RECORD)
    info = context.state.get(_SENT_BASE_RECORD)
    if not isinstance(sent, ArrayRecord) or not isinstance(info, ConfigRecord):
        return residuals
    if info.get("fingerprint") != base or len(sent) != count:
        return residuals  # the model moved: the last update is taken as applied
    restored = []
    for residual, chunk, like in zip(residuals, arrayrecord_views(sent), received):
        if residual is None or not chunk.size:
            restored.append(residual)
            continue
        delivered = codec.decode(chunk, like.shape, np.float32).reshape(residual.shape)
        restored.append(residual + delivered)
    LOGGER.info("node %d: the server's model did not change since its last update; "
                "the update's sent part is put back into the top-k residual", context.node_id)
    del context.state[_SENT_RECORD]
    return restored


def decode_compressed(
    record: ArrayRecord, info: ConfigRecord, global_weights: Sequence[np.ndarray]
) -> tuple[list[str], list[np.ndarray]]:
    """Rebuild ``(keys, client_weights)`` from a compressed reply and the global model.

    Raises:
        ValueError: unknown codec, or a payload that does not fit the global model.
    """
    codec = make_codec(str(info["codec"]))
    keys = [str(k) for k in info["keys"]]
    sizes = [int(s) for s in info["sizes"]]
    if codec is None or len(keys) != len(global_weights) or len(sizes) != len(keys):
        raise ValueError(
            f"{len(keys)} compressed arrays for a model of {len(global_weights)} arrays"
        )
    formats = [str(f) for f in info["formats"]] if "formats" in info else None
    if formats is not None and len(formats) != len(keys):
        raise ValueError(f"{len(formats)} formats announced for {len(keys)} compressed arrays")
    payload = arrayrecord_views(record, [_PAYLOAD_KEY])[0]
    if payload.dtype != np.uint8 or payload.size != sum(sizes):
        raise ValueError(f"payload of {payload.size} bytes; the sizes announce {sum(sizes)}")
    weights, offset = [], 0
    for index, (size, like) in enumerate(zip(sizes, global_weights)):
        chunk = payload[offset : offset + size]
        offset += size
        floating = np.issubdtype(like.dtype, np.floating)
        if formats is not None:
            actual = codec.chunk_format(chunk) if floating else _RAW_FORMAT
            if formats[index] != actual:
                raise ValueError(
                    f"array {index} is announced as {formats[index]!r} but encoded as {actual!r}")
        if floating:
            weights.append(np.add(like, codec.decode(chunk, like.shape, like.dtype), dtype=like.dtype))
        else:
            weights.append(np.frombuffer(chunk, like.dtype).reshape(like.shape))
    return keys, weights
