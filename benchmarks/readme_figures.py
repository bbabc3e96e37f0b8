"""Render the README's measured figures from the committed benchmark JSONs, or check them.

Each figure block of ``README.md`` sits between two markers::

    <!-- figures:simulation -->
    ...rendered from benchmarks/results/simulation.json...
    <!-- /figures -->

``--check`` renders every block from its JSON and exits 1, naming each block whose text
differs (or whose JSON or markers are missing); ``--write`` replaces the text between
the markers with the rendered text. Blocks live in ``README.md`` and ``docs/faults.md``
(the Byzantine table); each known block must appear in one of them. A figure therefore changes only with its JSON, and
the JSON records the commit and machine that measured it (``provenance.py``).

Run: ``python benchmarks/readme_figures.py --check`` (in ``.ci/run``) or ``--write``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from figure_format import GIB, measured, memory, ms, spread, table  # noqa: E402,F401
from scale_figures import scale_clients, scale_shakespeare, scale_workers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"<!-- figures:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /figures -->", re.DOTALL)
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "faults.md"]


# ----------------------------------------------------------------------------- blocks
def aggregation(data: dict) -> str:
    settings = data.get("threads") or {"default": {"apis": data["apis"]}}
    rows = []
    for api in ("message", "legacy"):
        for setting, run in settings.items():
            entry = run["apis"][api]
            threads = run.get("fedloom_aggregation_threads")
            label = f"{setting} ({threads})" if setting == "default" and threads else setting
            ours, flower = entry["fedloom"], entry["flower"]
            rows.append([
                "Message" if api == "message" else "legacy", label, ms(ours["median_s"]),
                ms(flower["median_s"]), f"{entry['time_ratio_fedloom_over_flower']:.2f}",
                f"{ours['peak_extra_models']:.2f} models",
                f"{ours['max_rel_diff_vs_float64']:.1e} (Flower {flower['max_rel_diff_vs_float64']:.1e})"])
    repeats = data.get("repeats")
    head = (f"{data['clients']} updates of {data['parameters']:,} float32 parameters; median of "
            f"{repeats if repeats else 'the'} alternated calls. Threads 1: fedloom's reductions and numpy's "
            "BLAS on one thread (like-for-like: Flower's mean is single-threaded numpy); default: "
            "fedloom's min(4, cores) threads in brackets, BLAS as installed.\n")
    return measured(data) + "\n" + head + "\n" + table(
        ["API", "threads", "fedloom WeightedAverage", "Flower FedAvg", "ratio",
         "fedloom extra memory", "max rel. error vs float64"], rows)


def aggregation_guarded(data: dict) -> str:
    settings = data.get("threads") or {"default": {"apis": data["apis"]}}
    parts = []
    for setting, run in settings.items():
        for api, name in (("message", "Message"), ("legacy", "legacy")):
            entry = run["apis"][api]
            parts.append(f"{ms(entry['fedloom']['median_s'])} vs {ms(entry['flower']['median_s'])} "
                         f"({name}, {setting} threads, ratio {entry['time_ratio_fedloom_over_flower']:.2f})")
    return (f"With `absurd_norm_ratio={data['absurd_norm_ratio']:g}`: " + "; ".join(parts) + ". "
            + measured(data) + "\n")


def robust_aggregation(data: dict) -> str:
    names = {"median": "coordinate median", "trimmed_mean": f"trimmed mean (beta {data['trimmed_mean_beta']})",
             "multi_krum": "Multi-Krum (f = K/5) + mean"}
    rows = []
    for key, entry in data["runs"].items():
        rule, clients = key.split("/K=")
        rows.append([names.get(rule, rule), clients, ms(entry["fedloom"]["median_s"]),
                     ms(entry["flower"]["median_s"]), f"{entry['time_ratio_fedloom_over_flower']:.2f}",
                     f"{entry['fedloom']['peak_extra_models']:.2f} / {entry['flower']['peak_extra_models']:.3g}",
                     "0" if entry["max_rel_diff_fedloom_vs_flower"] == 0
                     else f"{entry['max_rel_diff_fedloom_vs_flower']:.1e}"])
    return measured(data) + "\n\n" + table(
        ["rule", "K", "fedloom", "Flower", "ratio", "extra memory fedloom / Flower (models)",
         "max rel. difference"], rows)


SIMULATION_NAMES = {
    "fedloom-local": "fedloom `simulate.py`, `engine=local` (one worker thread)",
    "fedloom-ray": "fedloom `simulate.py`, `engine=flower` (Ray, same client code)",
    "flower-quickstart": "stock Flower app, TensorFlow-quickstart client (model built per call), Ray",
    "plain-loop": "plain loop, one cached Keras model, `model.fit` per client, no Flower",
}


def simulation(data: dict) -> str:
    rows, round_s = [], {}
    for variant, result in data["variants"].items():
        runs = result.get("runs", [result])  # older JSONs: one run per variant
        round_s[variant] = statistics.fmean(r["median_round_s"] for r in runs)
        pss = [r["peak_tree_pss_bytes"] for r in runs if r.get("peak_tree_pss_bytes") is not None]
        rss = spread([r["peak_tree_rss_bytes"] for r in runs], ".2f", 1 / GIB)
        rows.append([SIMULATION_NAMES.get(variant, variant),
                     spread([r["median_round_s"] for r in runs], ".4f"),
                     spread([r["startup_s"] for r in runs], ".1f") + " s",
                     (spread(pss, ".2f", 1 / GIB) + " GiB" if len(pss) == len(runs) else "—"),
                     rss + " GiB", spread([r["final_accuracy"] for r in runs], ".4f")])
    seeds = data["workload"].get("seeds")
    text = measured(data) + (f" Seeds {seeds}: mean ± sd over seeds.\n" if seeds else " One seed.\n")
    text += "\n" + table(["variant", "median s / round", "start-up", "peak memory (PSS)",
                          "peak memory (RSS sum)", "final accuracy"], rows)
    local = round_s.get("fedloom-local")
    ratios = [f"{other}: {local / round_s[other]:.3f} (1/{round_s[other] / local:.1f})"
              for other in ("flower-quickstart", "plain-loop", "fedloom-ray") if local and other in round_s]
    if ratios:
        text += "\nfedloom-local's round time over " + "; ".join(ratios) + ".\n"
    return text


def byzantine(data: dict) -> str:
    """The Byzantine table: a row per strategy (or ``strategy+variant``), a column per
    attack (every column any row has; a cell a row did not run is "—")."""
    results = data["results"]
    attacks = list(dict.fromkeys(attack for cells in results.values() for attack in cells))
    rows = []
    for strategy, cells in results.items():
        row = [f"`{strategy}`"]
        for attack in attacks:
            cell = cells.get(attack)
            if cell is None:
                row.append("—")
                continue
            value = spread(cell["final_accuracy_per_seed"], ".3f")
            drop = cell.get("drop_vs_no_attack")
            row.append(value if attack == "none" or drop is None else f"{value} ({-100 * drop:+.1f})")
        rows.append(row)
    setting = data["setting"]
    task = f"{setting['task']}: " if setting.get("task", "digits") != "digits" else ""
    runs = data.get("runs", [])
    merged = (f" Rows merged from {len(runs)} runs (commits "
              f"{', '.join(sorted({((r.get('provenance') or {}).get('commit') or '?')[:10] for r in runs}))})."
              if len(runs) > 1 else "")
    return (measured(data) + f" {task}Final test accuracy, mean ± sd over seeds {setting['seeds']}; "
            f"{setting['rounds']} rounds, {setting['num_clients']} clients, {setting['clients_per_round']} "
            f"per round, {setting['attacker_fraction']:.0%} attackers; in brackets: points against the "
            "same strategy without attack." + merged + "\n\n" + table(["strategy", *attacks], rows))


GOAL_POINTS = 3.0  # issue 18: within 3 points of its own no-attack accuracy, and of weighted's


def byzantine_summary(*tasks: dict) -> str:
    """The README's Byzantine summary over the tasks' JSONs (``byzantine.py``): per task
    and row, accuracy without attack, its gap to ``weighted``, the worst attack and how
    many attacks stay within :data:`GOAL_POINTS`; then which rows meet the goal on every
    task (every attack column run, all within the limit, and within it of ``weighted``)."""
    rows, verdicts = [], {}
    for data in tasks:
        results, setting = data["results"], data["setting"]
        name = setting.get("task", "digits")
        attacks = [a for a in dict.fromkeys(a for cells in results.values() for a in cells) if a != "none"]
        reference = results.get("weighted", {}).get("none", {}).get("mean_final_accuracy")
        for row, cells in results.items():
            if "none" not in cells:
                continue
            clean = cells["none"]["mean_final_accuracy"]
            drops = {a: 100 * (clean - cells[a]["mean_final_accuracy"]) for a in attacks if a in cells}
            worst = max(drops, key=drops.get) if drops else None
            gap = None if reference is None else 100 * (clean - reference)
            within = sum(d <= GOAL_POINTS for d in drops.values())
            ok = (len(drops) == len(attacks) and within == len(drops)
                  and gap is not None and gap >= -GOAL_POINTS)
            verdicts.setdefault(row, []).append(ok)
            rows.append([name, f"`{row}`", spread(cells["none"]["final_accuracy_per_seed"], ".3f"),
                         "—" if gap is None or row == "weighted" else f"{gap:+.1f}",
                         "—" if worst is None else f"{worst} ({0.0 - drops[worst]:+.1f})",
                         f"{within} of {len(drops)}" + ("" if len(drops) == len(attacks) else
                                                        f" (of {len(attacks)} columns)")])
    met = [row for row, oks in verdicts.items() if len(oks) == len(tasks) and all(oks)]
    lines = [" ".join(f"{d['setting'].get('task', 'digits')} ({d['setting']['rounds']} rounds, "
                      f"seeds {d['setting']['seeds']}, {d['setting']['attacker_fraction']:.0%} "
                      f"attackers): {measured(d)}" for d in tasks)
             + " Points are differences of means over seeds (sds in docs/faults.md).", "",
        table(["task", "strategy", "no attack", "vs `weighted`, no attack",
               "worst attack (points)", f"attacks within {GOAL_POINTS:g} points"], rows),
        f"Rows within {GOAL_POINTS:g} points of their own no-attack accuracy under every attack and of "
        f"`weighted` without attack, on every task: {', '.join(f'`{r}`' for r in met) or 'none'}."]
    return "\n".join(lines) + "\n"


def convergence_table(result: dict) -> str:
    """One setup's table: mean ± sd over seeds where the JSON has them (``seeds`` per run);
    a row measured on fewer seeds than the setup's says how many."""
    rows = []
    all_seeds = len(result.get("seeds") or [0])
    for run in result["runs"]:
        seeds = run.get("seeds", [run])
        reached = [s["rounds_to_target"] for s in seeds if s["rounds_to_target"] is not None]
        if not reached:
            to_target = "—"
        elif len(reached) == len(seeds):
            to_target = spread(reached, ".1f")
        else:
            to_target = f"{spread(reached, '.1f')} ({len(reached)} of {len(seeds)} seeds)"
        label = run["label"]
        if label == "centralised":
            label = f"centralised (pooled data, {result.get('central_epochs', '?')} epochs; rounds = epochs)"
        if "tuned" in run:
            label += f" ({run['tuned']['key'].split('.')[-1]}={run['tuned']['chosen']})"
        if len(seeds) < all_seeds:
            label += f" ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        rows.append([label, spread([s["final_accuracy"] for s in seeds], ".4f"),
                     spread([s["best_accuracy"] for s in seeds], ".4f"), to_target,
                     f"{statistics.fmean(arrays_megabytes(s, 'up') for s in seeds):.2f}",
                     f"{statistics.fmean(arrays_megabytes(s, 'down') for s in seeds):.2f}",
                     f"{statistics.fmean(s['wall_seconds'] for s in seeds):.1f}"])
    return table(["run", "final acc.", "best acc.", f"rounds to {result['target']:.0%}", "MB up (arrays)",
                  "MB down (arrays)", "s in rounds"], rows)


