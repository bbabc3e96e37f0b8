"""Suite-wide settings and helpers.

- A fresh partition cache, so no test reads a split cached by an earlier version of the
  code (child processes inherit the variable).
- :func:`config`: the composed Hydra config of ``conf/`` with overrides, as plain dicts.
- :func:`run_cli` / :func:`start_cli`: ``simulate.py`` as a subprocess (waited for, or
  running in the background with its output in a log file).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

os.environ["FEDLOOM_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedloom-test-cache-")
atexit.register(shutil.rmtree, os.environ["FEDLOOM_CACHE_DIR"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SIMULATE = ROOT / "simulate.py"


def config(*overrides: str) -> dict:
    """``conf/config.yaml`` composed with Hydra ``overrides``, resolved to plain dicts."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python simulate.py *args`` to the end; its output is captured as text."""
    return subprocess.run([sys.executable, str(SIMULATE), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def start_cli(*args: str, log: IO) -> subprocess.Popen:
    """Start ``python simulate.py *args`` in the background, writing its output to
    ``log``. The caller stops it (``kill`` and ``wait``), also when a test fails."""
    return subprocess.Popen([sys.executable, str(SIMULATE), *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)


# In CI (CI or FEDLOOM_STRICT_SKIPS set) a skip fails the run unless it is for missing hardware.
from skip_policy import (  # noqa: E402,F401  (hooks pytest finds in this module)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
