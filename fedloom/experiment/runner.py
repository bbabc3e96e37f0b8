"""Run an experiment config on the chosen engine and record its history.

:func:`prepare_experiment` builds everything from the config (data, model, strategy,
central evaluation, history); :meth:`Experiment.start` runs the rounds on any Flower
``Grid``. The engine call is isolated in :func:`_run_local` and :func:`_run_flower`;
a deployment's ``ServerApp`` calls ``prepare_experiment(...).start(grid)`` the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.experiment import settings, setup
from fedloom.experiment.history import RunHistory, plot_history

__all__ = ["Experiment", "prepare_experiment", "run_experiment"]

LOGGER = logging.getLogger("fedloom")


@dataclass
class Experiment:
    """An experiment ready to run: its config, strategy, initial model and history."""

    cfg: Mapping[str, Any]
    output_dir: Path
    strategy: Any
    initial_arrays: Any
    history: RunHistory
    evaluate_fn: Any

    def start(self, grid) -> list[dict[str, Any]]:
        """Run all rounds on ``grid`` (any ``flwr.serverapp.Grid``); write the plot."""
        self.history.restart_clock()
        self.strategy.start(
            grid=grid,
            initial_arrays=self.initial_arrays,
            num_rounds=int(self.cfg["num_rounds"]),
            timeout=float(self.cfg["round_timeout"]),
            train_config=setup.train_config(self.cfg),
            evaluate_fn=self.evaluate_fn,
        )
        if self.cfg.get("plot", True):
            target = self.cfg["strategy"]["_target_"].split(".", 2)[-1]
            plot_history(self.history.records, self.output_dir / "plot.png",
                         title=f"{target} on {self.cfg['dataset']['name']}")
        return self.history.records


def prepare_experiment(cfg: Mapping[str, Any], output_dir: str | Path) -> Experiment:
    """Validate ``cfg`` and build everything but the engine.

    Raises:
        ConfigError, DataError: before training, for bad settings or data.
    """
    settings.validate(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    dataset, clients = setup.federated_data(setup.data_key(cfg))  # fails fast on bad data
    (output_dir / "partition.json").write_text(
        json.dumps(setup.client_stats(clients, dataset.num_classes))
    )
    strategy = setup.build_strategy(cfg)

    from fedloom.clients import get_trainer
    from fedloom.records import ndarrays_to_arrayrecord

    trainer = get_trainer(setup.model_spec(cfg, dataset))
    initial = trainer.initial_weights()
    initial_arrays = ndarrays_to_arrayrecord(initial, [str(i) for i in range(len(initial))])
    history = RunHistory(output_dir, int(cfg["num_rounds"]))
    evaluate_fn = _central_evaluation(trainer, dataset, strategy, history)
    return Experiment(cfg, output_dir, strategy, initial_arrays, history, evaluate_fn)


def run_experiment(cfg: Mapping[str, Any], output_dir: str | Path) -> list[dict[str, Any]]:
    """Validate ``cfg``, run it on ``cfg.engine``, write ``history.json`` (and
    ``plot.png``) to ``output_dir``; return the per-round records (round 0 = initial)."""
    experiment = prepare_experiment(cfg, output_dir)
    if cfg["engine"]["name"] == "local":
        return _run_local(experiment)
    return _run_flower(experiment)


def _central_evaluation(trainer, dataset, strategy, history: RunHistory):
    """Flower ``evaluate_fn``: test-set loss/accuracy of the global model each round,
    recorded with the strategy's report of that round."""
    from flwr.app import MetricRecord

    from fedloom.records import arrayrecord_views

    def evaluate(server_round: int, arrays) -> MetricRecord:
        loss, accuracy = trainer.evaluate(arrayrecord_views(arrays), dataset.x_test, dataset.y_test)
        reports = [r for r in strategy.reports if r.server_round == server_round]
        history.record_round(server_round, {"accuracy": accuracy, "loss": loss},
                             reports[-1] if reports else None)
        return MetricRecord({"accuracy": float(accuracy), "loss": float(loss)})

    return evaluate


def _run_local(experiment: Experiment) -> list[dict[str, Any]]:
    """fedloom's engine: every ClientApp call in this process, seeded node ids."""
    from fedloom.engine import LocalGrid

    cfg = experiment.cfg
    grid = LocalGrid(setup.build_client_app(cfg), int(cfg["num_clients"]), seed=int(cfg["seed"]))
    return experiment.start(grid)


def _run_flower(experiment: Experiment) -> list[dict[str, Any]]:
    """Flower's simulation engine (Ray) through ``flwr.simulation.run_simulation``.

    ``run_simulation`` is deprecated in favour of ``flwr run``, but it is the call that
    runs in this process and takes Python objects: ``flwr run`` needs a SuperLink
    process, a packaged app, and passes only flat run-config strings, so the composed
    Hydra config, the strategy object and the history writer could not cross it.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        experiment.start(grid)

    cfg = experiment.cfg
    engine = cfg["engine"]
    backend_config = {
        "client_resources": {
            "num_cpus": int(engine.get("num_cpus_per_client", 1)),
            "num_gpus": float(engine.get("num_gpus_per_client", 0.0)),
        },
        "init_args": {"address": engine["ray_address"]} if engine.get("ray_address") else {},
    }
    run_simulation(server_app, setup.build_client_app(cfg), int(cfg["num_clients"]),
                   backend_config=backend_config)
    return experiment.history.records
