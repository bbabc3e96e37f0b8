"""Per-round history of an experiment: records, ``history.json``, progress lines, plot.

One record per round (round 0 is the initial model):

=================  ===========================================================
key                meaning
=================  ===========================================================
round              server round (0 = before training)
accuracy, loss     the global model on the central test set
num_clients        client updates aggregated this round
num_rejected       updates left out (``rejected`` maps reason -> count)
bytes_up           bytes of the train replies as Flower sends them (every reply)
bytes_down         bytes of the train messages sent to this round's clients
payload_up         the arrays' ``.npy`` bytes within bytes_up
payload_down       the arrays' ``.npy`` bytes within bytes_down
seconds            wall time of the round (training, aggregation, evaluation)
time               Unix time the record was made
cumulative_*       running totals of bytes and seconds
train_*, client_*  the clients' reported metrics, averaged by example count
dp_*               DP runs, rounds >= 1: privacy spent (``fedloom.privacy``)
stopped_reason     why the run ended before ``num_rounds`` (privacy budget)
stopped_early      (last record only, when ``early_stop`` ended the run) why
=================  ===========================================================
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunHistory", "plot_history", "load_history"]


class RunHistory:
    """Collects round records, prints one progress line per round, writes ``history.json``.

    The file is rewritten atomically after every round, so a killed run keeps every
    completed round.
    """

    def __init__(self, output_dir: str | Path, num_rounds: int, records: list[dict] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "history.json"
        self.num_rounds = num_rounds
        self.records: list[dict[str, Any]] = list(records or [])
        self._last_time = time.perf_counter()

    def restart_clock(self) -> None:
        self._last_time = time.perf_counter()

    def record_round(self, server_round: int, metrics: Mapping[str, float], report: Any | None) -> dict:
        """Add the record of ``server_round``; ``report`` is the strategy's
        :class:`~fedloom.strategies.RoundReport` (``None`` for round 0)."""
        now = time.perf_counter()
        seconds = 0.0 if server_round == 0 else now - self._last_time
        self._last_time = now
        previous = self.records[-1] if self.records else {}
        record: dict[str, Any] = {
            "round": server_round,
            "accuracy": float(metrics["accuracy"]),
            "loss": float(metrics["loss"]),
            "num_clients": len(report.clients_used) if report else 0,
            "num_rejected": len(report.rejected) if report else 0,
            "rejected": report.rejected_counts() if report else {},
            "skipped": bool(report.skipped_reason) if report else False,
            "bytes_up": int(report.bytes_received) if report else 0,
            "bytes_down": int(report.bytes_sent) if report else 0,
            "payload_up": int(report.payload_received) if report else 0,
            "payload_down": int(report.payload_sent) if report else 0,
            "seconds": seconds,
            "time": time.time(),
            "aggregation_seconds": float(report.aggregation_seconds) if report else 0.0,
        }
        for key in ("bytes_up", "bytes_down", "seconds"):
            record[f"cumulative_{key}"] = previous.get(f"cumulative_{key}", 0) + record[key]
        if report:  # e.g. train_loss, client_quality, client_val_accuracy
            record.update({k if k.startswith("train_") else f"client_{k}": v
                           for k, v in report.client_metrics.items()})
        record.update({k: _json_value(v) for k, v in metrics.items() if k not in ("accuracy", "loss")})
        self.records.append(record)
        self.write()
        self.print_progress(record)
        return record

    def annotate(self, server_round: int, fields: Mapping[str, Any]) -> None:
        """Add ``fields`` (e.g. the privacy spent, known once the round has ended) to
        the record of ``server_round`` and rewrite ``history.json``."""
        for record in reversed(self.records):
            if record["round"] == server_round:
                record.update(fields)
                self.write()
                return
        raise KeyError(f"history has no record of round {server_round} to annotate.")

    def print_progress(self, record: Mapping[str, Any]) -> None:
        rejected = f" (rejected {record['num_rejected']})" if record["num_rejected"] else ""
        print(
            f"round {record['round']:>3}/{self.num_rounds}  accuracy {record['accuracy']:.4f}  "
            f"loss {record['loss']:.4f}  clients {record['num_clients']}{rejected}  "
            f"{record['seconds']:.2f} s  up {record['bytes_up'] / 1e6:.2f} MB  "
            f"down {record['bytes_down'] / 1e6:.2f} MB",
            flush=True,
        )

    def mark_stopped(self, reason: str) -> None:
        """Record on the last round's record that the run stops there, and why."""
        self.records[-1]["stopped_early"] = reason
        self.write()

    def write(self) -> None:
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.records, indent=1))
        os.replace(temporary, self.path)


def load_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/history.json``."""
    return json.loads((Path(run_dir) / "history.json").read_text())


def plot_history(records: list[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write a PNG with test accuracy and loss per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in records]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(rounds, [r["accuracy"] for r in records], marker=".")
    left.set(xlabel="round", ylabel="test accuracy", title="accuracy")
    right.plot(rounds, [r["loss"] for r in records], marker=".", color="tab:red")
    right.set(xlabel="round", ylabel="test loss", title="loss")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def _json_value(value: Any) -> Any:
    """A number as a Python float; ``None`` and text (e.g. ``dp_epsilon: null``,
    ``stopped_reason``) as they are."""
    return value if value is None or isinstance(value, str) else float(value)
