"""Skip policy: in CI a skipped test fails the run, unless it lacks hardware.

A test that skips because a package or data set is missing (``pytest.importorskip``,
``skipif(not installed)``) tests nothing, and a green run then hides that ``.ci/run``
failed to install it. With ``CI`` (CI services set it) or ``FEDLOOM_STRICT_SKIPS`` set to
``1``/``true``/``yes``, every skip, at collection or in a test, is listed under "unexpected
skips" and the run exits 1, unless its reason names hardware the machine lacks (a GPU,
CUDA, a TPU, an accelerator). Locally, without the variables, skips stay skips.

``tests/conftest.py`` imports the hooks below; ``tests/test_skip_policy.py`` runs pytest
on small test files to check them.
"""

from __future__ import annotations

import os
import re

import pytest

STRICT_ENV = "FEDLOOM_STRICT_SKIPS"
HARDWARE = re.compile(r"\b(gpus?|cuda|tpus?|accelerators?|hardware)\b", re.IGNORECASE)
_TRUE = {"1", "true", "yes"}
_unexpected: list[tuple[str, str]] = []  # (test or module id, reason) of this session


def strict() -> bool:
    """Whether skips fail the run: ``CI`` or ``FEDLOOM_STRICT_SKIPS`` is 1/true/yes."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("CI", STRICT_ENV))


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def allowed(reason: str) -> bool:
    """A skip is allowed only for hardware the machine lacks."""
    return bool(HARDWARE.search(reason))


def _note(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and strict():
        reason = skip_reason(report)
        if not allowed(reason):
            _unexpected.append((report.nodeid or str(report.fspath), reason))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note(report)  # a module skipped as a whole, e.g. by importorskip at import time


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note(report)  # a test skipped by a mark or by pytest.skip()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:
    if not _unexpected:
        return
    terminalreporter.section("unexpected skips (they fail the run in CI)", sep="=", red=True, bold=True)
    for nodeid, reason in _unexpected:
        terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
    terminalreporter.line(
        f"{len(_unexpected)} skip(s) with no hardware reason while CI/{STRICT_ENV} is set: install what "
        "the test needs (.ci/run should have: a package from pyproject.toml's extras, or the "
        "dataset-fashion-mnist system package), or skip only for hardware (a GPU) the machine lacks.")
