"""Convergence and communication of every shipped strategy on four federated tasks.

Setups (issue 6):

- ``digits``: scikit-learn digits, 100 clients, Dirichlet(0.5) label skew, 10 per round,
  MLP 64-64, E=1, B=10, lr 0.1.
- ``fashion``: full Fashion-MNIST, 100 clients, pathological non-IID as in McMahan et al.
  2017 (sorted by label, 200 shards of 300, 2 per client), C=0.1, E=5, B=10, the 2NN.
- ``heart``: heart disease, natural split by hospital (4 clients, all every round), logistic
  regression, E=1, B=10.
- ``synthetic``: FedProx Synthetic(1,1) (Li et al. 2020), 30 devices as clients, 10 per
  round, logistic regression, E=5, B=10, lr 0.01.

Each strategy config of ``conf/strategy/`` runs on each setup (robust ones with settings
the client count allows), plus int8 and top-k (10%) compression of ``weighted`` on digits
and Fashion-MNIST. Each setup gets a report (``fedloom.report``): a plot of accuracy per
round and per megabyte, and a table. Everything lands in ``benchmarks/results/``:
``convergence.md`` (all tables), ``convergence.json`` and ``convergence_<setup>.png``;
a run with ``--setups`` replaces those setups' tables and keeps the others.

Every run is repeated for each of ``--seeds`` (default 0,1,2; the seed moves the
partition, the sampling and the model's start); tables give the mean ± sample standard
deviation over seeds, the JSON keeps every seed's summary, and the plots show the
first seed.

Run: ``python benchmarks/convergence.py`` (all, 3 seeds; about an hour on 2 cores) or
``--setups digits,heart --rounds-scale 0.5 --seeds 0``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from provenance import provenance  # noqa: E402
from readme_figures import convergence_table, measured  # noqa: E402
STRATEGIES = ["simple", "weighted", "weighted_quality", "size_quality", "fedavg",
              "warmup_fedavg", "robust_trimmed", "robust_krum", "robust_median", "robust_centered_clip"]

SETUPS = {
    "digits": {"rounds": 100, "target": 0.85, "compression": True, "overrides": [
        "dataset=digits", "partition=dirichlet", "partition.alpha=0.5", "num_clients=100",
        "clients_per_round=10", "model=mlp", "local_epochs=1", "batch_size=10", "learning_rate=0.1"]},
    "fashion": {"rounds": 40, "target": 0.75, "compression": True, "overrides": [
        "dataset=fashion_mnist", "partition=shards", "partition.num_shards_per_partition=2",
        "num_clients=100", "clients_per_round=10", "model=mcmahan_2nn", "local_epochs=5",
        "batch_size=10", "learning_rate=0.05", "val_fraction=0.1"]},
    "heart": {"rounds": 50, "target": 0.8, "compression": False, "overrides": [
        "dataset=heart_disease", "partition=natural", "num_clients=4", "clients_per_round=4",
        "model=logreg", "local_epochs=1", "batch_size=10", "learning_rate=0.05"],
        "strategy_overrides": {"robust_trimmed": ["strategy.beta=0.25", "strategy.bucket_size=1"],
                               "robust_median": ["strategy.bucket_size=1"],
                               "robust_krum": ["strategy.num_byzantine=1"]}},
    "synthetic": {"rounds": 100, "target": 0.6, "compression": False, "overrides": [
        "dataset=synthetic", "partition=natural", "num_clients=30", "clients_per_round=10",
        "model=logreg", "local_epochs=5", "batch_size=10", "learning_rate=0.01"]},
}


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


def runs_of(setup: dict, rounds: int, seed: int) -> dict[str, list[str]]:
    runs = {}
    for strategy in STRATEGIES:
        runs[strategy] = [f"strategy={strategy}", *setup.get("strategy_overrides", {}).get(strategy, [])]
    if setup["compression"]:
        runs["weighted+int8"] = ["strategy=weighted", "compression=int8"]
        runs["weighted+topk10%"] = ["strategy=weighted", "compression=topk", "compression.density=0.1"]
    return {label: [*setup["overrides"], *extra, f"seed={seed}", f"num_rounds={rounds}", "plot=false"]
            for label, extra in runs.items()}


def run_setup(name: str, setup: dict, rounds: int, seeds: list[int], work: Path) -> dict:
    """Every run of ``name`` once per seed; ``runs`` holds, per label, each seed's summary."""
    from fedloom.experiment import run_experiment
    from fedloom.report import plot, summarise

    per_label: dict[str, list[dict]] = {}
    first_seed_dirs = []
    for seed in seeds:
        for label, overrides in runs_of(setup, rounds, seed).items():
            directory = work / name / label / f"seed-{seed}"
            started = time.time()
            records = run_experiment(compose(overrides), directory)
            print(f"{name:10s} {label:18s} seed {seed}  final {records[-1]['accuracy']:.4f}  "
                  f"{time.time() - started:6.1f} s", flush=True)
            summary = summarise(directory, setup["target"])
            summary.label = label
            per_label.setdefault(label, []).append({"seed": seed, **vars(summary)})
            if seed == seeds[0]:
                first_seed_dirs.append((directory, summary))
    plot([d for d, _ in first_seed_dirs], [s for _, s in first_seed_dirs],
         RESULTS / f"convergence_{name}.png", title=f"{name} ({rounds} rounds, seed {seeds[0]})")
    runs = [{"label": label, "seeds": summaries,
             "mean_final_accuracy": statistics.fmean(s["final_accuracy"] for s in summaries),
             "sd_final_accuracy": (statistics.stdev(s["final_accuracy"] for s in summaries)
                                   if len(summaries) > 1 else 0.0)}
            for label, summaries in per_label.items()]
    return {"target": setup["target"], "rounds": rounds, "seeds": seeds, "overrides": setup["overrides"],
            "runs": runs}


