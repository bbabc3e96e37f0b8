"""Byzantine robustness: final test accuracy of each strategy under each attack.

Setting (the default experiment of ``conf/config.yaml``): scikit-learn digits, 100
clients with Dirichlet(0.5) label skew, 10 sampled per round, MLP 64-64, E=1, B=10,
lr 0.1, 100 rounds on fedloom's local engine. A fraction (default 20%) of the clients,
chosen by the seed, attack in every round they are sampled (``fedloom.attacks``):

- ``sign_flip``: send ``g - 4 (w - g)``;
- ``scaling``: send ``g + 10 (w - g)`` (x10);
- ``noise``: send ``g + N(0, 1)`` per weight.

Strategies: plain averaging (``weighted``: by example count, ``simple``: uniform) and
the robust hybrids of ``conf/strategy/`` with their defaults: a norm filter (reject an
update farther than 2.5x the median distance of the last 5 rounds) followed by a
size-weighted trimmed mean (``robust_trimmed``, beta=0.2) or the coordinate-wise median
(``robust_median``), both over the means of random pairs of updates (``bucket_size=2``),
Multi-Krum (``robust_krum``, ``num_byzantine=3``: 20% attackers among 100 clients means 3
or more attackers in 32% of the rounds that sample 10; updates the filter rejected count
against it) or centred clipping around the last round's step (``robust_centered_clip``,
radius 1x the round's median distance, weighted by size). Each cell is the final
accuracy averaged over ``--seeds`` (the seed moves the partition, the attackers, the sampling and the model's
start).

``sign_flip_x2`` (scale 2 instead of the default 4) is an extra column: it is there
to show what the robust rules do when a poisoned update is small enough to pass the
norm filter.

Usage::

    python benchmarks/byzantine.py                      # full table (~3 minutes on 2 cores)
    python benchmarks/byzantine.py --seeds 0 --rounds 30 --num-clients 20

Prints the table and writes ``benchmarks/results/byzantine.json``.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from provenance import provenance  # noqa: E402

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
}


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def run(strategy: str, attack: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    from fedloom.experiment import run_experiment

    overrides = [f"strategy={strategy}", *ATTACKS[attack], f"seed={seed}",
                 f"num_rounds={args.rounds}", f"num_clients={args.num_clients}",
                 f"clients_per_round={args.clients_per_round}", "plot=false",
                 "checkpoint_every=0", *args.override]
    if attack != "none":
        overrides.append(f"attack.fraction={args.fraction}")
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # one progress line per round otherwise
        records = run_experiment(compose(overrides), workdir / f"{strategy}-{attack}-{seed}")
    return {
        "final_accuracy": records[-1]["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in records),
        "rejected": sum(r["num_rejected"] for r in records[1:]),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--num-clients", type=int, default=100)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.2, help="share of attacking clients")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--override", action="append", default=[],
                        help="extra Hydra override for every run (repeatable)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "byzantine.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # thousands of "update rejected" lines otherwise

    seeds = [int(s) for s in args.seeds.split(",")]
    about = provenance()  # before the runs: its load average says whether the machine was idle
    strategies, attacks = args.strategies.split(","), args.attacks.split(",")
    cells: dict[str, dict[str, dict]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for strategy in strategies:
            for attack in attacks:
                runs = [run(strategy, attack, seed, args, Path(workdir)) for seed in seeds]
                finals = [r["final_accuracy"] for r in runs]
                cells.setdefault(strategy, {})[attack] = {
                    "mean_final_accuracy": statistics.fmean(finals),
                    "sd_final_accuracy": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                    "final_accuracy_per_seed": finals,
                    "min_final_accuracy": min(finals),
                    "mean_rejected_updates": statistics.fmean(r["rejected"] for r in runs),
                    "seconds": sum(r["seconds"] for r in runs),
                }
                print(f"  {strategy:<15} {attack:<10} final accuracy "
                      f"{' '.join(f'{a:.3f}' for a in finals)}", file=sys.stderr, flush=True)
    for strategy in strategies:
        clean = cells[strategy].get("none", {}).get("mean_final_accuracy")
        for attack, cell in cells[strategy].items():
            cell["drop_vs_no_attack"] = None if clean is None else clean - cell["mean_final_accuracy"]

    report = {
        "benchmark": "final test accuracy per strategy and attack (mean over seeds)",
        "provenance": about,
        "setting": {"rounds": args.rounds, "num_clients": args.num_clients,
                    "clients_per_round": args.clients_per_round, "attacker_fraction": args.fraction,
                    "seeds": seeds, "overrides": args.override,
                    "attacks": {"sign_flip": "g - 4 (w - g)", "scaling": "g + 10 (w - g)",
                                "noise": "g + N(0, 1)", "sign_flip_x2": "g - 2 (w - g)"}},
        "results": cells,
        "total_seconds": time.perf_counter() - started,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    width = max(len(s) for s in strategies) + 2
    print(f"final test accuracy, mean of seeds {seeds} ({args.rounds} rounds, {args.num_clients} "
          f"clients, {args.clients_per_round} per round, {args.fraction:.0%} attackers); "
          "(drop vs no attack, points)")
    print(f"{'strategy':<{width}}" + "".join(f"{a:>18}" for a in attacks))
    for strategy in strategies:
        row = ""
        for attack in attacks:
            cell = cells[strategy][attack]
            drop = cell["drop_vs_no_attack"]
            extra = "" if attack == "none" or drop is None else f" ({-100 * drop:+.1f})"
            row += f"{cell['mean_final_accuracy']:>11.3f}{extra:>7}" if extra else f"{cell['mean_final_accuracy']:>18.3f}"
        print(f"{strategy:<{width}}{row}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
