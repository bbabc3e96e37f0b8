"""Run a federated-learning experiment on Flower's simulation engines.

    python simulate.py                                   # digits, 100 clients, weighted average
    python simulate.py strategy=fedavg num_rounds=50     # any key of conf/ can be overridden
    python simulate.py -m strategy=simple,weighted,fedavg   # one run directory each
    python simulate.py engine=flower                     # Flower's Ray engine instead of fedloom's
    python simulate.py resume=outputs/2026-11-25/12-00-00   # continue a killed run

Writes history.json, config.json, partition.json, plot.png, checkpoint.npz and
final_weights.npz into Hydra's run directory (outputs/<date>/<time>/, or multirun/...
with -m); a resumed run writes into the directory it continues.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fedloom.errors import ConfigError, DataError  # noqa: E402
from fedloom.experiment import RunSettings, run_experiment  # noqa: E402
from fedloom.experiment.settings import check_overrides  # noqa: E402

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    output_dir = HydraConfig.get().runtime.output_dir
    try:
        settings = RunSettings.from_config(OmegaConf.to_container(cfg, resolve=True))
        if settings.resume:
            ignored = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
            if ignored:
                print(f"warning: resume continues with the run's own config; ignoring {' '.join(ignored)}",
                      file=sys.stderr)
            output_dir = settings.resume
        records = run_experiment(settings, output_dir)
    except (ConfigError, DataError) as err:
        logging.getLogger("fedloom").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    final = records[-1]
    print(f"final accuracy {final['accuracy']:.4f} after {final['round']} rounds; "
          f"history in {output_dir}/history.json")
    return float(final["accuracy"])


if __name__ == "__main__":
    try:  # a wrong group choice or key fails in one line, like other bad settings
        check_overrides(sys.argv[1:], CONF)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
