"""Compressed updates in Flower messages: a client mod and the server-side decoder.

Client side, :func:`compression_mod` is a Flower ``ClientApp`` mod: after the train
handler replies, it replaces the reply's model weights with ONE ``uint8`` array holding
the compressed update (new weights minus the weights the server sent) of every tensor,
and adds a ``ConfigRecord`` ``"compression"`` with the codec, the original array keys
and each tensor's chunk size. Use it with any Message-API ClientApp::

    app = ClientApp(mods=[compression_mod("int8")])

Server side, fedloom's Message-API strategies recognise such replies and call
:func:`decode_compressed` before validation and aggregation; ``bytes-received`` counts
the compressed bytes that crossed the network.

Top-k's error-feedback residual lives in the node's ``context.state``, which Flower keeps
for each node between rounds (simulation and deployment alike).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedloom.compression.codecs import make_codec
from fedloom.records import arrayrecord_views, ndarrays_to_arrayrecord

__all__ = ["compression_mod", "decode_compressed", "COMPRESSION_RECORD"]

COMPRESSION_RECORD = "compression"
_RESIDUAL_RECORD = "fedloom.compression.residual"
_PAYLOAD_KEY = "payload"


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
        residuals = _load_residuals(context, len(keys)) if codec.stateful else [None] * len(keys)
        chunks, new_residuals = [], []
        for now, before, residual in zip(new, old, residuals):
            if np.issubdtype(now.dtype, np.floating):
                chunk, residual = codec.encode(np.subtract(now, before, dtype=now.dtype), residual)
            else:  # integer state (counters): sent as it is
                chunk, residual = np.ascontiguousarray(now).reshape(-1).view(np.uint8), None
            chunks.append(chunk)
            new_residuals.append(np.zeros(0, np.float32) if residual is None else residual)
        if codec.stateful:
            context.state[_RESIDUAL_RECORD] = ndarrays_to_arrayrecord(
                new_residuals, [str(i) for i in range(len(new_residuals))])
        reply.content[name] = ndarrays_to_arrayrecord([np.concatenate(chunks)], [_PAYLOAD_KEY])
        reply.content[COMPRESSION_RECORD] = ConfigRecord(
            {"codec": codec.name, "keys": keys, "sizes": [int(c.size) for c in chunks]})
        return reply

    mod.__name__ = f"compression_mod_{method}"
    return mod


def _load_residuals(context: Context, count: int) -> list[np.ndarray | None]:
    record = context.state.get(_RESIDUAL_RECORD)
    if not isinstance(record, ArrayRecord) or len(record) != count:
        return [None] * count
    return [np.array(a) if a.size else None for a in arrayrecord_views(record)]


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
    payload = arrayrecord_views(record, [_PAYLOAD_KEY])[0]
    if payload.dtype != np.uint8 or payload.size != sum(sizes):
        raise ValueError(f"payload of {payload.size} bytes; the sizes announce {sum(sizes)}")
    weights, offset = [], 0
    for size, like in zip(sizes, global_weights):
        chunk = payload[offset : offset + size]
        offset += size
        if np.issubdtype(like.dtype, np.floating):
            weights.append(np.add(like, codec.decode(chunk, like.shape, like.dtype), dtype=like.dtype))
        else:
            weights.append(np.frombuffer(chunk, like.dtype).reshape(like.shape))
    return keys, weights
