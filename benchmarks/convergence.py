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
the client count allows; a rule the setup cannot run is listed with the reason), plus int8
and top-k (10%) compression of ``weighted`` on digits and Fashion-MNIST, and a
``centralised`` row: the same model trained on the pooled training data, the ceiling every
federated row is measured against. With ``--grid``, FedAdam/FedYogi/FedAdagrad's server rate
and FedProx's mu are tuned on the setups marked ``grid`` (first seed; the grid is reported).
Each setup gets a plot of accuracy per round and per megabyte (first seed) and a table.
Everything lands in ``benchmarks/results/``: ``convergence.md`` (all tables),
``convergence.json`` and ``convergence_<setup>.png``; ``--setups`` replaces those setups and
keeps the others, ``--rows`` reruns some rows of a setup and keeps its other rows (each row
records the commit it was measured at).

Every run is repeated for each of ``--seeds`` (default 0,1,2; the seed moves the
partition, the sampling and the model's start); tables give the mean ± sample standard
deviation over seeds and the JSON keeps every seed's summary. For Fashion-MNIST and
Synthetic(1,1) the JSON's ``goal`` compares SCAFFOLD, the adaptive optimisers and FedProx
with FedAvg (rounds to target at most 0.8x and at least 2 points higher).

Run: ``python benchmarks/convergence.py --grid`` (all, 3 seeds; several hours on 2 cores),
``--setups fashion --rows scaffold,centralised`` or ``--setups digits --rounds-scale 0.5 --seeds 0``.
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
from readme_figures import arrays_megabytes, convergence_notes, convergence_table  # noqa: E402
STRATEGIES = ["simple", "weighted", "weighted_quality", "size_quality", "fedavg",
              "warmup_fedavg", "robust_trimmed", "robust_krum", "robust_median", "robust_centered_clip",
              "fedadam", "fedyogi", "fedadagrad", "fedprox", "scaffold",
              "robust_bulyan", "robust_geomed", "robust_trimmed_adam"]
CENTRALISED = "centralised"

# Tuned on the setups marked ``grid``, on the first seed, as Reddi et al. 2021 tune the server
# rate per task (Flower's defaults: eta 0.1 for all three) and Li et al. 2020 tune FedProx's mu.
# The value with the best mean accuracy over the last 5 rounds is then run on every seed.
# A setup's ``wider_grids`` adds values beyond an edge where the best value lay there.
GRIDS = {
    "fedadam": ("strategy.server_learning_rate", [0.01, 0.03, 0.1]),
    "fedyogi": ("strategy.server_learning_rate", [0.01, 0.03, 0.1]),
    "fedadagrad": ("strategy.server_learning_rate", [0.03, 0.1, 0.3]),
    "fedprox": ("strategy.proximal_mu", [0.01, 0.1, 1.0]),
}

# central_epochs: passes over the pooled training data for the centralised row, the same
# number of passes the federated run makes in expectation (rounds x E x clients per round /
# clients), so that the ceiling is reached with the same amount of client computation.
SETUPS = {
    "digits": {"rounds": 100, "target": 0.85, "compression": True, "central_epochs": 10, "overrides": [
        "dataset=digits", "partition=dirichlet", "partition.alpha=0.5", "num_clients=100",
        "clients_per_round=10", "model=mlp", "local_epochs=1", "batch_size=10", "learning_rate=0.1"]},
    "fashion": {"rounds": 40, "target": 0.75, "compression": True, "central_epochs": 20, "grid": True,
                "wider_grids": {"fedadam": [0.003], "fedyogi": [0.003], "fedadagrad": [0.003, 0.01]},
                "overrides": [
        "dataset=fashion_mnist", "partition=shards", "partition.num_shards_per_partition=2",
        "num_clients=100", "clients_per_round=10", "model=mcmahan_2nn", "local_epochs=5",
        "batch_size=10", "learning_rate=0.05", "val_fraction=0.1"]},
    "heart": {"rounds": 50, "target": 0.8, "compression": False, "central_epochs": 50, "overrides": [
        "dataset=heart_disease", "partition=natural", "num_clients=4", "clients_per_round=4",
        "model=logreg", "local_epochs=1", "batch_size=10", "learning_rate=0.05"],
        "strategy_overrides": {"robust_trimmed": ["strategy.beta=0.25", "strategy.bucket_size=1"],
                               "robust_trimmed_adam": ["strategy.beta=0.25", "strategy.bucket_size=1"],
                               "robust_median": ["strategy.bucket_size=1"],
                               "robust_geomed": ["strategy.bucket_size=1"],
                               "robust_krum": ["strategy.num_byzantine=1"]},
        "not_run": {"robust_bulyan": "Bulyan needs 4f + 3 >= 7 clients per round; heart has 4"}},
    "synthetic": {"rounds": 100, "target": 0.6, "compression": False, "central_epochs": 167, "grid": True,
                  "wider_grids": {"fedadam": [0.3], "fedadagrad": [1.0]},
                  "overrides": [
        "dataset=synthetic", "partition=natural", "num_clients=30", "clients_per_round=10",
        "model=logreg", "local_epochs=5", "batch_size=10", "learning_rate=0.01"]},
}


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


def runs_of(setup: dict) -> dict[str, list[str]]:
    """Each row's overrides beyond the setup's (no seed, no rounds)."""
    runs = {}
    for strategy in STRATEGIES:
        if strategy not in setup.get("not_run", {}):
            runs[strategy] = [f"strategy={strategy}", *setup.get("strategy_overrides", {}).get(strategy, [])]
    if setup["compression"]:
        runs["weighted+int8"] = ["strategy=weighted", "compression=int8"]
        runs["weighted+topk10%"] = ["strategy=weighted", "compression=topk", "compression.density=0.1"]
    return runs


def run_once(name: str, setup: dict, label: str, extra: list[str], rounds: int, seed: int,
             directory: Path) -> dict:
    """One federated run; its :func:`fedloom.report.summarise` as a dict with the seed."""
    from fedloom.experiment import run_experiment
    from fedloom.report import summarise

    overrides = [*setup["overrides"], *extra, f"seed={seed}", f"num_rounds={rounds}", "plot=false"]
    started = time.time()
    records = run_experiment(compose(overrides), directory)
    print(f"{name:10s} {label:22s} seed {seed}  final {records[-1]['accuracy']:.4f}  "
          f"{time.time() - started:6.1f} s", flush=True)
    summary = summarise(directory, setup["target"])
    summary.label = label
    return {"seed": seed, **vars(summary)}


def last_rounds_accuracy(directory: Path, rounds: int = 5) -> float:
    records = json.loads((directory / "history.json").read_text())
    return statistics.fmean(float(r["accuracy"]) for r in records[-rounds:])


def grid_of(setup: dict, label: str) -> tuple[str, list[float]]:
    """``(override key, values)`` tried for ``label``: :data:`GRIDS`, widened by the
    setup's ``wider_grids`` where the best value lay at an edge of the default grid."""
    key, values = GRIDS[label]
    return key, sorted({*values, *setup.get("wider_grids", {}).get(label, [])})


def tune(name: str, setup: dict, label: str, extra: list[str], rounds: int, seed: int,
         work: Path, earlier: dict | None) -> tuple[list[str], dict | None, dict]:
    """The grid of ``label`` on ``seed``: ``(chosen overrides, the chosen value's run
    summary or None, the grid's record)``. Values ``earlier`` (the saved row) already
    tried are not run again; when one of them stays the best, the summary is ``None``
    and the saved row stands."""
    key, values = grid_of(setup, label)
    name_of = key.split(".")[-1]
    done = earlier.get("tuned") if earlier else None
    tried = ([dict(t) for t in done["tried"]]
             if done and done["key"] == key and done["seed"] == seed else [])
    for value in values:
        if any(t["value"] == value for t in tried):
            continue
        directory = work / name / f"{label}-grid" / f"{name_of}={value}"
        summary = run_once(name, setup, f"{label} {name_of}={value}",
                           [*extra, f"{key}={value}"], rounds, seed, directory)
        tried.append({"value": value, "final_accuracy": summary["final_accuracy"],
                      "last5_accuracy": last_rounds_accuracy(directory), "summary": summary})
    tried.sort(key=lambda t: t["value"])
    best = max(tried, key=lambda t: t["last5_accuracy"])
    record = {"key": key, "seed": seed, "chosen": best["value"],
              "tried": [{k: t[k] for k in ("value", "final_accuracy", "last5_accuracy")} for t in tried]}
    summary = {**best["summary"], "label": label} if "summary" in best else None
    return [*extra, f"{key}={best['value']}"], summary, record


def centralised(name: str, setup: dict, seed: int, directory: Path) -> dict:
    """The ceiling: the setup's model trained by SGD on the pooled training data (all
    clients' examples, ``central_epochs`` passes, the clients' batch size and rate), one
    evaluation per epoch on the same test set. Its "rounds" are epochs."""
    from fedloom.clients import get_trainer
    from fedloom.experiment import builders
    from fedloom.experiment.settings import RunSettings
    from fedloom.report import summarise

    settings = RunSettings.from_config(compose([*setup["overrides"], f"seed={seed}", "plot=false"]))
    dataset, _ = builders.federated_data(builders.data_key(settings))
    trainer = get_trainer(builders.model_spec(settings, dataset))
    training = settings.training
    weights = trainer.initial_weights()
    loss, accuracy = trainer.evaluate(weights, dataset.x_test, dataset.y_test)
    records = [{"round": 0, "accuracy": accuracy, "loss": loss, "bytes_up": 0, "bytes_down": 0, "seconds": 0.0}]
    for epoch in range(1, setup["central_epochs"] + 1):
        started = time.perf_counter()
        weights, _ = trainer.fit(weights, dataset.x_train, dataset.y_train, epochs=1,
                                 batch_size=training.batch_size, learning_rate=training.learning_rate,
                                 seed=seed * 100_003 + epoch)
        seconds = time.perf_counter() - started
        loss, accuracy = trainer.evaluate(weights, dataset.x_test, dataset.y_test)
        records.append({"round": epoch, "accuracy": accuracy, "loss": loss, "bytes_up": 0,
                        "bytes_down": 0, "seconds": seconds})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "history.json").write_text(json.dumps(records))
    summary = summarise(directory, setup["target"])
    summary.label = CENTRALISED
    print(f"{name:10s} {CENTRALISED:22s} seed {seed}  final {accuracy:.4f}", flush=True)
    return {"seed": seed, **vars(summary)}


