"""The CI skip policy (``tests/skip_policy.py``): pytest runs on small test files in a
fresh process, with and without the CI variables, and the exit code is checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SKIPS_FOR_A_PACKAGE = """
import pytest

def test_passes():
    assert True

def test_needs_a_package():
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
"""
MODULE_SKIPPED_BY_IMPORTORSKIP = """
import pytest

pytest.importorskip("a_package_that_is_not_installed_anywhere")

def test_never_runs():
    assert True
"""
SKIPS_FOR_A_GPU = """
import pytest

def test_passes():
    assert True

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_on_gpu():
    assert True
"""
EXPECTED_FAILURE = """
import pytest

@pytest.mark.xfail(reason="known defect", strict=True)
def test_known_defect():
    assert False
"""


def run_pytest(tmp_path: Path, source: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(source)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "FEDLOOM_STRICT_SKIPS")}
    base["PYTHONPATH"] = os.pathsep.join([str(TESTS), base.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), "test_sample.py"],
        cwd=tmp_path, env={**base, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env", [{"CI": "true"}, {"FEDLOOM_STRICT_SKIPS": "1"}])
def test_a_skip_for_missing_data_fails_the_run_in_ci(tmp_path, env):
    result = run_pytest(tmp_path, SKIPS_FOR_A_PACKAGE, env)
    assert result.returncode == 1, result.stdout
    assert "unexpected skips" in result.stdout
    assert "test_needs_a_package: Fashion-MNIST not installed" in result.stdout


def test_a_module_skipped_by_importorskip_fails_the_run_in_ci(tmp_path):
    result = run_pytest(tmp_path, MODULE_SKIPPED_BY_IMPORTORSKIP, {"CI": "true"})
    assert result.returncode == 1, result.stdout
    assert "a_package_that_is_not_installed_anywhere" in result.stdout


def test_a_skip_for_missing_hardware_passes_in_ci(tmp_path):
    result = run_pytest(tmp_path, SKIPS_FOR_A_GPU, {"CI": "true"})
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout


def test_an_expected_failure_is_not_a_skip(tmp_path):
    result = run_pytest(tmp_path, EXPECTED_FAILURE, {"CI": "true"})
    assert result.returncode == 0, result.stdout
    assert "1 xfailed" in result.stdout


def test_skips_stay_skips_outside_ci(tmp_path):
    result = run_pytest(tmp_path, SKIPS_FOR_A_PACKAGE, {})
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout and "unexpected skips" not in result.stdout
