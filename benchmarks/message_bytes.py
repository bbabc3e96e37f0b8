"""What counting a round's bytes on the wire costs the server.

A fedloom strategy counts every train message it sends and every reply it receives
with ``fedloom.records.message_num_bytes`` (Flower 1.42's object split, deflate and
SHA-256 ids). This times, for one round of K clients:

- ``sent_shared_ms``: the K train messages, whose content (model, config) is one
  shared ``RecordDict``, counted with ``messages_num_bytes`` (content once);
- ``sent_each_ms``: the same K messages counted one by one;
- ``received_ms``: K distinct replies (model + metrics) counted one by one;
- ``received_recompute_ms``: the same without Flower's ``no_object_id_recompute``
  (object ids recomputed whenever asked, the cost before it was used).

Models: the default digits MLP (64-64-64-10, 8,970 parameters) and a 1M-parameter MLP.
Writes ``results/message_bytes.json``. Run: ``python benchmarks/message_bytes.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from fedloom.records import message_num_bytes, messages_num_bytes, ndarrays_to_arrayrecord

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

MODELS = {
    "digits_mlp": [(64, 64), (64,), (64, 64), (64,), (64, 10), (10,)],
    "mlp_1m": [(784, 1000), (1000,), (1000, 200), (200,), (200, 74)],
}


def recomputing_num_bytes(message: Message) -> int:
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def best_ms(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def measure(shapes, clients: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    keys = [str(i) for i in range(len(shapes))]
    content = RecordDict({"arrays": ndarrays_to_arrayrecord(weights, keys),
                          "config": ConfigRecord({"local-epochs": 1, "batch-size": 10})})
    sent = [Message(content, dst_node_id=k + 2, message_type="train") for k in range(clients)]

    def replies():  # fresh objects: no id cached from an earlier repeat
        return [Message(RecordDict({
            "arrays": ndarrays_to_arrayrecord([w + np.float32(k) for w in weights], keys),
            "metrics": MetricRecord({"num-examples": 50, "train_loss": 0.5})}), reply_to=m)
            for k, m in enumerate(sent)]

    def timed_replies(count) -> float:
        times = []
        for _ in range(repeats):
            batch = replies()
            start = time.perf_counter()
            for reply in batch:
                count(reply)
            times.append(time.perf_counter() - start)
        return 1e3 * min(times)

    assert messages_num_bytes(sent) == sum(map(message_num_bytes, sent))
    return {
        "parameters": int(sum(np.prod(s) for s in shapes)),
        "message_bytes": message_num_bytes(sent[0]),
        "sent_shared_ms": best_ms(lambda: messages_num_bytes(sent), repeats),
        "sent_each_ms": best_ms(lambda: [message_num_bytes(m) for m in sent], repeats),
        "received_ms": timed_replies(message_num_bytes),
        "received_recompute_ms": timed_replies(recomputing_num_bytes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "message_bytes.json"))
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # as in a ServerApp
    report = {"provenance": provenance(), "clients": args.clients, "repeats": args.repeats,
              "models": {name: measure(shapes, args.clients, args.repeats)
                         for name, shapes in MODELS.items()}}
    print(json.dumps(report["models"], indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