def arrays_megabytes(summary: dict, direction: str) -> float:
    """A run's array payload in MB: ``megabytes_payload_<direction>``, or for rows measured
    before runs also counted whole messages, ``megabytes_<direction>`` (arrays only then)."""
    value = summary.get(f"megabytes_payload_{direction}")
    return summary[f"megabytes_{direction}"] if value is None else value


def convergence_notes(result: dict) -> str:
    """A setup's provenance line(s), its table, and the checks and grids the JSON holds."""
    about = result if "provenance" in result else {"date": result.get("date"), "machine": result.get("machine")}
    lines = [measured(about)]
    others: dict[str, list[str]] = {}
    for run in result["runs"]:
        line = measured({"provenance": run["provenance"]} if run.get("provenance", {}).get("commit")
                        else (run.get("provenance") or about))
        if line != lines[0]:
            others.setdefault(line, []).append(run["label"])
    lines += [f"Rows {', '.join(labels)}: {line}" for line, labels in others.items()]
    chunk = ""
    for label, check in result.get("compression", {}).items():
        chunk += (f"- {label}: {check['bytes_up_ratio']:.2f}x fewer bytes up, accuracy "
                  f"{-check['accuracy_drop'] * 100:+.2f} points vs weighted\n")
    for label, why in result.get("not_run", {}).items():
        chunk += f"- {label} not run: {why}\n"
    for run in result["runs"]:
        if "tuned" in run:
            tuned = run["tuned"]
            tried = ", ".join(f"{t['value']}: {t['last5_accuracy']:.4f}" for t in tuned["tried"])
            chunk += (f"- {run['label']}: {tuned['key']} tuned on seed {tuned['seed']} by the mean "
                      f"accuracy of the last 5 rounds ({tried})\n")
    for label, check in result.get("goal", {}).items():
        ratio = "never reached" if check["rounds_ratio"] is None else f"{check['rounds_ratio']:.2f}x"
        chunk += (f"- {label} vs fedavg: rounds to target {ratio}, final accuracy "
                  f"{check['points']:+.1f} points (sd {check['sd_points']:.1f} vs {check['base_sd_points']:.1f}); "
                  f"goal (<= 0.8x rounds, >= +2 points) {'met' if check['met'] else 'not met'}\n")
    return "\n\n".join(lines) + "\n\n" + convergence_table(result) + ("\n" + chunk if chunk else "")


