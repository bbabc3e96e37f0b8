"""The deployment ServerApp: the simulation's experiment, run on a real SuperLink.

The SuperLink starts this app for every ``flwr run``. It reads three keys of the run
config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridden with ``flwr run
--run-config``):

- ``overrides``: Hydra overrides of ``conf/``, as given to ``simulate.py``
  (``"strategy=fedavg num_rounds=50 num_clients=3 clients_per_round=3"``);
- ``output-dir``: where ``history.json``, ``config.json``, ``partition.json`` and
  ``plot.png`` go on the server machine (``""``: ``outputs/deploy/run-<run id>``
  under the SuperLink's working directory);
- ``connect-timeout``: seconds to wait for ``num_clients`` SuperNodes before round 1.

It then does what simulation does: ``prepare_experiment(settings, output_dir).start(grid)``,
with Flower's grid of real SuperNodes in place of the local engine, so a deployment
writes the same ``history.json`` as a simulation of the same config.

What differs in deployment, and why:

- ``num_clients`` is the number of SuperNodes of the federation. Round 1 waits until
  all of them are connected (so the first sampling sees the whole federation), or
  fails after ``connect-timeout`` naming how many came.
- From then on a round needs only ``clients_per_round`` connected nodes (Flower's
  ``min_available_nodes``, set by ``RunSettings(deployed=True)``; simulation asks
  for all ``num_clients``): a site that
  crashes or is switched off does not stall the federation while enough remain. A
  node that vanishes mid-round costs that round at most ``round_timeout`` seconds, and
  the round aggregates the replies that came (at least ``min_valid_updates``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedloom.errors import ConfigError, FedloomError
from fedloom.omniscient import attack_grid

__all__ = ["app", "wait_for_nodes"]

LOGGER = logging.getLogger("fedloom")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Compose the experiment from the run config and run all its rounds on ``grid``."""
    from fedloom.deploy.config import compose_experiment
    from fedloom.experiment import RunSettings, prepare_experiment
    from fedloom.experiment.settings import DeploymentSettings

    try:
        deployment = DeploymentSettings.from_run_config(context.run_config)
        settings = RunSettings.from_config(compose_experiment(deployment.overrides), deployed=True)
        output_dir = _output_dir(deployment.output_dir, context.run_id)
        experiment = prepare_experiment(settings, output_dir)
    except FedloomError as err:
        LOGGER.error("error: %s", err)
        raise
    print(f"fedloom: run {context.run_id} writes its history to {output_dir}", flush=True)
    wait_for_nodes(grid, settings.num_clients, deployment.connect_timeout)
    records = experiment.start(attack_grid(grid, experiment.settings.attack))
    final = records[-1]
    print(f"fedloom: final accuracy {final['accuracy']:.4f} after {final['round']} rounds; "
          f"history in {output_dir / 'history.json'}", flush=True)


def wait_for_nodes(grid: Grid, num_nodes: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Block until ``num_nodes`` SuperNodes are connected; return their node ids.

    Raises:
        ConfigError: fewer came within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    reported = -1
    while len(nodes := list(grid.get_node_ids())) < num_nodes:
        if len(nodes) != reported:
            print(f"fedloom: waiting for SuperNodes: {len(nodes)} of num_clients={num_nodes} "
                  "connected", flush=True)
            reported = len(nodes)
        if time.monotonic() > deadline:
            raise ConfigError(
                f"only {len(nodes)} of num_clients={num_nodes} SuperNodes connected within "
                f"connect-timeout={timeout:g} s. Start the missing SuperNodes (check their "
                "logs for TLS or authentication errors), or set num_clients to the number "
                "of sites."
            )
        time.sleep(poll)
    return nodes


def _output_dir(value: str, run_id: int) -> Path:
    directory = Path(value).expanduser() if value else Path("outputs") / "deploy" / f"run-{run_id}"
    return directory.resolve()