def run_setup(name: str, setup: dict, rounds: int, seeds: list[int], work: Path,
              labels: list[str] | None, grid: bool, about: dict) -> dict:
    """The rows ``labels`` (all when ``None``) of ``name``, once per seed; each row holds
    each seed's summary and the provenance of the invocation that measured it."""
    plan = runs_of(setup)
    wanted = list(plan) + [CENTRALISED] if labels is None else [
        label for label in labels if label not in setup.get("not_run", {})]
    unknown = [label for label in wanted if label not in plan and label != CENTRALISED]
    if unknown:
        raise SystemExit(f"{name}: no row {unknown}; rows are {list(plan)} and {CENTRALISED!r}")
    per_label: dict[str, list[dict]] = {}
    tuning: dict[str, dict] = {}
    saved = {run["label"]: run for run in saved_setups().get(name, {}).get("runs", [])}
    measured_by: dict[str, dict] = {}
    for label in wanted:
        extra = plan.get(label)
        if label == CENTRALISED:
            shutil.rmtree(work / name / label, ignore_errors=True)
            per_label[label] = [centralised(name, setup, seed, work / name / label / f"seed-{seed}")
                                for seed in seeds]
            continue
        summaries = []
        if grid and setup.get("grid") and label in GRIDS:
            earlier = saved.get(label)
            extra, summary, tuning[label] = tune(name, setup, label, extra, rounds, seeds[0], work, earlier)
            if summary is None:  # an earlier value stays the best: its row stands
                per_label[label], measured_by[label] = earlier["seeds"], earlier.get("provenance")
                continue
            summaries.append(summary)
        shutil.rmtree(work / name / label, ignore_errors=True)
        for seed in seeds[len(summaries):]:
            summaries.append(run_once(name, setup, label, extra, rounds, seed,
                                      work / name / label / f"seed-{seed}"))
        per_label[label] = summaries
    runs = [{"label": label, "seeds": summaries, "provenance": measured_by.get(label, about),
             **({"tuned": tuning[label]} if label in tuning else {}),
             "mean_final_accuracy": statistics.fmean(s["final_accuracy"] for s in summaries),
             "sd_final_accuracy": (statistics.stdev(s["final_accuracy"] for s in summaries)
                                   if len(summaries) > 1 else 0.0)}
            for label, summaries in per_label.items()]
    return {"target": setup["target"], "rounds": rounds, "seeds": seeds, "overrides": setup["overrides"],
            "central_epochs": setup["central_epochs"], "not_run": setup.get("not_run", {}), "runs": runs}


