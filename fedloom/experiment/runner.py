"""Run an experiment on the chosen engine and record its history.

:func:`prepare_experiment` builds everything from the :class:`RunSettings` (data, model,
strategy, central evaluation, history); :meth:`Experiment.start` runs the rounds on any
Flower ``Grid``. The engine call is isolated in :func:`_run_local` and
:func:`_run_flower`; a deployment's ``ServerApp`` calls ``prepare_experiment(...).start(grid)``
the same way.

Data flows one way. The central evaluation only evaluates (test loss and accuracy);
at the end of each round (``fedloom.rounds``' ``on_round_end``) the round's report goes
to the history, the DP accountant and, every ``checkpoint_every`` rounds and after the
last, to ``checkpoint.npz`` (:mod:`fedloom.checkpoint`). :func:`resume_experiment`
continues a run directory from it, with the run's own settings, and ends with the same
weights as an uninterrupted run (bit for bit on the local engine). Every run writes its
final global model to ``final_weights.npz`` and, as a Keras model, to ``model.keras``.

A run stops before ``num_rounds`` when its ``early_stop`` rule
(:class:`fedloom.early_stopping.EarlyStop`) is met or when ``dp.max_epsilon`` leaves no
room for another release: that round is checkpointed, its history record says why
(``stopped_early``, or ``stopped_reason`` for the privacy budget), and resuming such a
run runs nothing more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.experiment import builders
from fedloom.experiment.history import RunHistory, plot_history
from fedloom.experiment.settings import RunSettings

__all__ = ["Experiment", "MODEL_FILE", "prepare_experiment", "run_experiment", "resume_experiment"]

LOGGER = logging.getLogger("fedloom")

#: The final global model as a Keras model (``keras.models.load_model``).
MODEL_FILE = "model.keras"


@dataclass
class Experiment:
    """An experiment ready to run: its settings, strategy, initial model and history."""

    settings: RunSettings
    output_dir: Path
    strategy: Any  # the fedloom strategy, whose ``reports`` hold each round's report
    initial_arrays: Any
    history: RunHistory
    evaluate_fn: Any  # ``(server_round, arrays) -> MetricRecord`` of test loss and accuracy
    trainer: Any  # the Keras trainer of the central evaluation
    privacy: Any = None  # fedloom.privacy.PrivacyRun of a DP run
    server_strategy: Any = None  # what runs the rounds: ``strategy``, or its DP wrapper
    checkpoint: dict[str, Any] | None = None  # a loaded checkpoint to continue from
    stop_reason: str | None = None  # why the run stopped before num_rounds (early_stop)

    def start(self, grid) -> list[dict[str, Any]]:
        """Run the rounds on ``grid`` (any ``flwr.serverapp.Grid``), from round 1 or from
        ``checkpoint``; write checkpoints, ``final_weights.npz``, ``model.keras``, the plot."""
        from fedloom.checkpoint import FINAL_WEIGHTS_FILE, save_weights
        from fedloom.records import arrayrecord_views
        from fedloom.rounds import run_rounds

        first_round, arrays = 1, self.initial_arrays
        if self.checkpoint is not None:
            first_round, arrays = self._restore(self.checkpoint)
            last = (self.history.records or [{}])[-1]
            self.stop_reason = last.get("stopped_early") or last.get("stopped_reason")
            if self.stop_reason:  # it had stopped early: nothing more to run
                first_round = self.settings.num_rounds + 1
        self.history.restart_clock()
        arrays = run_rounds(
            self.server_strategy,
            grid,
            arrays,
            self.settings.num_rounds,
            first_round=first_round,
            timeout=self.settings.round_timeout,
            train_config=builders.train_config(self.settings),
            evaluate_fn=self.evaluate_fn,
            on_round_end=self._round_end,
            should_stop=lambda server_round, result: self.stop_reason is not None,
        ).arrays
        final = arrayrecord_views(arrays)
        save_weights(self.output_dir / FINAL_WEIGHTS_FILE, list(arrays.keys()), final)
        self.trainer.set_weights(final)
        self.trainer.model.save(self.output_dir / MODEL_FILE)
        if self.settings.plot:
            plot_history(self.history.records, self.output_dir / "plot.png",
                         title=self.settings.experiment_title)
        return self.history.records

    def _round_end(self, server_round: int, arrays, result) -> None:
        """Round ``server_round`` is over (0: the initial model was evaluated): its report
        goes to the history, the accountant and, when due, the checkpoint; a met
        ``early_stop`` rule or an exhausted privacy budget ends the run here."""
        evaluation = result.evaluate_metrics_serverapp[server_round]
        report = _report_of(self.strategy, server_round)
        metrics = {"accuracy": evaluation["accuracy"], "loss": evaluation["loss"]}
        if self.privacy is not None and server_round:  # the round's release, accounted once
            metrics.update(self.privacy.record_round(report))
            if self.privacy.budget_exhausted:
                self.stop_reason = self.privacy.stopped_reason or "privacy budget exhausted"
        self.history.record_round(server_round, metrics, report)
        rule = self.settings.early_stop
        if rule is not None and self.stop_reason is None:
            self.stop_reason = rule.reason([(int(r["round"]), float(r["accuracy"]))
                                            for r in self.history.records])
            if self.stop_reason:
                self.history.mark_stopped(self.stop_reason)
        every, last = self.settings.checkpoint_every, self.settings.num_rounds
        stopping = self.stop_reason is not None
        if server_round and every and (server_round % every == 0 or server_round == last or stopping):
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
            "strategy": strategy_state(self.server_strategy),
            "random": None if self.privacy else global_random_state(),  # never DP noise state
            "history": self.history.records,
            "privacy": self.privacy.state_dict() if self.privacy else None,
            "config": self.settings.to_dict(),
        })

    def _restore(self, checkpoint: Mapping[str, Any]):
        """Load a checkpoint into this (freshly prepared) experiment; return
        ``(first_round, global_arrays)``."""
        from fedloom.checkpoint import load_strategy_state, set_global_random_state
        from fedloom.records import ndarrays_to_arrayrecord

        load_strategy_state(self.server_strategy, checkpoint["strategy"])
        if checkpoint.get("random") is not None and self.privacy is None:
            set_global_random_state(checkpoint["random"])
        if self.privacy is not None and checkpoint.get("privacy"):
            self.privacy.load_state_dict(checkpoint["privacy"])
        self.history.records = list(checkpoint["history"])
        self.history.write()
        round_done = int(checkpoint["round"])
        LOGGER.info("resuming %s after round %d of %d", self.output_dir, round_done,
                    self.settings.num_rounds)
        print(f"resuming {self.output_dir} after round {round_done}", flush=True)
        arrays = ndarrays_to_arrayrecord(checkpoint["arrays"]["values"], checkpoint["arrays"]["keys"])
        return round_done + 1, arrays


def _report_of(strategy: Any, server_round: int) -> Any | None:
    """The strategy's report of ``server_round`` (its latest one), or ``None`` (round 0)."""
    latest = strategy.reports[-1] if strategy.reports else None
    return latest if latest is not None and latest.server_round == server_round else None


