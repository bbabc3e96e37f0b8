"""Formatting shared by the README's figure blocks (``readme_figures.py``, ``scale_figures.py``):
provenance line, times, mean ± sd, Markdown tables, tree memory."""

from __future__ import annotations

import statistics

GIB = 2**30


def measured(data: dict) -> str:
    """One line: when, at which commit and on what the JSON was measured."""
    about = data.get("provenance")
    if about is None:  # written before benchmarks recorded provenance
        machine = data.get("machine", "?")
        if isinstance(machine, dict):
            machine = f"{machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores"
        return f"Measured {str(data.get('date', '?'))[:10]} on {machine}; no commit recorded."
    commit = (about.get("commit") or "?")[:10] + (" + uncommitted changes" if about.get("dirty") else "")
    versions = about.get("versions", {})
    tensorflow = versions.get("tensorflow") or versions.get("tensorflow-cpu")
    load = about.get("load_average_1min")
    load = "load not recorded" if load is None else f"load {load:.1f} at start"
    line = (f"Measured {about['date'][:10]} at commit {commit} on {about.get('cpu', '?')}, "
            f"{about.get('cpu_count', '?')} cores ({load}); "
            f"flwr {versions.get('flwr')}, TensorFlow {tensorflow}, numpy {versions.get('numpy')}.")
    return line + (f" {about['collected'][0].upper()}{about['collected'][1:]}." if about.get("collected") else "")


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def spread(values: list[float], fmt: str, scale: float = 1.0) -> str:
    """``mean +- sd`` of ``values`` (sample sd) in ``fmt``; the value alone for one."""
    values = [v * scale for v in values]
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def memory(run: dict) -> str:
    """Peak tree memory: PSS, with the RSS sum in brackets (RSS only in older JSONs)."""
    rss = run["peak_tree_rss_bytes"] / GIB
    pss = run.get("peak_tree_pss_bytes")
    return f"{rss:.2f} GiB (RSS sum)" if pss is None else f"{pss / GIB:.2f} GiB (RSS sum {rss:.2f})"
