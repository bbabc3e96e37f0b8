"""Flower Message-API train replies as fedloom updates, or left out with a reason.

Used by :class:`~fedloom.strategies.FedloomStrategy` for aggregation and for screening
replies before a DP wrapper touches them. A reply is left out (never fatal) when it is
an error (``client_error``; ``disconnected`` for the engine's unavailable-node codes),
does not carry exactly one model ArrayRecord and one MetricRecord beside an optional
SCAFFOLD ``"scaffold-delta-c"`` (``malformed``), has other array keys
(``wrong_num_arrays`` / ``malformed``), undecodable arrays or a bad compressed update
(``malformed``), or, with SCAFFOLD, an unusable ``delta_c`` (``malformed`` /
``non_finite``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode

from fedloom.aggregation import ClientUpdate, Rejection
from fedloom.compression import COMPRESSION_RECORD, decode_compressed
from fedloom.errors import ConfigError
from fedloom.records import arrayrecord_views
from fedloom.strategies.round import RoundAggregator
from fedloom.strategies.scaffold import SCAFFOLD_DELTA_RECORD

__all__ = ["UNAVAILABLE_CODES", "decode_train_replies"]

#: Error codes with which the engine (not the ClientApp) reports a node it lost.
UNAVAILABLE_CODES = frozenset(
    {ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE}
)


def decode_train_replies(
    replies: list[Message], round_: RoundAggregator, weighted_by_key: str, strategy: str
) -> tuple[list[ClientUpdate], list[Rejection], dict[str, list[np.ndarray]]]:
    """Flower's train ``replies`` as fedloom updates, the ones left out with a reason,
    and SCAFFOLD's ``delta_c`` by client id (only with ``round_.control_variate``).

    A reply carries one model ArrayRecord and one MetricRecord, plus optionally the
    ArrayRecord ``"scaffold-delta-c"`` (used with SCAFFOLD, ignored without). Array
    keys are compared with the global model's, or, without one, with the first
    decodable reply's (which then become ``round_.global_keys``). ``weighted_by_key``:
    the metric holding the example count; ``strategy``: the caller's name, for errors.

    Raises:
        ConfigError: a compressed reply or a SCAFFOLD ``delta_c`` and no global model.
    """
    updates: list[ClientUpdate] = []
    rejected: list[Rejection] = []
    deltas: dict[str, list[np.ndarray]] = {}
    keys = list(round_.global_keys) if round_.global_weights is not None else None
    for msg in replies:
        client_id = str(msg.metadata.src_node_id)
        if msg.has_error():
            reason = ("disconnected" if msg.error.code in UNAVAILABLE_CODES
                      else "client_error")
            rejected.append(Rejection(
                client_id, reason, f"code {msg.error.code}: {msg.error.reason}"))
            continue
        array_records = [r for k, r in msg.content.items()
                         if isinstance(r, ArrayRecord) and k != SCAFFOLD_DELTA_RECORD]
        metric_records = [r for r in msg.content.values() if isinstance(r, MetricRecord)]
        if len(array_records) != 1 or len(metric_records) != 1:
            rejected.append(Rejection(
                client_id, "malformed",
                f"expected 1 model ArrayRecord (beside an optional {SCAFFOLD_DELTA_RECORD!r}) "
                f"and 1 MetricRecord; got {len(array_records)} and {len(metric_records)}"))
            continue
        delta = None
        if round_.control_variate is not None:
            delta, problem = _control_delta(msg, keys, round_, strategy)
            if problem is not None:
                rejected.append(Rejection(client_id, *problem))
                continue
        record, metrics = array_records[0], dict(metric_records[0])
        num_examples = metrics.get(weighted_by_key, float("nan"))
        compression = msg.content.get(COMPRESSION_RECORD)
        if isinstance(compression, ConfigRecord):  # sent through compression_mod
            if round_.global_weights is None:
                raise ConfigError(
                    f"{strategy}.aggregate_train: client {client_id} sent a "
                    "compressed update, and decoding it needs the global model the "
                    "client trained from; call configure_train first or set current_arrays.")
            try:
                names, weights = decode_compressed(record, compression, round_.global_weights)
            except (ValueError, KeyError) as err:
                rejected.append(Rejection(client_id, "malformed", f"bad compressed update: {err}"))
                continue
            if names != keys:
                rejected.append(Rejection(client_id, "malformed", "compressed update has other array keys"))
                continue
            updates.append(ClientUpdate(client_id, weights, num_examples, metrics))
            if delta is not None:
                deltas[client_id] = delta
            continue
        if keys is None:
            keys = list(record.keys())
            if not round_.global_keys:
                round_.global_keys = keys
        if list(record.keys()) != keys:
            reason = "wrong_num_arrays" if len(record) != len(keys) else "malformed"
            rejected.append(Rejection(
                client_id, reason,
                f"expected array keys {keys[:5]}... ({len(keys)}); "
                f"got {list(record.keys())[:5]}... ({len(record)})"))
            continue
        try:
            weights = arrayrecord_views(record, keys)
        except ValueError as err:
            rejected.append(Rejection(client_id, "malformed", f"undecodable array: {err}"))
            continue
        updates.append(ClientUpdate(client_id, weights, num_examples, metrics))
        if delta is not None:
            deltas[client_id] = delta
    return updates, rejected, deltas

def _control_delta(
    msg: Message, keys: list[str] | None, round_: RoundAggregator, strategy: str
) -> tuple[list[np.ndarray] | None, tuple[str, str] | None]:
    """SCAFFOLD's ``delta_c`` of a reply (``None``: the reply has none), or
    ``(reason, detail)`` why it is unusable."""
    record = msg.content.array_records.get(SCAFFOLD_DELTA_RECORD)
    if record is None:  # a client that does not run SCAFFOLD: delta_c = 0
        return None, None
    if round_.global_weights is None or keys is None:
        raise ConfigError(
            f"{strategy}.aggregate_train: SCAFFOLD needs the global model and "
            "its control variate; call configure_train first.")
    if list(record.keys()) != keys:
        return None, ("malformed", f"SCAFFOLD: {SCAFFOLD_DELTA_RECORD!r} has keys "
                      f"{list(record.keys())[:5]}...; expected the model's {keys[:5]}...")
    try:
        delta = arrayrecord_views(record, keys)
    except ValueError as err:
        return None, ("malformed", f"SCAFFOLD: undecodable delta_c: {err}")
    problem = round_.control_variate.check_delta(delta)
    if problem is not None:
        reason, detail = problem
        return None, (reason, f"SCAFFOLD: {detail}")
    return delta, None
