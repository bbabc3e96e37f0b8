"""Run a whole fedloom experiment from its settings (what ``simulate.py`` calls).

Data flows one way: settings -> builders -> the rounds -> each round's report ->
history, accountant and checkpoint.

- ``settings``: :class:`RunSettings`, the Hydra config checked and parsed once
  (one-line errors naming the key); the only reader of the raw config.
- ``builders``: dataset and client partitions (cached per process), model spec, the
  ``ClientApp``, the strategy, the clients' train config.
- ``history``: per-round records, ``history.json``, progress lines and the plot.
- ``runner``: runs it on the chosen engine; the end-of-round hook records the report.
"""

from fedloom.experiment.runner import (
    Experiment,
    prepare_experiment,
    resume_experiment,
    run_experiment,
)
from fedloom.experiment.settings import RunSettings

__all__ = ["Experiment", "RunSettings", "prepare_experiment", "resume_experiment", "run_experiment"]
