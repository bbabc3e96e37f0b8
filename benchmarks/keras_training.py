"""Micro-benchmark: seconds per client update for three ways of training Keras locally.

Setting (cross-device FL on a tiny local dataset): scikit-learn digits (x / 16, flat
64 features), MLP 64-64-10, plain SGD with learning rate 0.1, batch size 10, one
local epoch, 10 clients of about 14 examples each. Every client update starts from
the same global weights and returns new weights, as a Flower client does.

  (a) quickstart: Flower's TensorFlow quickstart style -- build and compile a new
      model, set the weights, ``model.fit``, ``get_weights`` on every call;
  (b) cached_fit: one model built and compiled once, then ``set_weights`` +
      ``model.fit`` + ``get_weights`` per call;
  (c) fedloom: ``fedloom.clients.KerasTrainer.fit`` (one graph call per update).

The first round of each method (model building, graph tracing) is excluded from
the median: in a simulation that cost is paid once per worker process.

Usage::

    python benchmarks/keras_training.py [--rounds 20] [--threads N]

Prints a table and writes ``benchmarks/results/keras_training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NUM_CLIENTS = 10
EXAMPLES_PER_CLIENT = 14
BATCH_SIZE = 10
LEARNING_RATE = 0.1
EPOCHS = 1


def client_datasets(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """10 disjoint random shards of digits with 13-15 examples each (~14)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    index = rng.permutation(len(x))
    sizes = [EXAMPLES_PER_CLIENT + (i % 3) - 1 for i in range(NUM_CLIENTS)]
    bounds = np.cumsum([0, *sizes])
    return [(x[index[a:b]], y[index[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def run_method(update, clients, rounds: int) -> dict:
    """Median/mean seconds per client update over rounds 2..rounds (round 1 = warm-up)."""
    times: list[float] = []
    first_round: list[float] = []
    for r in range(rounds):
        for c, (x, y) in enumerate(clients):
            start = time.perf_counter()
            update(x, y, seed=1000 * r + c)
            elapsed = time.perf_counter() - start
            (first_round if r == 0 else times).append(elapsed)
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "first_round_mean_s": statistics.fmean(first_round),
        "updates_timed": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds for (b) and (c)")
    parser.add_argument(
        "--quickstart-rounds", type=int, default=4, help="rounds for (a), which is slow"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="TensorFlow intra-/inter-op threads (default: TensorFlow's own choice)",
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "keras_training.json"
    )
    args = parser.parse_args()

    from fedloom.clients.trainer import KerasTrainer, configure_tensorflow_threads

    if args.threads is not None:
        configure_tensorflow_threads(args.threads, args.threads)

    import keras
    import tensorflow as tf

    # (a) makes a new model.fit graph per update; TF warns about that retracing.
    tf.get_logger().setLevel("ERROR")

    from fedloom.models import ModelSpec

    spec = ModelSpec("mlp", (64,), 10, seed=0, options={"hidden": (64, 64)})
    clients = client_datasets()
    global_weights = spec.build().get_weights()

    def compile_(model):
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def quickstart(x, y, seed):
        model = compile_(spec.build())  # a new model for every update
        model.set_weights(global_weights)
        model.fit(x, y, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
        return model.get_weights()

    cached = compile_(spec.build())

    def cached_fit(x, y, seed):
        cached.set_weights(global_weights)
        cached.fit(x, y, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
        return cached.get_weights()

    trainer = KerasTrainer(spec)

    def fedloom_fit(x, y, seed):
        return trainer.fit(
            global_weights,
            x,
            y,
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE,
            seed=seed,
        )

    results = {
        "a_quickstart": run_method(quickstart, clients, args.quickstart_rounds),
        "b_cached_fit": run_method(cached_fit, clients, args.rounds),
        "c_fedloom": run_method(fedloom_fit, clients, args.rounds),
    }
    fedloom_s = results["c_fedloom"]["median_s"]
    speedup = {
        "b_over_c": results["b_cached_fit"]["median_s"] / fedloom_s,
        "a_over_c": results["a_quickstart"]["median_s"] / fedloom_s,
        "a_over_b": results["a_quickstart"]["median_s"] / results["b_cached_fit"]["median_s"],
    }
    from provenance import provenance

    report = {
        "benchmark": "seconds per client update (median over rounds 2..R)",
        "provenance": {**provenance(),
                       "tf_threads": args.threads if args.threads is not None else "default"},
        "rounds": {"a_quickstart": args.quickstart_rounds, "b_cached_fit": args.rounds,
                   "c_fedloom": args.rounds},
        "setting": {
            "data": "sklearn digits, x/16, flat (64,)",
            "model": "mlp 64-64-10 (softmax)",
            "optimizer": f"SGD lr={LEARNING_RATE}",
            "batch_size": BATCH_SIZE,
            "local_epochs": EPOCHS,
            "clients": NUM_CLIENTS,
            "examples_per_client": [len(x) for x, _ in clients],
        },
        "results": results,
        "fedloom_trace_count": trainer.tracing_count,
        "speedup": speedup,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'method':<16}{'median s/update':>18}{'mean':>12}{'first round':>14}")
    for name, r in results.items():
        print(
            f"{name:<16}{r['median_s']:>18.5f}{r['mean_s']:>12.5f}{r['first_round_mean_s']:>14.4f}"
        )
    print(
        f"speed-up: (b)/(c) = {speedup['b_over_c']:.1f}x, (a)/(c) = {speedup['a_over_c']:.0f}x, "
        f"(a)/(b) = {speedup['a_over_b']:.1f}x  [tf threads: {report['provenance']['tf_threads']}]"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
