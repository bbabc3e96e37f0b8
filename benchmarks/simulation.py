"""Simulation speed side by side: fedloom's engines vs a stock Flower app vs a plain loop.

Workload (issues 3 and 7): scikit-learn digits, 100 clients, Dirichlet(0.5) label skew,
10 clients per round, MLP 64-64-10, SGD lr 0.1, batch 10, 1 local epoch, central
evaluation on the test split after every round. Variants, each in a fresh process:

- ``fedloom-local``: ``simulate.py``'s path on fedloom's Ray-free engine (the default);
- ``fedloom-ray``: the same path and client code on Flower's Ray engine (``engine=flower``);
- ``flower-quickstart``: a stock Flower app (Flower's FedAvg, Ray engine) whose ClientApp
  follows Flower's TensorFlow quickstart: build and compile the Keras model in every call,
  then ``model.fit``;
- ``plain-loop``: one process, no Flower: one cached compiled Keras model, ``model.fit``
  per client, a numpy weighted average.

For each: median seconds per round (rounds 2..; the first includes lazy start-up work),
start-up seconds (launch until the end of round 1, minus one median round: everything a
run pays before its rounds reach their steady pace, Ray's actor start included), peak
memory of the process tree (summed PSS of the process and all its descendants, sampled
every 0.1 s; summed RSS beside it, see ``process_tree.py``), final test accuracy. All
use the same client partitions and seeded client sampling where the framework allows.
Each variant runs once per seed (the seed moves the partition, the sampling and the
model's start); the JSON keeps every run and the mean and sample standard deviation
over seeds.

Run: ``python benchmarks/simulation.py`` (3 seeds: about 18 minutes on 2 cores; 100
rounds, so that every variant is near its final accuracy); writes
``benchmarks/results/simulation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from process_tree import run_sampled  # noqa: E402  (sibling module of the benchmarks)
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fedloom-local", "fedloom-ray", "flower-quickstart", "plain-loop")
NUM_CLIENTS, PER_ROUND = 100, 10
SEED = 0  # this process's seed: set from --seed in a child
LEARNING_RATE, BATCH_SIZE, EPOCHS, HIDDEN = 0.1, 10, 1, (64, 64)


# ----------------------------------------------------------------------------- children
def workload_config(engine: str, rounds: int) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [
        "dataset=digits", "partition=dirichlet", "partition.alpha=0.5", "model=mlp",
        f"model.hidden=[{HIDDEN[0]},{HIDDEN[1]}]", "strategy=weighted", f"engine={engine}",
        f"num_clients={NUM_CLIENTS}", f"clients_per_round={PER_ROUND}", f"num_rounds={rounds}",
        f"learning_rate={LEARNING_RATE}", f"batch_size={BATCH_SIZE}", f"local_epochs={EPOCHS}",
        f"seed={SEED}", "plot=false",
        # the local engine's worker threads: 1, as measured (engine.workers' default was 1
        # then; the worker-count sweep is benchmarks/scale.py --sections workers)
        *(["engine.workers=1"] if engine == "local" else []),
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def clients_and_test():
    from fedloom.experiment import RunSettings, builders

    settings = RunSettings.from_config(workload_config("local", 1))
    return builders.federated_data(builders.data_key(settings))


def run_fedloom(engine: str, rounds: int) -> dict:
    from fedloom.experiment import run_experiment

    with tempfile.TemporaryDirectory() as out:
        records = run_experiment(workload_config(engine, rounds), out)
    return {"round_end": [r["time"] for r in records], "final_accuracy": records[-1]["accuracy"]}


def quickstart_model():
    """Flower's TensorFlow quickstart builds and compiles this in every ClientApp call."""
    import keras

    model = keras.Sequential([keras.Input(shape=(64,)),
                              *[keras.layers.Dense(h, activation="relu") for h in HIDDEN],
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run_flower_quickstart(rounds: int) -> dict:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    dataset, _ = clients_and_test()
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        # Loaded in the Ray worker (cached per process): the client data holds a lock, so
        # a closure over it cannot be sent to Ray's actors.
        _, clients = clients_and_test()
        data = clients[int(context.node_config["partition-id"])]
        model = quickstart_model()  # the quickstart pattern: a new model for every message
        model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
        config = msg.content["config"]
        model.fit(data.x_train, data.y_train, epochs=int(config["local-epochs"]),
                  batch_size=int(config["batch-size"]), verbose=0)
        return Message(RecordDict({"arrays": ArrayRecord(model.get_weights()),
                                   "metrics": MetricRecord({"num-examples": len(data.x_train)})}),
                       reply_to=msg)

    times: list[float] = []
    accuracy: list[float] = []
    server_model = quickstart_model()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_model.set_weights(arrays.to_numpy_ndarrays())
        _, acc = server_model.evaluate(dataset.x_test, dataset.y_test, verbose=0)
        times.append(time.time())
        accuracy.append(float(acc))
        return MetricRecord({"accuracy": float(acc)})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        FedAvg(fraction_train=PER_ROUND / NUM_CLIENTS, min_train_nodes=PER_ROUND,
               min_available_nodes=NUM_CLIENTS, fraction_evaluate=0.0).start(
            grid=grid, initial_arrays=ArrayRecord(quickstart_model().get_weights()),
            num_rounds=rounds, evaluate_fn=evaluate,
            train_config=ConfigRecord({"local-epochs": EPOCHS, "batch-size": BATCH_SIZE}))

    run_simulation(server_app, client_app, NUM_CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return {"round_end": times, "final_accuracy": accuracy[-1]}


def run_plain_loop(rounds: int) -> dict:
    import random

    import numpy as np

    dataset, clients = clients_and_test()
    model = quickstart_model()
    weights = model.get_weights()
    rng = random.Random(SEED)
    times, accuracy = [], []
    for server_round in range(rounds + 1):
        if server_round:
            updates, sizes = [], []
            for k in rng.sample(range(NUM_CLIENTS), PER_ROUND):
                model.set_weights(weights)
                model.fit(clients[k].x_train, clients[k].y_train, epochs=EPOCHS,
                          batch_size=BATCH_SIZE, verbose=0)
                updates.append(model.get_weights())
                sizes.append(len(clients[k].x_train))
            share = np.asarray(sizes, dtype=np.float64) / sum(sizes)
            weights = [sum(s * u[i] for s, u in zip(share, updates)).astype(np.float32)
                       for i in range(len(weights))]
        model.set_weights(weights)
        accuracy.append(float(model.evaluate(dataset.x_test, dataset.y_test, verbose=0)[1]))
        times.append(time.time())
    return {"round_end": times, "final_accuracy": accuracy[-1]}


def child(variant: str, rounds: int, out: str) -> None:
    launched = float(os.environ["FEDLOOM_BENCH_LAUNCHED"])
    if variant in ("fedloom-local", "fedloom-ray"):
        result = run_fedloom("local" if variant == "fedloom-local" else "flower", rounds)
    elif variant == "flower-quickstart":
        result = run_flower_quickstart(rounds)
    else:
        result = run_plain_loop(rounds)
    result["launched"] = launched
    Path(out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- parent
SUMMARISED = ("median_round_s", "startup_s", "peak_tree_pss_bytes", "peak_tree_rss_bytes",
              "final_accuracy")


def measure_run(variant: str, rounds: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "FEDLOOM_BENCH_LAUNCHED": repr(time.time()),
               "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        run = run_sampled(__file__, ["--child", variant, "--rounds", str(rounds), "--seed", str(seed),
                                     "--out", str(out)], env, timeout=1800)
        result = json.loads(out.read_text())
    ends = result["round_end"]  # ends[0]: initial evaluation; ends[r]: end of round r
    round_s = [b - a for a, b in zip(ends, ends[1:])]
    median = statistics.median(round_s[1:] or round_s)
    return {"seed": seed, "median_round_s": median, "startup_s": ends[1] - result["launched"] - median,
            **run.memory(), "final_accuracy": result["final_accuracy"],
            "wall_s": run.wall_s, "rounds": rounds, "round_s": round_s}


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each of ``SUMMARISED`` (sd 0 for one run)."""
    mean, sd = {}, {}
    for key in SUMMARISED:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            mean[key] = statistics.fmean(values)
            sd[key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run each")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's seed
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "simulation.json"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        global SEED
        SEED = args.seed
        child(args.child, args.rounds, args.out)
        return

    about = provenance()  # before the runs: its load average says whether the machine was idle
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for variant in args.variants.split(","):
        runs = []
        for seed in seeds:
            runs.append(r := measure_run(variant, args.rounds, seed))
            print(f"{variant:18s} seed {seed}  round {r['median_round_s'] * 1e3:8.1f} ms   "
                  f"start-up {r['startup_s']:5.1f} s   peak memory PSS "
                  f"{(r['peak_tree_pss_bytes'] or 0) / 2**30:5.2f} GiB (RSS "
                  f"{r['peak_tree_rss_bytes'] / 2**30:5.2f})   accuracy {r['final_accuracy']:.4f}", flush=True)
        results[variant] = summarise(runs)
    report = {"provenance": about,
              "workload": {"dataset": "digits", "num_clients": NUM_CLIENTS, "clients_per_round": PER_ROUND,
                           "partition": "dirichlet(0.5)", "model": "mlp 64-64-10", "lr": LEARNING_RATE,
                           "batch_size": BATCH_SIZE, "local_epochs": EPOCHS, "rounds": args.rounds,
                           "seeds": seeds},
              "variants": results}

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return results[a]["mean"]["median_round_s"] / results[b]["mean"]["median_round_s"]
        return None
    report["ratios"] = {
        "fedloom_local_over_flower_quickstart": ratio("fedloom-local", "flower-quickstart"),
        "fedloom_local_over_plain_loop": ratio("fedloom-local", "plain-loop"),
        "fedloom_local_over_fedloom_ray": ratio("fedloom-local", "fedloom-ray"),
    }
    targets = {}
    if report["ratios"]["fedloom_local_over_flower_quickstart"] is not None:
        targets["issue3_at_most_1/10_of_quickstart"] = report["ratios"]["fedloom_local_over_flower_quickstart"] <= 0.1
    if report["ratios"]["fedloom_local_over_plain_loop"] is not None:
        targets["issue3_at_most_1/2_of_plain_loop"] = report["ratios"]["fedloom_local_over_plain_loop"] <= 0.5
    if report["ratios"]["fedloom_local_over_fedloom_ray"] is not None:
        local = results["fedloom-local"]["mean"]
        targets["issue7_at_most_1/5_of_ray"] = report["ratios"]["fedloom_local_over_fedloom_ray"] <= 0.2
        targets["issue7_startup_under_5s"] = local["startup_s"] < 5.0
        targets["issue7_peak_memory_under_1GB"] = local.get("peak_tree_pss_bytes", local["peak_tree_rss_bytes"]) < 1e9
    report["targets_met"] = targets
    print(json.dumps({"ratios": report["ratios"], "targets_met": targets}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
