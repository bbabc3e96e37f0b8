"""The epsilon a DP config will spend, before running it (from a source checkout):

    python -m fedloom.privacy dp=central_fixed                     # the default DP run
    python -m fedloom.privacy dp=central_adaptive num_rounds=300 --json eps.json

Takes the overrides ``simulate.py`` takes and prints epsilon after some rounds, assuming
every sampled client is used in every round (the run's ``history.json`` holds the real
``dp_epsilon``, larger when clients crash or are left out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from fedloom.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def epsilon_table(overrides: list[str]) -> dict:
    """``{"config": ..., "rows": [[rounds, epsilon], ...]}`` for a config's overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedloom.experiment import RunSettings
    from fedloom.privacy import SampledRdpAccountant, full_round_multiplier

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    settings = RunSettings.from_config(cfg, build_check=False)
    dp = settings.privacy
    if not dp.enabled:
        raise ConfigError("dp=none spends no privacy budget: give a DP config, e.g. dp=central_fixed.")
    num_rounds = settings.num_rounds
    marks = sorted({r for r in (1, 10, 50, 100, 200, 500, 1000) if r < num_rounds} | {num_rounds})
    accountant, multiplier, done, rows = SampledRdpAccountant(dp), full_round_multiplier(dp), 0, []
    for rounds in marks:
        accountant.compose(multiplier, rounds - done)
        done = rounds
        rows.append([rounds, accountant.epsilon()])
    return {"overrides": overrides, "mode": dp.mode, "noise_multiplier": dp.noise_multiplier,
            "round_noise_multiplier": multiplier, "clients_per_round": dp.num_sampled,
            "num_clients": dp.num_clients, "delta": dp.delta, "accounting": dp.accounting,
            "rows": rows}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedloom.privacy", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for simulate.py")
    parser.add_argument("--json", type=Path, help="also write the table, versions and machine here")
    args = parser.parse_args(argv)
    try:
        table = epsilon_table(args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{table['mode']}: z={table['noise_multiplier']:g}, {table['clients_per_round']} of "
          f"{table['num_clients']} clients per round, delta={table['delta']:g}, accounting "
          f"{table['accounting']} (round multiplier {table['round_noise_multiplier']:.4g})")
    print(f"{'rounds':>7}  epsilon")
    for rounds, epsilon in table["rows"]:
        print(f"{rounds:>7}  {epsilon:.4f}")
    if args.json:
        table.update({
            "command": "python -m fedloom.privacy " + " ".join(args.overrides),
            "commit": _commit(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {_cpu_name()}",
            "versions": {name: version(name) for name in ("flwr", "numpy", "dp-accounting")},
        })
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
