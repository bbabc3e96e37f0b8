"""Per-round reports of what a fedloom strategy did, as logs, Flower metrics and history.

Flower's ``MetricRecord`` accepts only numbers, so reasons are counted per tag
(``rejected-non_finite: 2``); the full list with client ids and details is logged and
kept in :attr:`RoundReport.rejected`. The round itself is aggregated by
:class:`fedloom.strategies.round.RoundAggregator`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedloom.aggregation import AggregationResult, ClientUpdate
from fedloom.strategies.guards import DEFAULT_ABSURD_NORM_RATIO, absurd_norm_guards  # older imports

__all__ = [
    "RoundReport",
    "average_client_metrics",
    "absurd_norm_guards",
    "DEFAULT_ABSURD_NORM_RATIO",
    "LOGGER",
]

LOGGER = logging.getLogger("fedloom")


@dataclass
class RoundReport:
    """What happened in one training round's aggregation.

    Attributes:
        server_round: the round (from 1).
        method: name of the pipeline that aggregated it.
        num_received: replies received (including errors).
        clients_used: ids of the clients whose updates made the new model.
        rejected: ``(client_id, reason, detail)`` for each update left out.
        bytes_received: serialized bytes of the round's train replies as Flower sends
            them (every reply, errors and rejected ones included; see
            ``fedloom.records.message_num_bytes``).
        bytes_sent: serialized bytes of the round's train messages to its clients.
        payload_received: the ``.npy`` bytes of the arrays in those replies (model,
            SCAFFOLD's ``delta_c``): the part of ``bytes_received`` that is arrays.
        payload_sent: the ``.npy`` bytes of the arrays in the train messages.
        aggregation_seconds: wall time spent aggregating.
        skipped_reason: non-empty when the global model was kept unchanged.
        client_metrics: the used clients' metrics averaged, weighted by num_examples.
    """

    server_round: int
    method: str
    num_received: int
    clients_used: list[str]
    rejected: list[tuple[str, str, str]]
    bytes_received: int
    aggregation_seconds: float
    bytes_sent: int = 0
    payload_received: int = 0
    payload_sent: int = 0
    skipped_reason: str = ""
    client_metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_result(
        cls,
        server_round: int,
        method: str,
        num_received: int,
        result: AggregationResult,
        bytes_received: int,
        updates: Sequence[ClientUpdate],
        bytes_sent: int = 0,
        *,
        payload_received: int = 0,
        payload_sent: int = 0,
    ) -> RoundReport:
        used = set(result.used)
        return cls(
            server_round=server_round,
            method=method,
            num_received=num_received,
            clients_used=list(result.used),
            rejected=[(r.client_id, r.reason, r.detail) for r in result.rejected],
            bytes_received=bytes_received,
            bytes_sent=bytes_sent,
            payload_received=payload_received,
            payload_sent=payload_sent,
            aggregation_seconds=result.seconds,
            skipped_reason=result.skipped_reason,
            client_metrics=average_client_metrics(
                [(u.num_examples, u.metrics) for u in updates if u.client_id in used]
            ),
        )

    def rejected_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, reason, _ in self.rejected:
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def as_metrics(self) -> dict[str, int | float]:
        """Flat numeric metrics (Flower-compatible keys) for this round."""
        metrics: dict[str, int | float] = dict(self.client_metrics)
        metrics.update(
            {
                "clients-used": len(self.clients_used),
                "clients-rejected": len(self.rejected),
                "bytes-received": int(self.bytes_received),
                "bytes-sent": int(self.bytes_sent),
                "payload-received": int(self.payload_received),
                "payload-sent": int(self.payload_sent),
                "aggregation-seconds": float(self.aggregation_seconds),
                "round-skipped": int(bool(self.skipped_reason)),
            }
        )
        for reason, count in self.rejected_counts().items():
            metrics[f"rejected-{reason}"] = count
        return metrics

    def log(self, logger: logging.Logger = LOGGER) -> None:
        for client_id, reason, detail in self.rejected:
            logger.warning(
                "round %d: update from client %s rejected (%s): %s",
                self.server_round, client_id, reason, detail,
            )
        if self.skipped_reason:
            logger.warning("round %d skipped: %s", self.server_round, self.skipped_reason)
        logger.info(
            "round %d: %s aggregated %d of %d updates in %.3f s (%.2f MB received)",
            self.server_round, self.method, len(self.clients_used), self.num_received,
            self.aggregation_seconds, self.bytes_received / 1e6,
        )


def average_client_metrics(
    metrics: Sequence[tuple[float, Mapping[str, object]]],
) -> dict[str, float]:
    """Average numeric client metrics weighted by ``num_examples``.

    Keys missing from some clients are averaged over the clients that report them;
    non-numeric and non-finite values are ignored. Zero total weight falls back to a
    plain mean.
    """
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    plain: dict[str, float] = {}
    for num_examples, values in metrics:
        for key, value in values.items():
            if key == "num-examples" or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            sums[key] = sums.get(key, 0.0) + float(num_examples) * float(value)
            totals[key] = totals.get(key, 0.0) + float(num_examples)
            plain[key] = plain.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {
        key: sums[key] / totals[key] if totals[key] > 0 else plain[key] / counts[key]
        for key in sums
    }
