"""Reading and writing model weights in Flower's records without needless copies (both sides).

Flower carries each array as ``.npy`` bytes (``Array.data`` in the Message API,
``Parameters.tensors`` in the legacy API). ``Array.numpy()`` decodes with ``np.load``,
which copies every byte. :func:`ndarray_view` instead parses the ``.npy`` header and
returns a read-only ``np.frombuffer`` view of the bytes Flower already holds: decoding
100 updates of 1M parameters costs microseconds instead of a 400 MB copy.
"""

from __future__ import annotations

import functools
import io
import re
import time
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.common import Parameters

__all__ = [
    "ndarray_view",
    "ndarray_to_array",
    "arrayrecord_views",
    "ndarrays_to_arrayrecord",
    "parameters_views",
    "ndarrays_to_parameters",
    "arrayrecord_num_bytes",
    "message_num_bytes",
    "messages_num_bytes",
    "legacy_message_num_bytes",
    "legacy_messages_num_bytes",
    "message_proto_num_bytes",
]


@functools.lru_cache(maxsize=256)
def _expected_header(dtype: str, shape: tuple[int, ...]) -> tuple[np.dtype, int, bytes, bytes]:
    dt = np.dtype(dtype)
    return (dt, int(np.prod(shape, dtype=np.int64)),
            f"'descr': '{dt.str}', 'fortran_order': False,".encode(),
            f"'shape': {tuple(shape)!r}".encode())


_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), \}"
)


def _parse_simple_header(data: bytes) -> tuple[np.dtype, bool, tuple[int, ...], int] | None:
    """Parse a plain ``.npy`` 1.0 header (what ``np.save`` writes for non-structured
    dtypes) without ``ast.literal_eval``; ``None`` for anything else."""
    if data[:8] != b"\x93NUMPY\x01\x00" or len(data) < 10:
        return None
    offset = 10 + int.from_bytes(data[8:10], "little")
    match = _HEADER.match(data, 10, offset)
    if match is None:
        return None
    dt = np.dtype(match.group(1).decode())
    if dt.hasobject:
        return None
    shape = tuple(int(d) for d in match.group(3).split(b",") if d.strip())
    return dt, match.group(2) == b"True", shape, offset