def prepare_experiment(settings: RunSettings | Mapping[str, Any], output_dir: str | Path) -> Experiment:
    """Build everything but the engine; write ``config.json`` and ``partition.json``.

    ``settings`` may be the composed config (plain dicts): it is parsed here.

    Raises:
        ConfigError, DataError: before training, for bad settings or data.
    """
    if not isinstance(settings, RunSettings):
        settings = RunSettings.from_config(settings)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(json.dumps(settings.to_dict(), indent=1, sort_keys=True))
    dataset, clients = builders.federated_data(builders.data_key(settings))  # fails fast on bad data
    (output_dir / "partition.json").write_text(
        json.dumps(builders.client_stats(clients, dataset.num_classes))
    )
    from fedloom.clients import get_trainer
    from fedloom.records import ndarrays_to_arrayrecord

    trainer = get_trainer(builders.model_spec(settings, dataset))
    scorer, reported = None, dataset
    if settings.server_quality:  # the server scores updates on a split of its test set
        from fedloom.experiment.server_validation import keras_quality_scorer, split_server_validation

        reported, x_val, y_val = split_server_validation(dataset, settings.server_val_fraction,
                                                         settings.seed)
        scorer = keras_quality_scorer(trainer, x_val, y_val,
                                      settings.strategy.options.get("quality_kind", "accuracy"))
    strategy = builders.build_strategy(settings, scorer)
    privacy = server_strategy = None
    if settings.privacy.enabled:
        from fedloom.privacy import PrivacyRun

        privacy = PrivacyRun(settings.privacy, seed=settings.seed)
        server_strategy = privacy.wrap(strategy, settings.strategy.target)

    initial = trainer.initial_weights()
    initial_arrays = ndarrays_to_arrayrecord(initial, [str(i) for i in range(len(initial))])
    history = RunHistory(output_dir, settings.num_rounds)
    return Experiment(settings, output_dir, strategy, initial_arrays, history,
                      _central_evaluation(trainer, reported), trainer, privacy=privacy,
                      server_strategy=server_strategy or strategy)