def convergence(data: dict) -> str:
    chunks = []
    for name, result in data["setups"].items():  # setups may come from different runs
        seeds = result.get("seeds")
        chunks.append(f"**{name} ({result['rounds']} rounds; "
                      f"{f'seeds {seeds}, mean ± sd' if seeds else 'one seed'}; "
                      f"`{' '.join(result['overrides'])}`)**\n\n" + convergence_notes(result))
    return "\n".join(chunks)


DEPLOYMENT_NAMES = {
    "simulation-local": "simulation, `engine=local`",
    "simulation-ray": "simulation, `engine=flower` (Ray)",
    "deployment-secure": "deployment, TLS + node auth (`deploy.py`)",
    "deployment-insecure": "deployment, `--insecure`",
    "deployment-numpy-floor": "deployment, TLS + node auth, trivial numpy ClientApp (Flower's floor)",
}


def deployment(data: dict) -> str:
    rows = []
    for variant, run in data["variants"].items():
        later = run["round_s"][1:] or run["round_s"]
        rows.append([DEPLOYMENT_NAMES.get(variant, variant),
                     f"{run['median_round_s']:.3f} ({min(later):.3f}-{max(later):.3f})",
                     f"{run['round_1_s']:.2f}", f"{run['startup_s']:.1f} s", memory(run),
                     "—" if run.get("final_accuracy") is None else f"{run['final_accuracy']:.4f}"])
    parts = data["message_parts"]
    rounds = data["workload"]["rounds"]
    text = (measured(data) + f" Median of rounds 2-{rounds} (range in brackets).\n\n"
            + table(["", "seconds per round", "round 1 (s)", "start-up (to round 0)", "peak memory",
                     f"accuracy after {rounds} rounds"], rows) + "\nOne deployment message: a fresh ClientApp process")
    if "clientapp_imports_flower_only_s" in parts:
        text += f" imports Flower and numpy in {parts['clientapp_imports_flower_only_s']:.1f} s"
        if "clientapp_imports_s" in parts:
            text += ", and"
    if "clientapp_imports_s" in parts:
        text += (f" imports Flower and TensorFlow (fedloom's Keras client) in {parts['clientapp_imports_s']:.1f} s; "
                 f"a node's data takes {parts['node_data_first_s']:.2f} s on a run's first message and "
                 f"{parts['node_data_cached_s'] * 1e3:.1f} ms later (cached)")
    return text + ".\n"