def merge(previous: dict | None, fresh: dict) -> dict:
    """``fresh``'s rows replace those of ``previous`` with the same label; the others stay
    (in :data:`STRATEGIES` order, then compression, then the centralised row)."""
    if previous is None or previous.get("rounds") != fresh["rounds"]:
        return fresh
    for run in previous["runs"]:  # rows of older JSONs: one seed, the setup's provenance
        run.setdefault("seeds", [{"seed": None, **{k: v for k, v in run.items() if k != "label"}}])
        run.setdefault("provenance", previous.get("provenance") or
                       {"date": previous.get("date"), "machine": previous.get("machine")})
    rows = {run["label"]: run for run in previous["runs"]}
    rows.update({run["label"]: run for run in fresh["runs"]})
    order = [*STRATEGIES, "weighted+int8", "weighted+topk10%", CENTRALISED]
    merged = dict(fresh)
    merged["runs"] = sorted(rows.values(), key=lambda r: order.index(r["label"]) if r["label"] in order else 99)
    merged["seeds"] = sorted({s["seed"] for run in merged["runs"] for s in run["seeds"]} - {None})
    return merged


def mean_of(run: dict, key: str) -> float | None:
    values = [s[key] for s in run["seeds"]]
    return None if any(v is None for v in values) else statistics.fmean(values)


