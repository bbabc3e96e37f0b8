"""A trivial numpy Flower app: what a deployed round costs without fedloom or TensorFlow.

The ServerApp runs Flower's own ``FedAvg`` over every connected SuperNode each round
(``num_clients`` of them, all training), on arrays of the shape of the Keras benchmark's
MLP 64-64-10 (8,970 float32 weights); each ClientApp call adds 0.01 to every weight and
replies. Its ``history.json`` has the keys ``benchmarks/deployment.py`` reads from
fedloom's: ``round``, ``time`` (Unix seconds at the end of the round; round 0 = before
round 1) and ``seconds`` (the round's duration). The ClientApp process imports only
Flower and numpy, so a round's time is Flower's floor: a ClientApp process started per
message, the SuperNodes' and ServerApp's polling, and the transfer of the messages.

Run config (``flwr run --run-config``): ``overrides`` (``num_clients=N num_rounds=R`` in
Hydra form, only these two keys are read), ``output-dir``, ``connect-timeout``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

SHAPES = [(64, 64), (64,), (64, 64), (64,), (64, 10), (10,)]  # MLP 64-64-10: 8,970 weights

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    weights = [w + np.float32(0.01) for w in msg.content["arrays"].to_numpy_ndarrays()]
    return Message(RecordDict({"arrays": ArrayRecord(weights),
                               "metrics": MetricRecord({"num-examples": 100})}), reply_to=msg)


def _settings(overrides: str) -> dict[str, int]:
    values = dict(item.split("=", 1) for item in overrides.split() if "=" in item)
    return {"num_clients": int(values.get("num_clients", 3)), "num_rounds": int(values.get("num_rounds", 3))}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    settings = _settings(str(context.run_config.get("overrides", "")))
    output_dir = Path(str(context.run_config.get("output-dir") or "outputs/numpy-floor"))
    output_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + float(context.run_config.get("connect-timeout", 600))
    while len(list(grid.get_node_ids())) < settings["num_clients"]:  # all sites, as fedloom's app
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {settings['num_clients']} SuperNodes connected")
        time.sleep(1.0)
    records: list[dict] = []

    def record(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        now = time.time()
        seconds = now - records[-1]["time"] if records else 0.0
        records.append({"round": server_round, "time": now, "seconds": seconds})
        (output_dir / "history.json").write_text(json.dumps(records, indent=1))
        return MetricRecord({"round": server_round})

    rng = np.random.default_rng(0)
    initial = ArrayRecord([rng.standard_normal(s).astype(np.float32) for s in SHAPES])
    num = settings["num_clients"]
    FedAvg(fraction_train=1.0, min_train_nodes=num, min_available_nodes=num,
           fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial,
                                        num_rounds=settings["num_rounds"], evaluate_fn=record,
                                        train_config=ConfigRecord({"local-epochs": 1}))