def keras_training(data: dict) -> str:
    names = {"a_quickstart": "Flower-quickstart style (build + compile + `fit` per call)",
             "b_cached_fit": "one cached model, `model.fit`", "c_fedloom": "fedloom `KerasTrainer.fit`"}
    rows = [[names.get(key, key), f"{r['median_s']:.4f}", f"{r['first_round_mean_s']:.4f}",
             str(r["updates_timed"])] for key, r in data["results"].items()]
    speedup = data["speedup"]
    return (measured(data) + "\n\n" + table(["method", "median s / update", "first round, mean s",
                                             "updates timed"], rows)
            + f"\nfedloom is {speedup['b_over_c']:.0f}x faster than the cached `model.fit` and "
              f"{speedup['a_over_c']:.0f}x faster than the quickstart style.\n")


def privacy(data: dict) -> str:
    """Epsilon after 1, 10, 50, 100 rounds for each DP config, with its command."""
    versions = data.get("versions", {})
    head = (f"Computed {data['date']} at commit {data['commit'][:10]} (flwr {versions.get('flwr')}, "
            f"dp-accounting {versions.get('dp-accounting')}); sampling m of N without replacement, "
            "replace-one adjacency, every sampled client used.")
    rounds = [r for r, _ in data["tables"][0]["rows"]]
    rows = []
    for t in data["tables"]:
        setting = (f"`{t['command']}`: z={t['noise_multiplier']:g}, {t['clients_per_round']} of "
                   f"{t['num_clients']} clients, delta={t['delta']:g}")
        rows.append([setting, *[f"{eps:.2f}" for _, eps in t["rows"]]])
    check = data.get("check_run")
    tail = ""
    if check:
        tail = (f"\n`{check['command']}` (commit {check['commit']}) reported dp_epsilon "
                f"{check['dp_epsilon_final']:.2f} after round {check['rounds']}, as the first row says.\n")
    return head + "\n\n" + table(["config", *[f"epsilon after {r} rounds" for r in rounds]], rows) + tail


