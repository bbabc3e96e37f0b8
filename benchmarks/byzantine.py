"""Byzantine robustness: final test accuracy of each strategy under each attack.

Setting (the default experiment of ``conf/config.yaml``): scikit-learn digits, 100
clients with Dirichlet(0.5) label skew, 10 sampled per round, MLP 64-64, E=1, B=10,
lr 0.1, 100 rounds on fedloom's local engine. A fraction (default 20%) of the clients,
chosen by the seed, attack in every round they are sampled (``fedloom.attacks``):

- ``sign_flip``: send ``g - 4 (w - g)``;
- ``scaling``: send ``g + 10 (w - g)`` (x10);
- ``noise``: send ``g + N(0, 1)`` per weight;
- the omniscient attacks of ``fedloom.omniscient`` (ALIE, IPM, min-max, min-sum, mimic),
  crafted from the round's honest updates, and label flipping (``conf/attack/``).

Strategies: plain averaging (``weighted``: by example count, ``simple``: uniform) and
the robust hybrids of ``conf/strategy/`` with their defaults: a norm filter (reject an
update farther than 2.5x the median distance of the last 5 rounds) followed by a
size-weighted trimmed mean (``robust_trimmed``, beta=0.2) or the coordinate-wise median
(``robust_median``), both over the means of random pairs of updates (``bucket_size=2``),
Multi-Krum (``robust_krum``, ``num_byzantine=3``: 20% attackers among 100 clients means 3
or more attackers in 32% of the rounds that sample 10; updates the filter rejected count
against it), centred clipping around the last round's step (``robust_centered_clip``,
radius 1x the round's median distance, weighted by size), Bulyan and the geometric
median. Each cell is the final accuracy averaged over ``--seeds`` (the seed moves the
partition, the attackers, the sampling and the model's start).

``sign_flip_x2`` (scale 2 instead of the default 4) is an extra column: it is there
to show what the robust rules do when a poisoned update is small enough to pass the
norm filter. The ``lie_*`` columns add lying metadata (``num-examples=1e9``,
``quality=1.0``) alone or to another attack.

Tasks (``--task``): ``digits`` (the setting above, ``results/byzantine.json``),
``fashion`` (Fashion-MNIST, 100 clients with Dirichlet(0.3) label skew, the same MLP and
training, ``results/byzantine_fashion.json``) and ``fashion_shards`` (2 label shards per
client as in McMahan et al. 2017, ``results/byzantine_fashion_shards.json``).

Row variants (``--variants``, any of):

- ``filter``: ``weighted`` also behind the hybrids' norm filter (``weighted+filter``: the
  filter of ``conf/strategy/robust_trimmed.yaml``, then the plain size-weighted mean, no
  cap, no buckets): the filter's share on its own;
- ``nofilter``: each robust hybrid also without its norm filter
  (``strategy.max_norm_ratio=null``): what the robust rule holds on its own;
- ``momentum``: each robust hybrid also with client momentum (``client_momentum``,
  ``--momentum``; Karimireddy, He & Jaggi, ICML 2021); with ``nofilter``, also both;
- ``server_quality``: ``weighted_quality`` (weights from the quality each client reports)
  against ``weighted_server_quality`` (the server scores each update on a held-out split
  of its test set, ``server_val_fraction``), and each robust hybrid that weighs by size
  also with ``strategy.weight_by=server_quality``. Read them in the lying columns
  (``lie_quality``, ``alie_lie_quality``, ``label_flip_lie_quality``). Under server
  quality the accuracy is measured on the test set less that split.

A row is ``<strategy>[+<variant>...]``; ``--strategies`` also takes such labels.

Each run merges into its output JSON: rows and columns it did not run stay as they
were, so a task's table can be filled in several runs, and other tasks' files are never
touched. A run whose setting (task, rounds, clients, seeds, attacker share, overrides)
differs from the file's is refused: give another ``--output``, or ``--replace``.

Usage::

    python benchmarks/byzantine.py                      # digits: 8 rules x 17 columns x 3 seeds
    python benchmarks/byzantine.py --task fashion --variants nofilter,momentum,server_quality
    python benchmarks/byzantine.py --seeds 0 --rounds 30 --num-clients 20 --output /tmp/b.json

Prints the table and writes the JSON and the same table as Markdown beside it (``.md``).
A table takes rows x columns x seeds runs, one after another: on 2 idle cores a digits
run (100 rounds) takes about 7 s, a Fashion-MNIST one about 7 times as long (the ratio
of 20-round runs measured side by side); each run's seconds are in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from provenance import provenance  # noqa: E402
from readme_figures import byzantine as markdown_table  # noqa: E402

STRATEGIES = ["weighted", "simple", "robust_trimmed", "robust_median", "robust_krum",
              "robust_centered_clip", "robust_bulyan", "robust_geomed"]
ATTACKS = {  # column -> Hydra overrides
    "none": ["attack=none"],
    "sign_flip": ["attack=sign_flip"],
    "scaling": ["attack=scaling"],
    "noise": ["attack=noise"],
    "sign_flip_x2": ["attack=sign_flip", "attack.scale=2"],
    # omniscient attacks (fedloom.omniscient): crafted from the round's honest updates
    "alie": ["attack=alie"],
    "ipm_0.1": ["attack=ipm", "attack.eps=0.1"],
    "ipm_100": ["attack=ipm", "attack.eps=100"],
    "minmax": ["attack=minmax"],
    "minsum": ["attack=minsum"],
    "mimic": ["attack=mimic"],
    "label_flip": ["attack=label_flip"],
    # lying metadata: honest updates with num-examples=1e9, and ALIE with the same lie
    "lie_1e9": ["attack=none", "attack.fraction=0.2", "attack.lie_num_examples=1e9"],
    "alie_lie_1e9": ["attack=alie", "attack.lie_num_examples=1e9"],
    # claiming quality 1.0: alone, with ALIE, and with a label-flipped (poor) model
    "lie_quality": ["attack=none", "attack.fraction=0.2", "attack.lie_quality=1.0"],
    "alie_lie_quality": ["attack=alie", "attack.lie_quality=1.0"],
    "label_flip_lie_quality": ["attack=label_flip", "attack.lie_quality=1.0"],
}
FORMULAS = {"sign_flip": "g - 4 (w - g)", "scaling": "g + 10 (w - g)", "noise": "g + N(0, 1)",
            "sign_flip_x2": "g - 2 (w - g)"}
TASKS = {  # --task -> (Hydra overrides, default output file)
    "digits": ([], "byzantine.json"),
    "fashion": (["dataset=fashion_mnist", "partition=dirichlet", "partition.alpha=0.3"],
                "byzantine_fashion.json"),
    "fashion_shards": (["dataset=fashion_mnist", "partition=shards",
                        "partition.num_shards_per_partition=2"], "byzantine_fashion_shards.json"),
}
VARIANTS = ("filter", "nofilter", "momentum", "server_quality")
#: ``weighted+filter``: the hybrids' norm filter, then a plain weighted mean (a trimmed
#: mean that trims nothing, without the weight cap and the buckets)
FILTER_ONLY = ["strategy=robust_trimmed", "strategy.beta=0.0", "strategy.weight_cap=null",
               "strategy.bucket_size=1"]
QUALITY_ROWS = ("weighted_quality", "weighted_server_quality")
#: what must match for a run to merge into an existing JSON (missing task: digits)
COMPARED = ("task", "rounds", "num_clients", "clients_per_round", "attacker_fraction", "seeds",
            "overrides")


def strategy_conf(name: str) -> dict:
    import yaml

    path = ROOT / "conf" / "strategy" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown strategy {name!r}: no {path.relative_to(ROOT)}.")
    return yaml.safe_load(path.read_text())


def row_overrides(row: str, momentum: float) -> list[str]:
    """Hydra overrides of a row label ``<strategy>[+<variant>...]``."""
    base, *variants = row.split("+")
    strategy_conf(base)
    if "filter" in variants and base != "weighted":
        raise SystemExit(f"row {row!r}: the filter variant applies to 'weighted' only.")
    overrides = list(FILTER_ONLY) if "filter" in variants else [f"strategy={base}"]
    for variant in variants:
        if variant == "filter":
            pass  # the base overrides above
        elif variant == "nofilter":
            overrides.append("strategy.max_norm_ratio=null")
        elif variant == "momentum":
            overrides.append(f"client_momentum={momentum}")
        elif variant == "server_quality":
            overrides.append("strategy.weight_by=server_quality")
        else:
            raise SystemExit(f"row {row!r}: unknown variant {variant!r}; known: {', '.join(VARIANTS)}.")
    return overrides


def expand_rows(strategies: list[str], variants: list[str]) -> list[str]:
    """The rows: ``strategies`` and, for each robust hybrid among them, its variants."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}.")
    rows = list(strategies)
    if "filter" in variants and "weighted" in strategies:
        rows.append("weighted+filter")
    for base in strategies:
        conf = {} if "+" in base else strategy_conf(base)
        if "max_norm_ratio" in conf:  # a robust hybrid with a norm filter
            combos = [v for v in ("nofilter", "momentum") if v in variants]
            if len(combos) == 2:
                combos.append("nofilter+momentum")
            rows += [f"{base}+{combo}" for combo in combos]
        if "server_quality" in variants and conf.get("weight_by") == "num_examples" and "robust" in conf:
            rows.append(f"{base}+server_quality")
    if "server_quality" in variants:
        rows += QUALITY_ROWS
    return list(dict.fromkeys(rows))


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def run(row: str, attack: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    from fedloom.experiment import run_experiment

    overrides = [*TASKS[args.task][0], *row_overrides(row, args.momentum), *ATTACKS[attack],
                 f"seed={seed}", f"num_rounds={args.rounds}", f"num_clients={args.num_clients}",
                 f"clients_per_round={args.clients_per_round}", "plot=false",
                 "checkpoint_every=0", *args.override]
    if attack != "none":
        overrides.append(f"attack.fraction={args.fraction}")
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # one progress line per round otherwise
        records = run_experiment(compose(overrides), workdir / f"{row}-{attack}-{seed}")
    return {
        "final_accuracy": records[-1]["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in records),
        "rejected": sum(r["num_rejected"] for r in records[1:]),
        "seconds": time.perf_counter() - started,
    }


def cell(runs: list[dict]) -> dict:
    finals = [r["final_accuracy"] for r in runs]
    return {
        "mean_final_accuracy": statistics.fmean(finals),
        "sd_final_accuracy": statistics.stdev(finals) if len(finals) > 1 else 0.0,
        "final_accuracy_per_seed": finals,
        "min_final_accuracy": min(finals),
        "mean_rejected_updates": statistics.fmean(r["rejected"] for r in runs),
        "seconds": sum(r["seconds"] for r in runs),
    }


def previous(path: Path, setting: dict, replace: bool) -> dict | None:
    """The JSON already at ``path`` to merge into, or ``None``; refuses another setting."""
    if replace or not path.is_file():
        return None
    old = json.loads(path.read_text())
    old_setting = {"task": "digits", **old["setting"]}
    differs = [f"{key}: {old_setting.get(key)!r} there, {setting[key]!r} here"
               for key in COMPARED if old_setting.get(key) != setting[key]]
    if differs:
        raise SystemExit(f"{path} holds results of another setting ({'; '.join(differs)}). "
                         "Write to another --output, or overwrite it with --replace.")
    return old


def merge(old: dict | None, report: dict) -> dict:
    """``report`` with the rows, cells, columns and runs of ``old`` it did not redo."""
    if old is None:
        return report
    results = {row: dict(cells) for row, cells in old["results"].items()}
    for row, cells in report["results"].items():
        results.setdefault(row, {}).update(cells)
    setting = report["setting"]
    setting["attacks"] = {**old["setting"].get("attacks", {}), **setting["attacks"]}
    setting["rows"] = {**old["setting"].get("rows", {}), **setting["rows"]}
    earlier = old.get("runs") or [{"provenance": old.get("provenance"), "rows": list(old["results"]),
                                   "total_seconds": old.get("total_seconds")}]
    return {**report, "results": results, "runs": earlier + report["runs"]}


def add_drops(results: dict) -> None:
    """Each cell's ``drop_vs_no_attack``: the same row's no-attack mean minus its mean."""
    for cells in results.values():
        clean = cells.get("none", {}).get("mean_final_accuracy")
        for entry in cells.values():
            entry["drop_vs_no_attack"] = None if clean is None else clean - entry["mean_final_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.2, help="share of attacking clients")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="rows: strategies of conf/strategy, or <strategy>+<variant> labels")
    parser.add_argument("--variants", default="",
                        help=f"extra rows for each robust hybrid, comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--momentum", type=float, default=0.9, help="client momentum beta of +momentum rows")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--override", action="append", default=[],
                        help="extra Hydra override for every run (repeatable)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON to merge into (default: benchmarks/results/ of the task)")
    parser.add_argument("--replace", action="store_true", help="overwrite --output instead of merging")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # thousands of "update rejected" lines otherwise
    output = args.output or RESULTS / TASKS[args.task][1]

    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    rows = expand_rows(args.strategies.split(","), variants)
    attacks = args.attacks.split(",")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise SystemExit(f"--attacks: unknown {unknown}; known: {', '.join(ATTACKS)}.")
    setting = {"task": args.task, "rounds": args.rounds, "num_clients": args.num_clients,
               "clients_per_round": args.clients_per_round, "attacker_fraction": args.fraction,
               "seeds": seeds, "overrides": args.override,
               "task_overrides": TASKS[args.task][0],
               "attacks": {a: FORMULAS.get(a, " ".join(ATTACKS[a])) for a in attacks},
               "rows": {row: row_overrides(row, args.momentum) for row in rows}}
    old = previous(output, setting, args.replace)  # before hours of runs, not after
    about = provenance()  # before the runs: its load average says whether the machine was idle
    cells: dict[str, dict[str, dict]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for row in rows:
            for attack in attacks:
                runs = [run(row, attack, seed, args, Path(workdir)) for seed in seeds]
                cells.setdefault(row, {})[attack] = cell(runs)
                print(f"  {row:<28} {attack:<22} final accuracy "
                      f"{' '.join(str(round(r['final_accuracy'], 3)) for r in runs)}",
                      file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    report = merge(old, {
        "benchmark": "final test accuracy per strategy and attack (mean over seeds)",
        "provenance": about,
        "setting": setting,
        "results": cells,
        "total_seconds": total,
        "runs": [{"provenance": about, "rows": rows, "attacks": attacks, "total_seconds": total}],
    })
    add_drops(report["results"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown_table(report)
    output.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
