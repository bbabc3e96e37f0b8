"""Run a whole fedloom experiment from a Hydra config (what ``simulate.py`` calls).

- ``settings``: checks the config before any work (one-line errors naming the key).
- ``setup``: dataset and client partitions (cached per process), model spec, the
  ``ClientApp``, the strategy, the server-side evaluation.
- ``history``: per-round records, ``history.json``, progress lines and the plot.
- ``runner``: runs it on the chosen engine.
"""

from fedloom.experiment.runner import (
    Experiment,
    prepare_experiment,
    resume_experiment,
    run_experiment,
)

__all__ = ["Experiment", "prepare_experiment", "resume_experiment", "run_experiment"]