def run_experiment(settings: RunSettings | Mapping[str, Any], output_dir: str | Path
                   ) -> list[dict[str, Any]]:
    """Run ``settings`` (or the composed config, parsed here) on its engine, write
    ``history.json`` (and ``plot.png``) to ``output_dir``; return the per-round records
    (round 0 = initial).

    With ``settings.resume`` set, continues that run directory instead (see
    :func:`resume_experiment`; ``output_dir`` is then not used)."""
    if not isinstance(settings, RunSettings):
        settings = RunSettings.from_config(settings)
    if settings.resume:
        return resume_experiment(settings.resume)
    experiment = prepare_experiment(settings, output_dir)
    return _run_on_engine(experiment)


def resume_experiment(run_dir: str | Path) -> list[dict[str, Any]]:
    """Continue the run in ``run_dir`` from its ``checkpoint.npz``, with the settings
    saved in it, writing into ``run_dir``; return all its records.

    Raises:
        ConfigError: no readable checkpoint there.
    """
    from fedloom.checkpoint import CHECKPOINT_FILE, load_checkpoint

    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    experiment = prepare_experiment(RunSettings.from_config(checkpoint["config"]), run_dir)
    experiment.checkpoint = checkpoint
    return _run_on_engine(experiment)


def _run_on_engine(experiment: Experiment) -> list[dict[str, Any]]:
    if experiment.settings.engine.name == "local":
        return _run_local(experiment)
    return _run_flower(experiment)


def _central_evaluation(trainer, dataset):
    """Flower ``evaluate_fn``: test-set loss and accuracy of the global model (under
    server quality, on the test examples the server does not score updates with)."""
    from flwr.app import MetricRecord

    from fedloom.records import arrayrecord_views

    def evaluate(server_round: int, arrays) -> MetricRecord:
        loss, accuracy = trainer.evaluate(arrayrecord_views(arrays), dataset.x_test, dataset.y_test)
        return MetricRecord({"accuracy": float(accuracy), "loss": float(loss)})

    return evaluate


def _run_local(experiment: Experiment) -> list[dict[str, Any]]:
    """fedloom's engine: every ClientApp call in this process, seeded node ids, on
    ``engine.workers`` threads."""
    from fedloom.engine import LocalGrid
    from fedloom.omniscient import attack_grid

    settings = experiment.settings
    grid = LocalGrid(builders.build_client_app(settings), settings.num_clients, seed=settings.seed,
                     workers=settings.engine.workers)
    return experiment.start(attack_grid(grid, settings.attack))


def _run_flower(experiment: Experiment) -> list[dict[str, Any]]:
    """Flower's simulation engine (Ray) through ``flwr.simulation.run_simulation``.

    ``run_simulation`` is deprecated in favour of ``flwr run``, but it is the call that
    runs in this process and takes Python objects: ``flwr run`` needs a SuperLink
    process, a packaged app, and passes only flat run-config strings, so the settings,
    the strategy object and the history writer could not cross it.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedloom.omniscient import attack_grid

        experiment.start(attack_grid(grid, experiment.settings.attack))

    settings = experiment.settings
    engine = settings.engine
    backend_config = {
        "client_resources": {
            "num_cpus": engine.num_cpus_per_client,
            "num_gpus": engine.num_gpus_per_client,
        },
        "init_args": {"address": engine.ray_address} if engine.ray_address else {},
    }
    run_simulation(server_app, builders.build_client_app(settings), settings.num_clients,
                   backend_config=backend_config)
    return experiment.history.records