def goal_checks(result: dict, base: str = "fedavg") -> dict:
    """Issue 16's goal per method against FedAvg: mean rounds to target (every seed must
    reach it) at most 0.8x FedAvg's, and a final accuracy at least 2 points higher; with
    both rows' sd so that a difference can be read against the spread."""
    rows = {run["label"]: run for run in result["runs"]}
    if base not in rows:
        return {}
    reference = rows[base]
    base_rounds, base_final = mean_of(reference, "rounds_to_target"), mean_of(reference, "final_accuracy")
    checks = {}
    for label in ("scaffold", "fedadam", "fedyogi", "fedadagrad", "fedprox"):
        if label not in rows:
            continue
        rounds = mean_of(rows[label], "rounds_to_target")
        ratio = None if rounds is None or base_rounds is None else rounds / base_rounds
        points = 100 * (mean_of(rows[label], "final_accuracy") - base_final)
        checks[label] = {"rounds_ratio": ratio, "points": points,
                         "sd_points": 100 * rows[label]["sd_final_accuracy"],
                         "base_sd_points": 100 * reference["sd_final_accuracy"],
                         "met": ratio is not None and ratio <= 0.8 and points >= 2}
    return checks


def compression_checks(result: dict) -> dict:
    """Compressed runs against ``weighted``: bytes up and final accuracy, means over seeds."""
    def mean(run: dict, key: str) -> float:
        return statistics.fmean(arrays_megabytes(s, key.split("_")[-1]) if key.startswith("megabytes")
                                else s[key] for s in run.get("seeds", [run]))

    by_label = {run["label"]: run for run in result["runs"]}
    base = by_label.get("weighted")
    checks = {}
    for label, max_drop in (("weighted+int8", 0.005), ("weighted+topk10%", 0.01)):
        if base and label in by_label:
            run = by_label[label]
            drop = mean(base, "final_accuracy") - mean(run, "final_accuracy")
            checks[label] = {
                "bytes_up_ratio": mean(base, "megabytes_up") / mean(run, "megabytes_up"),  # arrays
                "accuracy_drop": drop,
                "within_target": drop <= max_drop,
            }
    return checks


