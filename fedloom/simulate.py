"""Command line: run a federated-learning experiment on a simulation engine.

    fedloom-simulate                                   # digits, 100 clients, weighted average
    fedloom-simulate strategy=fedavg num_rounds=50     # any key of conf/ can be overridden
    fedloom-simulate -m strategy=simple,weighted,fedavg   # one run directory each
    fedloom-simulate engine=flower                     # Flower's Ray engine (extra `ray`)
    fedloom-simulate resume=outputs/2026-11-25/12-00-00   # continue a killed run
    fedloom-simulate verbose=true                      # Flower's own log lines too

``python -m fedloom.simulate`` and the repository's ``python simulate.py`` are the same
command. Writes history.json, config.json, partition.json, plot.png, checkpoint.npz,
final_weights.npz and the full log (simulate.log) into Hydra's run directory
(outputs/<date>/<time>/ under the current directory, or multirun/... with -m); a resumed
run writes into the directory it continues.

The terminal shows one line per round and a summary line; Flower's per-round INFO
lines only with ``verbose=true``; warnings and errors once, on stderr. Everything,
at INFO, is in the run directory's log.

The config tree is the repository's ``conf/``; a wheel ships it as ``fedloom/conf``
(package data), so the command runs from any directory.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
# TensorFlow takes all GPU memory by default; grow it as needed instead (several clients
# or Ray workers can then share a GPU). TF_FORCE_GPU_ALLOW_GROWTH=false turns this off.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fedloom.errors import ConfigError, DataError  # noqa: E402

__all__ = ["config_dir", "main", "configure_terminal_logging", "summary_line"]


def config_dir() -> Path:
    """The Hydra config tree: ``fedloom/conf`` in an installed wheel, else the source
    checkout's ``conf/`` beside the ``fedloom`` package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"fedloom's config tree is missing: neither {here / 'conf'} (installed wheel) nor "
        f"{here.parent / 'conf'} (source checkout) has config.yaml. Reinstall fedloom, or "
        "run from a checkout of the repository."
    )


CONF = config_dir()
_STARTED = time.perf_counter()


def configure_terminal_logging(verbose: bool) -> None:
    """One copy of each log line, terminal kept to warnings unless ``verbose``.

    Hydra gives the root logger a console handler and a file handler (the run's
    ``simulate.log``); Flower's ``flwr`` logger has a console handler of its own and also
    propagates to the root, so each Flower line was printed twice. Here Flower's own
    console handlers are removed (its lines reach the terminal and the file through the
    root), and the root's console handlers go to stderr at WARNING (INFO with
    ``verbose``), so stdout carries only fedloom's progress and summary lines.
    """
    import flwr.common.logger  # noqa: F401  Flower adds its console handler on import

    flwr_logger = logging.getLogger("flwr")
    for handler in list(flwr_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            flwr_logger.removeHandler(handler)
    flwr_logger.propagate = True
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(sys.stderr)
            handler.setLevel(logging.INFO if verbose else logging.WARNING)


def summary_line(records: Sequence[Mapping[str, Any]], output_dir: str | Path, seconds: float) -> str:
    """The last line of a run: final and best accuracy, rounds, time (training = the
    rounds' wall time; in all = since the command started), where the files are."""
    final = records[-1]
    best = max(records, key=lambda r: r["accuracy"])
    training = float(final.get("cumulative_seconds", 0.0))
    stopped = f"; stopped early: {final['stopped_early']}" if final.get("stopped_early") else ""
    names = [n for n in ("history.json", "plot.png", "final_weights.npz") if (Path(output_dir) / n).exists()]
    return (f"final accuracy {final['accuracy']:.4f} after {final['round']} rounds (best "
            f"{best['accuracy']:.4f} in round {best['round']}); {training:.1f} s training, "
            f"{seconds:.1f} s in all{stopped}; {', '.join(names)} and the log in {output_dir}")


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: run ``cfg`` and print the summary line; returns the final
    accuracy (Hydra's sweepers can optimise it)."""
    from fedloom.experiment import RunSettings, run_experiment

    output_dir = HydraConfig.get().runtime.output_dir
    try:
        settings = RunSettings.from_config(OmegaConf.to_container(cfg, resolve=True))
        configure_terminal_logging(settings.verbose)
        if settings.resume:
            ignored = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
            if ignored:
                print(f"warning: resume continues with the run's own config; ignoring {' '.join(ignored)}",
                      file=sys.stderr)
            output_dir = settings.resume
        records = run_experiment(settings, output_dir)
    except (ConfigError, DataError) as err:
        logging.getLogger("fedloom").info("%s", err)  # in the log file; the terminal gets one line
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary_line(records, output_dir, time.perf_counter() - _STARTED), flush=True)
    return float(records[-1]["accuracy"])


def cli() -> None:
    """``fedloom-simulate``: refuse unknown keys and options in one line, then run."""
    from fedloom.experiment.settings import check_overrides

    try:  # a wrong group choice or key fails in one line, like other bad settings
        check_overrides(sys.argv[1:], CONF)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
