"""Suite-wide settings: a fresh partition cache, so no test reads a split cached by an
earlier version of the code (child processes inherit the variable)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["FEDLOOM_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedloom-test-cache-")
atexit.register(shutil.rmtree, os.environ["FEDLOOM_CACHE_DIR"], ignore_errors=True)