def compression_checks(result: dict) -> dict:
    """Compressed runs against ``weighted``: bytes up and final accuracy, means over seeds."""
    def mean(run: dict, key: str) -> float:
        return statistics.fmean(s[key] for s in run.get("seeds", [run]))

    by_label = {run["label"]: run for run in result["runs"]}
    base = by_label.get("weighted")
    checks = {}
    for label, max_drop in (("weighted+int8", 0.005), ("weighted+topk10%", 0.01)):
        if base and label in by_label:
            run = by_label[label]
            drop = mean(base, "final_accuracy") - mean(run, "final_accuracy")
            checks[label] = {
                "bytes_up_ratio": mean(base, "megabytes_up") / mean(run, "megabytes_up"),
                "accuracy_drop": drop,
                "within_target": drop <= max_drop,
            }
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--rounds-scale", type=float, default=1.0)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run each")
    parser.add_argument("--work", default=str(RESULTS / "convergence"))
    args = parser.parse_args()
    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    about = provenance()  # before the runs: its load average says whether the machine was idle
    report = {"provenance": about, "setups": {}}
    previous = RESULTS / "convergence.json"
    if previous.is_file():  # --setups reruns some setups; the others keep their tables
        report["setups"] = json.loads(previous.read_text()).get("setups", {})
    for name in args.setups.split(","):
        setup = SETUPS[name]
        rounds = max(1, round(setup["rounds"] * args.rounds_scale))
        shutil.rmtree(work / name, ignore_errors=True)
        result = run_setup(name, setup, rounds, seeds, work)
        result["compression"] = compression_checks(result)
        result["provenance"] = about
        report["setups"][name] = result
        print(convergence_table(result), flush=True)
        if result["compression"]:
            print(json.dumps(result["compression"], indent=1), flush=True)
    markdown = ["Each table: `python benchmarks/convergence.py --setups <name>`, measured on the "
                "date and machine below its title.\n"]
    for name, result in report["setups"].items():
        markdown.append(f"### {name} ({result['rounds']} rounds; `{' '.join(result['overrides'])}`)\n")
        markdown.append(measured(result if "provenance" in result else
                                 {"date": result.get("date"), "machine": result.get("machine")}) + "\n")
        markdown.append(convergence_table(result))
        for label, check in result["compression"].items():
            markdown.append(f"- {label}: {check['bytes_up_ratio']:.2f}x fewer bytes up, accuracy "
                            f"{-check['accuracy_drop'] * 100:+.2f} points vs weighted\n")
        markdown.append("")
    (RESULTS / "convergence.md").write_text("\n".join(markdown))
    (RESULTS / "convergence.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / 'convergence.md'}")


if __name__ == "__main__":
    main()
