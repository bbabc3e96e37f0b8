"""Run a federated-learning experiment on a local Flower deployment.

    python deploy.py num_clients=3 clients_per_round=3 num_rounds=5   # any simulate.py override
    python deploy.py --insecure num_clients=3 clients_per_round=3     # no TLS / node auth
    python deploy.py --help

Starts one flower-superlink and num_clients flower-supernode processes on 127.0.0.1
(TLS and SuperNode authentication on), runs the app of pyproject.toml with `flwr run`,
streams its log, and stops every process it started. Writes history.json, config.json,
partition.json and plot.png into the run directory (outputs/deploy/<date>/<time>/), with
the processes' logs in logs/. See fedloom/deploy/launch.py and README.md, "Deployment".
"""

from __future__ import annotations

import sys

from fedloom.deploy.launch import main

if __name__ == "__main__":
    sys.exit(main())
