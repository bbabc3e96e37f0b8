"""Run a federated-learning experiment on Flower's simulation engines.

    python simulate.py                                   # digits, 100 clients, weighted average
    python simulate.py strategy=fedavg num_rounds=50     # any key of conf/ can be overridden
    python simulate.py -m strategy=simple,weighted,fedavg   # one run directory each
    python simulate.py engine=flower                     # Flower's Ray engine instead of fedloom's
    python simulate.py resume=outputs/2026-11-25/12-00-00   # continue a killed run
    python simulate.py verbose=true                      # Flower's own log lines too

The same command as ``fedloom-simulate`` (installed with fedloom) and
``python -m fedloom.simulate``: see fedloom/simulate.py.
"""

from __future__ import annotations

from fedloom.simulate import cli

if __name__ == "__main__":
    cli()
