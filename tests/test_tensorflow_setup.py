"""TensorFlow process set-up: nothing at import time, threads and GPU memory growth
applied when the first trainer is built (each check in a fresh process, since
TensorFlow's settings are process-wide and fixed once it runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    environment.pop("FEDLOOM_TF_THREADS", None)
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_setup_runs_when_a_trainer_is_built_not_at_import() -> None:
    code = """
import sys
import fedloom.clients as clients
from fedloom.clients.tensorflow_setup import tensorflow_settings
assert "tensorflow" not in sys.modules and tensorflow_settings() is None
trainer = clients.KerasTrainer(clients.ModelSpec("logreg", (4,), 3))
import tensorflow as tf
s = tensorflow_settings()
print(s.threads, s.gpu_memory_growth, s.applied, s.num_gpus == len(tf.config.list_physical_devices("GPU")),
      tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""
    assert _run(code, FEDLOOM_TF_THREADS="1") == "1 True True True 1 1"
    assert _run(code) == "None True True True 0 0"  # TensorFlow's defaults kept


@pytest.mark.slow
def test_explicit_configuration_wins_and_a_late_change_is_reported() -> None:
    code = """
import fedloom.clients as clients
first = clients.configure_tensorflow(threads=2, gpu_memory_growth=False)
trainer = clients.KerasTrainer(clients.ModelSpec("logreg", (4,), 3))  # keeps the first
again = clients.configure_tensorflow(threads=3)
import tensorflow as tf
print(first == again, again.threads, again.gpu_memory_growth,
      tf.config.threading.get_intra_op_parallelism_threads())
"""
    assert _run(code) == "True 2 False 2"


def test_bad_thread_count_is_refused_with_the_variable_named(monkeypatch) -> None:
    from fedloom.clients import tensorflow_setup
    from fedloom.errors import ConfigError

    monkeypatch.setenv("FEDLOOM_TF_THREADS", "two")
    with pytest.raises(ConfigError, match="FEDLOOM_TF_THREADS must be a positive integer; it is 'two'"):
        tensorflow_setup._threads_from_environment()
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        tensorflow_setup.configure_tensorflow(threads=0)


def _gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


@pytest.mark.skipif(_gpus() == 0, reason="needs a GPU (missing hardware)")
def test_gpu_memory_growth_is_on_by_default_and_can_be_turned_off() -> None:
    code = """
import fedloom.clients as clients
{configure}
trainer = clients.KerasTrainer(clients.ModelSpec("logreg", (4,), 3))
import tensorflow as tf
print(all(tf.config.experimental.get_memory_growth(g) is {expected}
          for g in tf.config.list_physical_devices("GPU")))
"""
    assert _run(code.format(configure="", expected=True)) == "True"
    off = "clients.configure_tensorflow(gpu_memory_growth=False)"
    assert _run(code.format(configure=off, expected=False)) == "True"