RENDERERS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "privacy": ("privacy.json", privacy),
    "aggregation": ("aggregation.json", aggregation),
    "aggregation-guarded": ("aggregation_guarded.json", aggregation_guarded),
    "robust-aggregation": ("robust_aggregation.json", robust_aggregation),
    "simulation": ("simulation.json", simulation),
    "convergence": ("convergence.json", convergence),
    "byzantine": ("byzantine.json", byzantine),
    "byzantine-fashion": ("byzantine_fashion.json", byzantine),
    "byzantine-summary": (("byzantine.json", "byzantine_fashion.json"), byzantine_summary),
    "keras-training": ("keras_training.json", keras_training),
    "deployment": ("deployment.json", deployment),
    "scale-clients": ("scale.json", scale_clients),
    "scale-shakespeare": ("scale.json", scale_shakespeare),
    "scale-workers": ("scale.json", scale_workers),
}


# ----------------------------------------------------------------------------- check / write
def render(name: str, results: Path = RESULTS) -> str:
    filenames, renderer = RENDERERS[name]
    filenames = (filenames,) if isinstance(filenames, str) else filenames
    return renderer(*(json.loads((results / f).read_text()) for f in filenames))


def update(text: str, results: Path = RESULTS) -> tuple[str, list[str], set[str]]:
    """Return ``text`` with every block re-rendered, the problems found and the blocks seen.

    A problem is a block whose text differs from its JSON, a marker naming no known
    block, or a missing JSON.
    """
    problems: list[str] = []
    seen: set[str] = set()

    def replace(match: re.Match) -> str:
        name = match["name"]
        seen.add(name)
        if name not in RENDERERS:
            problems.append(f"block {name!r}: unknown (known: {', '.join(RENDERERS)})")
            return match[0]
        try:
            body = render(name, results)
        except FileNotFoundError as error:
            problems.append(f"block {name!r}: its JSON is missing ({error.filename})")
            return match[0]
        if body != match["body"]:
            problems.append(f"block {name!r} differs from benchmarks/results/{RENDERERS[name][0]}")
        return f"<!-- figures:{name} -->\n{body}<!-- /figures -->"

    return BLOCK.sub(replace, text), problems, seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if a block differs from its JSON")
    mode.add_argument("--write", action="store_true", help="re-render every block in place")
    mode.add_argument("--print", dest="show", metavar="BLOCK", choices=RENDERERS,
                      help="print one block with its markers (to paste into the README)")
    parser.add_argument("--readme", type=Path, action="append",
                        help="a Markdown file with blocks (repeatable; default: README.md and "
                             "docs/faults.md); every known block must be in one of them")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.show:
        print(f"<!-- figures:{args.show} -->\n{render(args.show, args.results)}<!-- /figures -->")
        return 0
    files = args.readme or DOCUMENTS
    failed, seen = False, set()
    for path in files:
        new, problems, found = update(path.read_text(), args.results)
        seen |= found
        if args.write and new != path.read_text():
            path.write_text(new)
            print(f"wrote {path}")
        for problem in problems:
            if not (args.write and "differs" in problem):
                print(f"{path.name}: {problem}", file=sys.stderr)
                failed = True
    for name in RENDERERS:
        if name not in seen:
            print(f"block {name!r}: no `<!-- figures:{name} -->` ... `<!-- /figures -->` markers in "
                  f"{', '.join(p.name for p in files)}", file=sys.stderr)
            failed = True
    if failed and args.check:
        print("Fix: rerun the benchmark and commit its JSON, then "
              "`python benchmarks/readme_figures.py --write`.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
