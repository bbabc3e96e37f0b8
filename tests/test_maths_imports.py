"""The maths modules import neither Flower nor scipy: pure numpy (a user's ServerApp may
run them anywhere, and the attack functions run inside the simulation's server)."""

from __future__ import annotations

import subprocess
import sys

BLOCK_AND_USE = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('flwr', 'scipy', 'tensorflow', 'keras', 'torch'):
            raise ImportError(f'{name} is blocked: the maths must not need it')
sys.meta_path.insert(0, Block())

import numpy as np
from fedloom.aggregation.server_optimizers import adam
from fedloom.aggregation.bulyan import bulyan
from fedloom.aggregation.geometric_median import geometric_median
from fedloom.aggregation.weight_cap import cap_weights
from fedloom.attack_updates import alie_update, min_max_update

updates = [[np.full(3, float(k), np.float32)] for k in range(7)]
assert 0 < bulyan(updates, 1)[0][0] < 6
assert geometric_median(updates).median[0].tolist() == [3.0] * 3
assert alie_update(updates, 8, 1)[0].shape == (3,) and min_max_update(updates)[0].shape == (3,)
optimizer = adam()
assert optimizer.update(updates[0], updates[1], optimizer.init(updates[0]))[1].count == 1
assert cap_weights([1, 1, 100], 2).tolist() == [1, 1, 2]
print('ok')
"""


def test_maths_modules_need_neither_flower_nor_scipy():
    done = subprocess.run([sys.executable, "-c", BLOCK_AND_USE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
