"""README blocks of ``benchmarks/results/scale.json``: the client-count sweep and the
Shakespeare run (``benchmarks/scale.py``); registered in ``readme_figures.RENDERERS``.
A section that has not been measured renders as one line saying how to measure it."""

from __future__ import annotations

from figure_format import measured, memory, table

__all__ = ["scale_clients", "scale_shakespeare"]


def _not_measured(section: str) -> str:
    return (f"Not measured yet: run `python benchmarks/scale.py --sections {section}` and "
            "`python benchmarks/readme_figures.py --write`.\n")


def scale_clients(data: dict) -> str:
    """The client-count sweep (``scale.json``'s ``clients`` section): start-up, round time
    and memory at each number of clients."""
    section = data.get("clients")
    if section is None:
        return _not_measured("clients")
    workload = section["workload"]
    rows = []
    for run in section["runs"]:
        phases = run["phases"]
        rows.append([f"{run['num_clients']:,}", f"{run['examples_per_client']['mean']:.1f}",
                     f"{run['startup_seconds']:.1f} s", f"{phases['dataset']:.1f} s",
                     f"{phases['partition']:.1f} s", f"{run['median_round_seconds']:.2f} s",
                     f"{run['round_1_seconds']:.2f} s", memory(run)])
    head = (f"Fashion-MNIST, Dirichlet(0.5), MLP 64-64, {workload['clients_per_round']} clients per "
            f"round, {workload['rounds']} rounds, a fresh process per row, partition cache off. Start-up: "
            "launch to the start of round 1 (imports, data, partition, TensorFlow, model, round 0's "
            "evaluation); median round over rounds 2.. (each includes the central evaluation).\n")
    return measured(section) + "\n" + head + "\n" + table(
        ["clients", "examples per client", "start-up", "of which loading", "of which partition",
         "median round", "round 1", "peak memory (PSS)"], rows)


def scale_shakespeare(data: dict) -> str:
    """The Shakespeare FedAvg run (``scale.json``'s ``shakespeare`` section): rounds and
    wall time to 40% and 50% next-character accuracy."""
    section = data.get("shakespeare")
    if section is None:
        return _not_measured("shakespeare")
    rows = []
    for target, reached in section["targets"].items():
        if reached["rounds"] is None:
            rows.append([f"{float(target):.0%}", f"not reached in {section['rounds_run']} rounds", "—"])
        else:
            rows.append([f"{float(target):.0%}", f"{reached['rounds']:.1f}",
                         f"{reached['seconds'] / 60:.1f} min"])
    overrides = " ".join(o for o in section["overrides"] if not o.startswith(("plot=", "early_stop.")))
    head = (f"`{overrides}`: {section['num_clients']:,} natural clients (speaking roles), "
            f"{section['clients_per_round']} per round; rounds to a target read off the best-so-far "
            "accuracy curve (interpolated); wall time of the rounds (start-up apart). Best accuracy "
            f"{section['best_accuracy']:.4f} in {section['rounds_run']} rounds; median round "
            f"{section['median_round_seconds']:.1f} s; start-up {section['startup_seconds']:.1f} s; "
            f"peak memory {memory(section)}.\n")
    return measured(section) + "\n" + head + "\n" + table(
        ["next-character accuracy", "rounds", "wall time"], rows)