def collect(name: str, setup: dict, rounds: int, seeds: list[int], work: Path, about: dict) -> dict:
    """Rows rebuilt from the finished run directories under ``work/name`` (no training):
    for an invocation that trained but failed before writing its JSON. A row is taken only
    when every seed's run finished ``rounds`` rounds with the settings the row asks for
    (tuned rows: the grid's best value, checked in each run's config.json)."""
    from fedloom.report import summarise

    def finished(directory: Path, seed: int, key: str | None = None, value=None) -> bool:
        try:
            records = json.loads((directory / "history.json").read_text())
            config = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError):
            return False
        same_value = key is None or config["strategy"].get(key.split(".")[-1]) == value
        return records[-1]["round"] == rounds and config["seed"] == seed and same_value

    def summary(directory: Path, label: str, seed: int) -> dict:
        summarised = summarise(directory, setup["target"])
        summarised.label = label
        return {"seed": seed, **vars(summarised)}

    runs = []
    for label in [*runs_of(setup), CENTRALISED]:
        record, summaries, key, value = None, [], None, None
        if setup.get("grid") and label in GRIDS:
            key, _ = GRIDS[label]
            grid = sorted((work / name / f"{label}-grid").glob(f"{key.split('.')[-1]}=*"))
            tried = [{"value": float(d.name.split("=")[1]), "directory": d} for d in grid
                     if finished(d, seeds[0])]
            if not tried:
                continue
            for t in tried:
                t["final_accuracy"] = json.loads((t["directory"] / "history.json").read_text())[-1]["accuracy"]
                t["last5_accuracy"] = last_rounds_accuracy(t["directory"])
            best = max(tried, key=lambda t: t["last5_accuracy"])
            value = best["value"]
            record = {"key": key, "seed": seeds[0], "chosen": value,
                      "tried": [{k: t[k] for k in ("value", "final_accuracy", "last5_accuracy")} for t in tried]}
            summaries.append(summary(best["directory"], label, seeds[0]))
        for seed in seeds[len(summaries):]:
            directory = work / name / label / f"seed-{seed}"
            if label == CENTRALISED:
                ok = (directory / "history.json").is_file()
            else:
                ok = finished(directory, seed, key, value)
            if ok:
                summaries.append(summary(directory, label, seed))
        if len(summaries) == len(seeds):
            runs.append({"label": label, "seeds": summaries, "provenance": about,
                         **({"tuned": record} if record else {}),
                         "mean_final_accuracy": statistics.fmean(s["final_accuracy"] for s in summaries),
                         "sd_final_accuracy": statistics.stdev(s["final_accuracy"] for s in summaries)
                         if len(summaries) > 1 else 0.0})
    return {"target": setup["target"], "rounds": rounds, "seeds": seeds, "overrides": setup["overrides"],
            "central_epochs": setup["central_epochs"], "not_run": setup.get("not_run", {}), "runs": runs}


def plot_setup(name: str, result: dict) -> None:
    """convergence_<name>.png: accuracy per round and per megabyte of the first seed of
    every federated row whose run directory is on disk."""
    from fedloom.report import RunSummary, plot

    firsts = []
    for run in result["runs"]:
        first = run["seeds"][0]
        if run["label"] != CENTRALISED and (Path(first.get("path", "")) / "history.json").is_file():
            fields = {k: v for k, v in first.items() if k in RunSummary.__dataclass_fields__}
            firsts.append((Path(first["path"]), RunSummary(**{**fields, "label": run["label"]})))
    if firsts:
        plot([d for d, _ in firsts], [s for _, s in firsts], RESULTS / f"convergence_{name}.png",
             title=f"{name} ({result['rounds']} rounds, first seed)")


