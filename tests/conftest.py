"""Suite-wide settings: a fresh partition cache, so no test reads a split cached by an
earlier version of the code (child processes inherit the variable)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["FEDLOOM_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedloom-test-cache-")
atexit.register(shutil.rmtree, os.environ["FEDLOOM_CACHE_DIR"], ignore_errors=True)

# In CI (CI or FEDLOOM_STRICT_SKIPS set) a skip fails the run unless it is for missing hardware.
from skip_policy import (  # noqa: E402,F401  (hooks pytest finds in this module)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
