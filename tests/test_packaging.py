"""pyproject.toml's extras: every third-party import declared, Ray only where it is used,
a GPU path, and a clear error for engine=flower without Ray."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from fedloom.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# import name -> distribution, where they differ (TensorFlow ships as two distributions)
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "flwr_datasets": "flwr-datasets", "hydra": "hydra-core",
                   "dp_accounting": "dp-accounting", "tensorflow": "tensorflow-cpu", "yaml": "pyyaml"}


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower()


def closure(extra: str) -> set[str]:
    """Requirement strings an extra pulls in, following fedloom[...] self-references."""
    found: set[str] = set()
    for requirement in PROJECT["optional-dependencies"][extra]:
        inner = re.fullmatch(r"fedloom\[([\w,-]+)\]", requirement)
        if inner:
            for name in inner.group(1).split(","):
                found |= closure(name)
        else:
            found.add(requirement)
    return found


def third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("fedloom", "__future__")}


def test_every_third_party_import_of_fedloom_is_declared():
    declared = {requirement_name(r) for r in PROJECT["dependencies"]}
    for extra in PROJECT["optional-dependencies"]:
        declared |= {requirement_name(r) for r in closure(extra)}
    imports = third_party_imports(ROOT / "fedloom")
    assert {"flwr", "numpy", "keras", "cryptography", "psutil"} <= imports  # the scan sees them
    missing = sorted(n for n in imports if DISTRIBUTION_OF.get(n, n).lower() not in declared)
    assert missing == [], f"imported but not declared in pyproject.toml: {missing}"


def test_ray_only_in_its_own_extra_and_dev_and_a_gpu_path_exists():
    def pulls_ray(extra):
        return any(requirement_name(r) == "ray" or "flwr[simulation]" in r for r in closure(extra))

    assert not pulls_ray("sim") and not pulls_ray("sim-gpu") and not pulls_ray("deploy")
    assert pulls_ray("ray") and pulls_ray("dev")
    assert any(r.startswith("tensorflow[and-cuda]") for r in closure("sim-gpu"))
    assert not any("tensorflow-cpu" in r for r in closure("sim-gpu"))  # one TensorFlow build only


def test_engine_flower_without_ray_says_which_extra_to_install():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedloom.experiment import RunSettings

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=["engine=flower"]),
                                     resolve=True)
    try:
        importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # e.g. the flwr-nightly CI venv
        with pytest.raises(ConfigError, match=r"pip install 'fedloom\[ray\]'"):
            RunSettings.from_config(cfg)
    else:
        RunSettings.from_config(cfg)