def refresh(result: dict) -> dict:
    """Fill ``megabytes_payload_*`` of every seed whose run directory is still on disk
    (from its own ``history.json``) and recompute the setup's checks."""
    from fedloom.report import summarise

    for run in result["runs"]:
        for seed in run.get("seeds", []):
            history = Path(seed.get("path", "")) / "history.json"
            if seed.get("megabytes_payload_up") is None and history.is_file():
                again = summarise(history.parent, result["target"])
                seed["megabytes_payload_up"] = again.megabytes_payload_up
                seed["megabytes_payload_down"] = again.megabytes_payload_down
    result["compression"] = compression_checks(result)
    result["goal"] = goal_checks(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--rows", default="",
                        help="comma-separated row labels to (re)run; the setup's other rows are kept")
    parser.add_argument("--grid", action="store_true",
                        help="tune the rows of GRIDS on the setups marked 'grid' (first seed)")
    parser.add_argument("--rounds-scale", type=float, default=1.0)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run each")
    parser.add_argument("--work", default=str(RESULTS / "convergence"))
    parser.add_argument("--collect", metavar="COMMIT",
                        help="train nothing: rebuild the setups' rows from the finished run "
                             "directories under --work, trained at COMMIT (for an invocation "
                             "that failed before writing its JSON)")
    parser.add_argument("--refresh", action="store_true",
                        help="run nothing: add the array payload to saved rows whose run "
                             "directories exist, recompute the checks, rewrite the tables")
    args = parser.parse_args()
    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    labels = [label for label in args.rows.split(",") if label] or None
    if args.collect:
        about = {**provenance(), "commit": args.collect, "dirty": False, "load_average_1min": None,
                 "collected": "rows rebuilt from the finished run directories (the training "
                              "invocations failed before writing their JSON)"}
        for name in args.setups.split(","):
            setup = SETUPS[name]
            rounds = max(1, round(setup["rounds"] * args.rounds_scale))
            result = refresh(merge(saved_setups().get(name), collect(name, setup, rounds, seeds, work, about)))
            result["provenance"] = about
            print(convergence_table(result), flush=True)
            write(name, result)
            plot_setup(name, result)
        return
    if args.refresh:
        for name, result in saved_setups().items():
            write(name, refresh(result))
            plot_setup(name, result)
        return
    about = provenance()  # before the runs: its load average says whether the machine was idle
    for name in args.setups.split(","):
        setup = SETUPS[name]
        rounds = max(1, round(setup["rounds"] * args.rounds_scale))
        result = run_setup(name, setup, rounds, seeds, work, labels, args.grid, about)
        result = refresh(merge(saved_setups().get(name) if labels else None, result))
        result["provenance"] = about
        print(convergence_table(result), flush=True)
        write(name, result)
        plot_setup(name, result)


def saved_setups() -> dict:
    path = RESULTS / "convergence.json"
    return json.loads(path.read_text()).get("setups", {}) if path.is_file() else {}


def write(name: str, result: dict) -> None:
    """Put setup ``name`` into convergence.json (re-read just before: runs of other setups
    may be writing theirs) and rewrite convergence.md; after every setup, so that a long
    run that is stopped keeps the setups it finished."""
    setups = saved_setups()
    setups[name] = result
    markdown = [("Each table: `python benchmarks/convergence.py --setups <name>`, measured on the "
                 "date and machine below its title.\n")]
    for setup_name, setup_result in setups.items():
        markdown.append(f"### {setup_name} ({setup_result['rounds']} rounds; "
                        f"`{' '.join(setup_result['overrides'])}`)\n")
        markdown.append(convergence_notes(setup_result))
    (RESULTS / "convergence.json").write_text(json.dumps({"setups": setups}, indent=1))
    (RESULTS / "convergence.md").write_text("\n".join(markdown))
    print(f"wrote {RESULTS / 'convergence.md'}", flush=True)


if __name__ == "__main__":
    main()
