"""Compare runs: accuracy per round and per megabyte, and a Markdown summary table.

    python -m fedloom.report multirun/2026-11-25/10-00-00            # a Hydra multirun
    python -m fedloom.report outputs/a outputs/b --target 0.9 --out cmp/

Each run directory holds ``history.json`` (written by ``simulate.py`` or the deployment
launcher). The report writes ``report.png`` (test accuracy against rounds and against
megabytes transferred), ``report.md`` (one row per run) and ``report.json``.

Rounds to a target accuracy are read off the best-so-far accuracy curve, interpolating
linearly between the last round below the target and the first round at or above it,
as McMahan et al. 2017 do (https://arxiv.org/abs/1602.05629, Table 2).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunSummary", "find_runs", "rounds_to_target", "summarise", "write_report", "main"]


@dataclass
class RunSummary:
    """One row of the report. ``megabytes_*`` are the run's ``bytes_*`` (what was sent,
    see ``fedloom.experiment.history``), ``megabytes_payload_*`` its arrays' ``.npy``
    bytes only (``None`` for histories that do not record them)."""

    label: str
    path: str
    rounds: int
    final_accuracy: float
    best_accuracy: float
    rounds_to_target: float | None
    megabytes_up: float
    megabytes_down: float
    wall_seconds: float
    megabytes_payload_up: float | None = None
    megabytes_payload_down: float | None = None


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (holding ``history.json``) at or below ``paths``, sorted."""
    runs: set[Path] = set()
    for path in map(Path, paths):
        if (path / "history.json").is_file():
            runs.add(path)
        runs.update(p.parent for p in path.rglob("history.json"))
    if not runs:
        raise FileNotFoundError(
            f"no history.json at or below {', '.join(map(str, paths))}; pass the run or "
            "multirun directories simulate.py wrote (outputs/... or multirun/...)."
        )
    return sorted(runs)


def rounds_to_target(records: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """Rounds until the best-so-far accuracy first reaches ``target`` (interpolated)."""
    best, previous_round, previous_best = float("-inf"), None, None
    for record in records:
        best = max(best, float(record["accuracy"]))
        if best >= target:
            if previous_round is None or best == previous_best:
                return float(record["round"])
            fraction = (target - previous_best) / (best - previous_best)
            return previous_round + fraction * (record["round"] - previous_round)
        previous_round, previous_best = record["round"], best
    return None


def _label(run: Path) -> str:
    overrides = run / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        lines = [line.strip()[2:] for line in overrides.read_text().splitlines() if line.strip().startswith("- ")]
        lines = [line for line in lines if not line.startswith("hydra.")]
        if lines:
            return " ".join(lines)
    return run.name


def summarise(run: Path, target: float) -> RunSummary:
    records = json.loads((run / "history.json").read_text())
    return RunSummary(
        label=_label(run),
        path=str(run),
        rounds=int(records[-1]["round"]),
        final_accuracy=float(records[-1]["accuracy"]),
        best_accuracy=max(float(r["accuracy"]) for r in records),
        rounds_to_target=rounds_to_target(records, target),
        megabytes_up=sum(r["bytes_up"] for r in records) / 1e6,
        megabytes_down=sum(r["bytes_down"] for r in records) / 1e6,
        wall_seconds=sum(r["seconds"] for r in records),
        megabytes_payload_up=_payload_megabytes(records, "payload_up"),
        megabytes_payload_down=_payload_megabytes(records, "payload_down"),
    )


def _payload_megabytes(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    rounds = records[1:]  # round 0 (the initial model) sends nothing
    if not rounds or any(key not in r for r in rounds):
        return None
    return sum(r[key] for r in rounds) / 1e6


def markdown_table(summaries: Sequence[RunSummary], target: float) -> str:
    header = (f"| run | final acc. | best acc. | rounds to {target:.0%} | MB up | MB down | s in rounds |\n"
              "|---|---|---|---|---|---|---|\n")
    rows = []
    for s in summaries:
        reached = "—" if s.rounds_to_target is None else f"{s.rounds_to_target:.1f}"
        rows.append(f"| {s.label} | {s.final_accuracy:.4f} | {s.best_accuracy:.4f} | {reached} | "
                    f"{s.megabytes_up:.2f} | {s.megabytes_down:.2f} | {s.wall_seconds:.1f} |")
    return header + "\n".join(rows) + "\n"


def plot(runs: Sequence[Path], summaries: Sequence[RunSummary], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_round, by_megabyte) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, (run, summary) in enumerate(zip(runs, summaries)):
        style = {"linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}  # 10 colours per cycle
        records = json.loads((run / "history.json").read_text())
        accuracy = [r["accuracy"] for r in records]
        megabytes, total = [], 0.0
        for r in records:
            total += (r["bytes_up"] + r["bytes_down"]) / 1e6
            megabytes.append(total)
        by_round.plot([r["round"] for r in records], accuracy, label=summary.label, **style)
        by_megabyte.plot(megabytes, accuracy, label=summary.label, **style)
    by_round.set(xlabel="round", ylabel="test accuracy", title="accuracy per round")
    by_megabyte.set(xlabel="megabytes transferred (up + down)", ylabel="test accuracy",
                    title="accuracy per megabyte")
    for axis in (by_round, by_megabyte):
        axis.grid(alpha=0.3)
    by_megabyte.legend(fontsize=8, loc="lower right")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(paths: Sequence[str | Path], out: str | Path, target: float = 0.8,
                 title: str = "") -> list[RunSummary]:
    """Write ``report.png``, ``report.md`` and ``report.json`` for the runs under ``paths``."""
    runs = find_runs(paths)
    summaries = [summarise(run, target) for run in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(runs, summaries, out / "report.png", title)
    (out / "report.md").write_text(markdown_table(summaries, target))
    (out / "report.json").write_text(json.dumps(
        {"target": target, "runs": [vars(s) for s in summaries]}, indent=1))
    return summaries


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedloom.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories or a multirun directory")
    parser.add_argument("--target", type=float, default=0.8, help="accuracy target (default 0.8)")
    parser.add_argument("--out", default=None, help="output directory (default: the first path)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    if not 0 < args.target <= 1:
        parser.error(f"--target={args.target} must be in (0, 1]")
    try:
        summaries = write_report(args.paths, args.out or args.paths[0], args.target, args.title)
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")
    print(markdown_table(summaries, args.target), end="")
    print(f"wrote report.png, report.md, report.json to {args.out or args.paths[0]}")


if __name__ == "__main__":
    main()
