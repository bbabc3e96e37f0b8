"""Run an experiment config on the chosen engine and record its history.

:func:`prepare_experiment` builds everything from the config (data, model, strategy,
central evaluation, history); :meth:`Experiment.start` runs the rounds on any Flower
``Grid``. The engine call is isolated in :func:`_run_local` and :func:`_run_flower`;
a deployment's ``ServerApp`` calls ``prepare_experiment(...).start(grid)`` the same way.

Every ``checkpoint_every`` rounds (and after the last) the server state is written to
``checkpoint.npz`` (:mod:`fedloom.checkpoint`); :func:`resume_experiment` continues a
run directory from it, with the run's own config, and ends with the same weights as an
uninterrupted run (bit for bit on the local engine). Every run writes its final global
model to ``final_weights.npz``.

With an ``early_stop`` rule (:class:`fedloom.early_stopping.EarlyStop`) the run ends after
the round that meets it; that round is checkpointed and its history record says why
(``stopped_early``), and resuming such a run runs nothing more.
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

__all__ = ["Experiment", "prepare_experiment", "run_experiment", "resume_experiment"]

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
    server_strategy: Any = None  # what runs the rounds: ``strategy`` or a DP wrapper of it
    accountant: Any = None  # fedloom.privacy.PrivacyAccountant of a DP run
    checkpoint: dict[str, Any] | None = None  # a loaded checkpoint to continue from
    stop_reason: str | None = None  # why the run stopped before num_rounds (early_stop)

    def start(self, grid) -> list[dict[str, Any]]:
        """Run the rounds on ``grid`` (any ``flwr.serverapp.Grid``), from round 1 or from
        ``checkpoint``; write checkpoints, ``final_weights.npz`` and the plot."""
        from fedloom.checkpoint import FINAL_WEIGHTS_FILE, save_weights
        from fedloom.records import arrayrecord_views
        from fedloom.rounds import run_rounds

        first_round, arrays = 1, self.initial_arrays
        if self.checkpoint is not None:
            first_round, arrays = self._restore(self.checkpoint)
            self.stop_reason = (self.history.records or [{}])[-1].get("stopped_early")
            if self.stop_reason:  # it had stopped early: nothing more to run
                first_round = int(self.cfg["num_rounds"]) + 1
        self.history.restart_clock()
        result = run_rounds(
            self.server_strategy or self.strategy,
            grid,
            arrays,
            int(self.cfg["num_rounds"]),
            first_round=first_round,
            timeout=float(self.cfg["round_timeout"]),
            train_config=setup.train_config(self.cfg),
            evaluate_fn=self.evaluate_fn,
            on_round_end=self._round_end,
            should_stop=lambda server_round, result: self.stop_reason is not None,
        )
        save_weights(self.output_dir / FINAL_WEIGHTS_FILE, list(result.arrays.keys()),
                     arrayrecord_views(result.arrays))
        if self.cfg.get("plot", True):
            target = self.cfg["strategy"]["_target_"].split(".", 2)[-1]
            plot_history(self.history.records, self.output_dir / "plot.png",
                         title=f"{target} on {self.cfg['dataset']['name']}")
        return self.history.records

    def _round_end(self, server_round: int, arrays, result) -> None:
        from fedloom.early_stopping import EarlyStop

        rule = EarlyStop.from_config(self.cfg.get("early_stop"))
        if rule is not None:
            self.stop_reason = rule.reason([(int(r["round"]), float(r["accuracy"]))
                                            for r in self.history.records])
            if self.stop_reason:
                self.history.mark_stopped(self.stop_reason)
        every = int(self.cfg.get("checkpoint_every", 0) or 0)
        last = server_round == int(self.cfg["num_rounds"]) or self.stop_reason is not None
        if every and (server_round % every == 0 or last):
            self.save_checkpoint(server_round, arrays)

    def save_checkpoint(self, server_round: int, arrays) -> Path:
        """Write the state after ``server_round`` (global model ``arrays``) atomically."""
        from fedloom.checkpoint import (
            CHECKPOINT_FILE,
            global_random_state,
            save_checkpoint,
            strategy_state,
        )
        from fedloom.records import arrayrecord_views

        return save_checkpoint(self.output_dir / CHECKPOINT_FILE, {
            "round": server_round,
            "arrays": {"keys": list(arrays.keys()), "values": arrayrecord_views(arrays)},
            "strategy": strategy_state(self.server_strategy or self.strategy),
            "random": global_random_state(),
            "history": self.history.records,
            "accountant": self.accountant.state_dict() if self.accountant else None,
            "config": dict(self.cfg),
        })

    def _restore(self, checkpoint: Mapping[str, Any]):
        """Load a checkpoint into this (freshly prepared) experiment; return
        ``(first_round, global_arrays)``."""
        from fedloom.checkpoint import load_strategy_state, set_global_random_state
        from fedloom.records import ndarrays_to_arrayrecord

        load_strategy_state(self.server_strategy or self.strategy, checkpoint["strategy"])
        set_global_random_state(checkpoint["random"])
        if self.accountant is not None and checkpoint.get("accountant"):
            self.accountant.load_state_dict(checkpoint["accountant"])
        self.history.records = list(checkpoint["history"])
        self.history.write()
        round_done = int(checkpoint["round"])
        LOGGER.info("resuming %s after round %d of %d", self.output_dir, round_done,
                    int(self.cfg["num_rounds"]))
        print(f"resuming {self.output_dir} after round {round_done}", flush=True)
        arrays = ndarrays_to_arrayrecord(checkpoint["arrays"]["values"], checkpoint["arrays"]["keys"])
        return round_done + 1, arrays


def prepare_experiment(cfg: Mapping[str, Any], output_dir: str | Path) -> Experiment:
    """Validate ``cfg`` and build everything but the engine.

    Raises:
        ConfigError, DataError: before training, for bad settings or data.
    """
    settings.validate(cfg)
    cfg = settings.resolved(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    dataset, clients = setup.federated_data(setup.data_key(cfg))  # fails fast on bad data
    (output_dir / "partition.json").write_text(
        json.dumps(setup.client_stats(clients, dataset.num_classes))
    )
    strategy = setup.build_strategy(cfg)
    from fedloom.privacy import PrivacySettings, prepare_privacy, seed_global_numpy

    dp = PrivacySettings.from_config(cfg.get("dp"), int(cfg["clients_per_round"]), int(cfg["num_clients"]))
    server_strategy, accountant = prepare_privacy(strategy, dp, cfg["strategy"]["_target_"])
    if dp.enabled:
        seed_global_numpy(int(cfg["seed"]))

    from fedloom.clients import get_trainer
    from fedloom.records import ndarrays_to_arrayrecord

    trainer = get_trainer(setup.model_spec(cfg, dataset))
    initial = trainer.initial_weights()
    initial_arrays = ndarrays_to_arrayrecord(initial, [str(i) for i in range(len(initial))])
    history = RunHistory(output_dir, int(cfg["num_rounds"]))
    round_metrics = None
    if accountant is not None:
        from fedloom.privacy import privacy_metrics

        def round_metrics(server_round, report):
            return privacy_metrics(accountant, server_strategy, report)

    evaluate_fn = _central_evaluation(trainer, dataset, strategy, history, round_metrics)
    return Experiment(cfg, output_dir, strategy, initial_arrays, history, evaluate_fn,
                      server_strategy=server_strategy, accountant=accountant)


def run_experiment(cfg: Mapping[str, Any], output_dir: str | Path) -> list[dict[str, Any]]:
    """Validate ``cfg``, run it on ``cfg.engine``, write ``history.json`` (and
    ``plot.png``) to ``output_dir``; return the per-round records (round 0 = initial).

    With ``cfg.resume`` set, continues that run directory instead (see
    :func:`resume_experiment`; ``output_dir`` is then not used)."""
    if cfg.get("resume"):
        return resume_experiment(cfg["resume"])
    experiment = prepare_experiment(cfg, output_dir)
    return _run_on_engine(experiment)


def resume_experiment(run_dir: str | Path) -> list[dict[str, Any]]:
    """Continue the run in ``run_dir`` from its ``checkpoint.npz``, with the config
    saved in it, writing into ``run_dir``; return all its records.

    Raises:
        ConfigError: no readable checkpoint there.
    """
    from fedloom.checkpoint import CHECKPOINT_FILE, load_checkpoint

    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    experiment = prepare_experiment(checkpoint["config"], run_dir)
    experiment.checkpoint = checkpoint
    return _run_on_engine(experiment)


def _run_on_engine(experiment: Experiment) -> list[dict[str, Any]]:
    if experiment.cfg["engine"]["name"] == "local":
        return _run_local(experiment)
    return _run_flower(experiment)


def _central_evaluation(trainer, dataset, strategy, history: RunHistory, round_metrics=None):
    """Flower ``evaluate_fn``: test-set loss/accuracy of the global model each round,
    recorded with the strategy's report of that round (plus ``round_metrics(round,
    report)``, e.g. the privacy spent, when given)."""
    from flwr.app import MetricRecord

    from fedloom.records import arrayrecord_views

    def evaluate(server_round: int, arrays) -> MetricRecord:
        loss, accuracy = trainer.evaluate(arrayrecord_views(arrays), dataset.x_test, dataset.y_test)
        reports = [r for r in strategy.reports if r.server_round == server_round]
        report = reports[-1] if reports else None
        metrics = {"accuracy": accuracy, "loss": loss}
        if round_metrics is not None:
            metrics.update(round_metrics(server_round, report))
        history.record_round(server_round, metrics, report)
        return MetricRecord({"accuracy": float(accuracy), "loss": float(loss)})

    return evaluate


def _run_local(experiment: Experiment) -> list[dict[str, Any]]:
    """fedloom's engine: every ClientApp call in this process, seeded node ids, on
    ``engine.workers`` threads."""
    from fedloom.engine import LocalGrid, resolve_workers

    cfg = experiment.cfg
    grid = LocalGrid(setup.build_client_app(cfg), int(cfg["num_clients"]), seed=int(cfg["seed"]),
                     workers=resolve_workers(cfg["engine"].get("workers")))
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
