"""`import fedloom.strategies` needs only numpy and flwr (a PyTorch project has no TensorFlow)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["tensorflow", "keras", "torch", "sklearn", "datasets", "flwr_datasets", "hydra", "matplotlib"]

BLOCK_AND_USE = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {HEAVY!r}:
            raise ImportError(f'{{name}} is not installed in this environment')
sys.meta_path.insert(0, Block())

import numpy as np
from flwr.app import ArrayRecord
from fedloom.strategies import SimpleAverage, WeightedAverage, FederatedAveraging, Hybrid, legacy
from fedloom.aggregation import weighted_mean
from fedloom.engine import LocalGrid

assert weighted_mean([[np.ones(3, np.float32)], [np.zeros(3, np.float32)]], [1, 3])[0].tolist() == [0.25] * 3
strategy = Hybrid.robust_weighted('krum', num_byzantine=1)
assert legacy.WeightedAverage(weight_by='quality').schedule.at(1).name.startswith('weighted')
print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))
"""


def test_strategies_import_and_work_without_tensorflow_or_data_libraries():
    done = subprocess.run([sys.executable, "-c", BLOCK_AND_USE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
