"""README blocks of ``benchmarks/results/scale.json``: the client-count sweep and the
Shakespeare run (``benchmarks/scale.py``); registered in ``readme_figures.RENDERERS``.
A section that has not been measured renders as one line saying how to measure it."""

from __future__ import annotations

from figure_format import measured, memory, ms, table

__all__ = ["scale_clients", "scale_shakespeare", "scale_workers"]


def _not_measured(section: str) -> str:
    return (f"Not measured yet: run `python benchmarks/scale.py --sections {section}` and "
            "`python benchmarks/readme_figures.py --write`.\n")


WORKLOAD_NAMES = {
    "digits": "digits (the default job: MLP 64-64, 10 of 100 clients, E=1, B=10)",
    "fashion": "Fashion-MNIST, `model=mcmahan_cnn`, 10 of 100 clients, E=5, B=10",
}


def scale_workers(data: dict) -> str:
    """The workers sweep (``scale.json``'s ``workers``, ``interleaved`` and ``probe``
    keys): round time of the local engine with W worker threads, and of Ray."""
    if "workers" not in data:
        return _not_measured("workers")
    rows = []
    for run in data["workers"]:
        engine = "Ray (`engine=flower`)" if run["workers"] == 0 else f"local, W = {run['workers']}"
        rows.append([WORKLOAD_NAMES.get(run["workload"], run["workload"]), engine,
                     f"{run['median_round_seconds']:.3f} s", f"{run['startup_seconds']:.1f} s",
                     memory(run), f"{run['final_accuracy']:.4f}", run["final_weights_sha256"][:12]])
    ratios = ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in data["ratios"].items())
    goals = ", ".join(f"{name}: {'met' if ok else 'not met'}" for name, ok in data["goals"].items())
    identical = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in data["bit_identical"].items())
    lines = [measured(data), "", table(["workload", "engine", "median round", "start-up",
                                         "peak memory (PSS)", "final accuracy", "weights (sha256)"], rows),
             f"Ratios of median rounds: {ratios}. Goals: {goals}. Final weights bit-identical "
             f"across worker counts: {identical}."]
    anatomies = [(run["workload"], run["anatomy"]) for run in data["workers"]
                 if run["workers"] == 1 and run.get("anatomy")]
    for workload, anatomy in anatomies:
        lines.append(
            f"Anatomy of the {workload} round at W = 1 (median of {anatomy['rounds']} rounds): client calls "
            f"{_seconds(anatomy['client_calls_seconds'])} of {_seconds(anatomy['round_seconds'])} "
            f"({anatomy['calls_share_of_round']:.0%}; {anatomy['fit_share_of_calls']:.0%} of them inside "
            f"the trainer's update), the server's work between them {_seconds(anatomy['rest_seconds'])}; "
            f"the calls keep {anatomy['busy_cores_in_calls']:.2f} of {anatomy['cores']} cores busy. "
            f"Perfectly overlapped calls would leave {anatomy['overlap_bound']:.2f} of the round, their "
            f"CPU work packed onto every core {anatomy['cpu_bound']:.2f}.")
    if data.get("bounds"):
        lines.append("Least ratios these allow: " + ", ".join(
            f"{name.replace('_', ' ')} {value:.2f}" for name, value in data["bounds"].items()) + ".")
    if "interleaved" in data:
        inter = data["interleaved"]
        per = ", ".join(f"W = {w}: {v} ms" for w, v in inter["median_ms_per_batch"].items())
        lines.append(f"The engine's part alone ({inter['calls_per_batch']} digits client calls per "
                     f"batch, worker counts alternating batch by batch, median of {inter['batches']}): {per}.")
    if "probe" in data:
        probe = data["probe"]["seconds_per_update"]
        lines.append("Seconds per digits client update, " + ", ".join(
            f"{name.replace('_', ' ')}: {value * 1e3:.2f} ms" for name, value in probe.items())
            + f" ({data['probe']['workers']} threads share TensorFlow's pools; each worker process "
            f"runs TensorFlow with {data['probe']['tf_threads_per_process']} thread).")
    return "\n".join(lines) + "\n"


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
            f"round, {workload['rounds']} rounds, {_engine(section['runs'][0])}, a fresh process per row, "
            "partition cache off. Start-up: "
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
            f"{section['clients_per_round']} per round, {_engine(section)}; rounds to a target read off the best-so-far "
            "accuracy curve (interpolated); wall time of the rounds (start-up apart). Best accuracy "
            f"{section['best_accuracy']:.4f} in {section['rounds_run']} rounds; median round "
            f"{section['median_round_seconds']:.1f} s; start-up {section['startup_seconds']:.1f} s; "
            f"peak memory {memory(section)}.{_load(section)}\n")
    return measured(section) + "\n" + head + "\n" + table(
        ["next-character accuracy", "rounds", "wall time"], rows)


def _seconds(value: float) -> str:
    return ms(value) if value < 1 else f"{value:.2f} s"


def _engine(run: dict) -> str:
    """The local engine's worker threads of a run (JSONs before they were recorded ran
    with one, then the default)."""
    workers = run.get("workers")
    if workers is None:
        return "local engine with 1 worker thread (the default then)"
    return f"local engine with {workers} worker thread{'s' if workers != 1 else ''}"


def _load(section: dict) -> str:
    """The 1-minute load average at the start and the end of a long section (other work
    on a shared machine stretches its wall times), or nothing where not recorded."""
    if "load_before" not in section or "load_after" not in section:
        return ""
    return (f" Load average {section['load_before'][0]:.1f} at the start, "
            f"{section['load_after'][0]:.1f} at the end (wall times stretch with it).")
