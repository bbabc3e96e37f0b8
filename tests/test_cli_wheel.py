"""The installable command line: a wheel in a fresh venv runs ``fedloom-simulate`` (and
``python -m fedloom.simulate``) from any directory, with conf/ shipped inside the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _without_pythonpath() -> dict[str, str]:
    """The environment without PYTHONPATH: fedloom must come from the wheel, not the checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with fedloom's wheel installed (without dependencies: they come from
    this interpreter's site-packages through a .pth, so TensorFlow is not reinstalled)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    for folder in ("fedloom", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(base / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, cwd=base)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((base / "dist").glob("fedloom-*.whl"))
    venv.EnvBuilder(with_pip=False).create(base / "venv")
    python = base / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "--no-deps", str(wheel)], capture_output=True, text=True, timeout=300,
                          env=_without_pythonpath(), cwd=base)
    assert done.returncode == 0, done.stderr[-3000:]
    # after the install: pip would otherwise take the main venv's fedloom for this one
    Path(site, "main_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return base / "venv" / "bin"


def run_installed(bin_dir: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=_without_pythonpath(), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_the_wheel_ships_conf_and_runs_fedloom_simulate_from_another_directory(installed, tmp_path):
    where = run_installed(installed, [str(installed / "python"), "-c",
                                      "import fedloom.simulate as s; print(s.__file__, s.CONF)"], tmp_path)
    assert where.returncode == 0, where.stderr[-3000:]
    module, conf = where.stdout.split()
    assert str(installed.parent) in module and not module.startswith(str(ROOT))
    assert conf == str(Path(module).parent / "conf")  # the wheel's copy, not the checkout's
    assert (Path(conf) / "strategy" / "weighted.yaml").is_file()

    done = run_installed(installed, [str(installed / "fedloom-simulate"), "strategy=weighted",
                                     "num_rounds=2", "num_clients=10", "clients_per_round=5",
                                     "plot=false"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*/history.json"))  # Hydra's default run dir, here
    assert len(runs) == 1
    assert [r["round"] for r in json.loads(runs[0].read_text())] == [0, 1, 2]
    assert done.stdout.splitlines()[-1].startswith("final accuracy")

    as_module = run_installed(installed, [str(installed / "python"), "-m", "fedloom.simulate",
                                          "num_rounds=1", "num_clients=10", "clients_per_round=5",
                                          "plot=false", f"hydra.run.dir={tmp_path / 'm'}"], tmp_path)
    assert as_module.returncode == 0, as_module.stderr[-3000:]
    assert [r["round"] for r in json.loads((tmp_path / "m" / "history.json").read_text())] == [0, 1]

    bad = run_installed(installed, [str(installed / "fedloom-simulate"), "strategy=nope"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