def ndarray_view(data: bytes, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Decode ``.npy`` bytes into a read-only array that shares memory with ``data``.

    With ``dtype`` and ``shape`` (what Flower's ``Array`` records beside its bytes),
    the header is only checked against them, which is ~20x faster than parsing it.

    Raises:
        ValueError: the bytes are not an ``.npy`` array of plain (non-object) dtype.
    """
    if dtype is not None and shape is not None and data[:6] == b"\x93NUMPY":
        try:
            dt, count, descr, shape_text = _expected_header(dtype, tuple(shape))
        except TypeError:  # a dtype string numpy cannot read back (structured): parse
            return ndarray_view(data)
        offset = len(data) - count * dt.itemsize
        if not dt.hasobject and 10 <= offset <= 65_546:
            header = data[10:offset]
            if descr in header and shape_text in header:
                return np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(shape)
    parsed = _parse_simple_header(data)
    if parsed is not None:
        dt, fortran_order, shape, offset = parsed
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dt.itemsize == len(data):
            flat = np.frombuffer(data, dtype=dt, count=count, offset=offset)
            return flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)
    stream = io.BytesIO(data)  # shares the immutable bytes, no copy
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # (3, 0): utf-8 header; numpy offers no public reader for it
        shape, fortran_order, dtype = np.lib.format._read_array_header(stream, version)
    if dtype.hasobject:
        raise ValueError("Object arrays are refused: they would need unpickling.")
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    if fortran_order:
        return flat.reshape(shape[::-1]).T
    return flat.reshape(shape)


def arrayrecord_views(record: ArrayRecord, keys: Sequence[str] | None = None) -> list[np.ndarray]:
    """Arrays of ``record`` in ``keys`` order (default: the record's order), as views.

    Raises:
        KeyError: a key in ``keys`` is missing from ``record``.
    """
    keys = list(record.keys()) if keys is None else keys
    return [_array_view(record[key]) for key in keys]


def _array_view(array: Array) -> np.ndarray:
    if array.stype != "numpy.ndarray":
        return array.numpy()  # let Flower raise its own error for other formats
    return ndarray_view(array.data, array.dtype, array.shape)


def ndarray_to_array(array: np.ndarray) -> Array:
    """A Flower ``Array`` of ``array`` with the bytes ``np.save`` would write, built with
    one copy (``Array(ndarray)`` writes to a BytesIO and copies its buffer again)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    if array.dtype.hasobject:
        raise ValueError("Object arrays cannot be sent: they would need pickling.")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    data = b"".join([header.getvalue(), memoryview(array.reshape(-1)).cast("B")])
    return Array(dtype=str(array.dtype), shape=tuple(array.shape), stype="numpy.ndarray", data=data)


def ndarrays_to_arrayrecord(arrays: Sequence[np.ndarray], keys: Sequence[str]) -> ArrayRecord:
    """An ``ArrayRecord`` holding ``arrays`` under ``keys`` (the global model's keys)."""
    return ArrayRecord({key: ndarray_to_array(a) for key, a in zip(keys, arrays)})


def parameters_views(parameters: Parameters) -> list[np.ndarray]:
    """Legacy-API ``Parameters`` (``.npy`` tensors) as read-only views."""
    if parameters.tensor_type not in ("numpy.ndarray", ""):
        raise ValueError(
            f"Expected Parameters of tensor_type 'numpy.ndarray'; got {parameters.tensor_type!r}."
        )
    return [ndarray_view(tensor) for tensor in parameters.tensors]


def ndarrays_to_parameters(arrays: Sequence[np.ndarray]) -> Parameters:
    """Legacy-API ``Parameters`` of ``arrays`` (``.npy`` bytes, one copy each)."""
    return Parameters(tensors=[ndarray_to_array(a).data for a in arrays], tensor_type="numpy.ndarray")


def arrayrecord_num_bytes(record: ArrayRecord) -> int:
    """Serialized size of the arrays in ``record`` (what crossed the network)."""
    return sum(len(array.data) for array in record.values())


def message_num_bytes(message: Message) -> int:
    """Bytes of ``message`` as Flower 1.42 puts it on the wire: every object it pushes, once.

    A deployed Flower (SuperNode <-> SuperLink <-> ServerApp) does not send a Message as
    one protobuf: it splits it into objects (the Message's metadata, its RecordDict,
    each ArrayRecord / ConfigRecord / MetricRecord, each Array, each ArrayChunk of an
    array's bytes), deflates each with ``deflate()`` (a small text header + a
    protobuf body) and pushes each distinct object id once. This sums the deflated
    sizes of the distinct objects (Flower's ``get_all_nested_objects``),
    so it counts arrays, configs and metrics alike, and identical chunks (e.g. of an
    all-zero array) once, as Flower does. Not counted: the per-request framing (request
    protobufs, HTTP headers, TLS), and objects the receiver already holds (Flower skips
    those). Unit: bytes. The arrays' payload alone is :func:`arrayrecord_num_bytes`.

    Computing object ids hashes every byte (SHA-256), as Flower does before sending;
    as Flower's push path, each object's id is computed once per call
    (``no_object_id_recompute``), which saves about a third of the time
    (``benchmarks/message_bytes.py``).
    """
    from flwr.supercore.inflatable.inflatable_object import (
        get_all_nested_objects,
        no_object_id_recompute,
    )

    with no_object_id_recompute():
        return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def messages_num_bytes(messages: Sequence[Message]) -> int:
    """``sum(message_num_bytes(m) for m in messages)``, computing the content of
    messages that share one ``RecordDict`` object (a strategy's train messages of a
    round: same model, config and control variate, one per node) once: per message only
    its own object (metadata) is deflated again. Unit: bytes.

    Every message is counted in full, as each node receives the whole content (the
    ServerApp pushes shared objects to the SuperLink once; each SuperNode pulls them).
    """
    from flwr.supercore.inflatable.inflatable_object import (
        get_all_nested_objects,
        no_object_id_recompute,
    )

    content_bytes: dict[int, int] = {}
    total = 0
    with no_object_id_recompute():
        for message in messages:
            total += len(message.deflate())
            if message.has_content():
                key = id(message.content)
                if key not in content_bytes:
                    content_bytes[key] = sum(
                        len(obj.deflate()) for obj in get_all_nested_objects(message.content).values())
                total += content_bytes[key]
    return total


def legacy_message_num_bytes(ins_or_res, *, dst_node_id: int, reply: bool = False,
                             group_id: str = "") -> int:
    """Bytes on the wire of a legacy-API ``FitIns`` (``reply=False``) or ``FitRes``
    (``reply=True``), as Flower 1.42's compatibility layer sends it: converted with
    ``flwr.compat.common.recorddict_compat`` (``fitins_to_recorddict`` /
    ``fitres_to_recorddict``, as ``GridClientProxy`` and the ``ClientApp`` do) into a
    train ``Message`` to (a reply: from) node ``dst_node_id``, counted with
    :func:`message_num_bytes`. A strategy sees no Message, so the metadata is rebuilt
    as a deployment's: run, task and server node ids from ``TaskIdentity`` (the running
    ServerApp's; 0 outside one), Flower's default TTL, a creation time, and for a reply
    the instruction's id as the SuperLink sets it (its 64-hex-digit object id). Unit:
    bytes.
    """
    return legacy_messages_num_bytes(ins_or_res, [dst_node_id], reply=reply, group_id=group_id)


def legacy_messages_num_bytes(ins_or_res, dst_node_ids: Sequence[int], *, reply: bool = False,
                              group_id: str = "") -> int:
    """:func:`legacy_message_num_bytes` summed over ``dst_node_ids`` (one message each,
    as Flower sends the same ``FitIns`` to every sampled client), with the content
    converted and counted once (:func:`messages_num_bytes`). Unit: bytes."""
    from flwr.app import MessageType, Metadata
    from flwr.app.constants import DEFAULT_TTL
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.compat.common import recorddict_compat
    from flwr.supercore.task_identity import TaskIdentity

    content = (recorddict_compat.fitres_to_recorddict(ins_or_res, keep_input=True) if reply
               else recorddict_compat.fitins_to_recorddict(ins_or_res, keep_input=True))
    ids = {"run_id": 0, "task_id": 0, "node_id": SUPERLINK_NODE_ID}
    for name in ids:
        try:
            ids[name] = int(getattr(TaskIdentity, name))
        except (RuntimeError, TypeError, ValueError):  # not inside a ServerApp
            pass
    server, messages = ids["node_id"], []
    for node in map(int, dst_node_ids):
        metadata = Metadata(
            run_id=ids["run_id"], message_id="",
            src_node_id=node if reply else server, dst_node_id=server if reply else node,
            reply_to_message_id="0" * 64 if reply else "", group_id=group_id,
            created_at=time.time(), ttl=DEFAULT_TTL, message_type=MessageType.TRAIN,
            src_task_id=None if reply else ids["task_id"],
            dst_task_id=ids["task_id"] if reply else None,
        )
        messages.append(Message(metadata=metadata, content=content))
    return messages_num_bytes(messages)


def message_proto_num_bytes(message: Message) -> int:
    """Bytes of ``message`` serialized whole as one protobuf with Flower's serde
    (``flwr.common.serde.message_to_proto(message).ByteSize()``: metadata, content and
    error in one ``Message`` proto). Unit: bytes.

    A cheaper estimate than :func:`message_num_bytes` (no hashing, no chunking); Flower
    1.42's own transports send the content as separate objects, which that counts.
    """
    from flwr.common.serde import message_to_proto

    return message_to_proto(message).ByteSize()
