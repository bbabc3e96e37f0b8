"""Named methods are defined once: each YAML in conf/strategy names arguments of one
function in ``fedloom.strategies.methods``, and both Flower APIs' classes take exactly
those arguments (plus their sampling options) and build the same pipeline."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import get_object

from fedloom.aggregation import ClientUpdate
from fedloom.aggregation.weighting import SERVER_QUALITY_CHOICES
from fedloom.errors import ConfigError
from fedloom.strategies import FederatedAveraging, legacy

CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"


def settings(path: Path) -> tuple[str, dict]:
    options = yaml.safe_load(path.read_text())
    target = options.pop("_target_")
    # ${local_epochs} and friends come from the experiment's config
    return target, {k: 2 if isinstance(v, str) and v.startswith("${") else v for k, v in options.items()}


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_strategy_yaml_builds_the_same_method_in_both_apis(path):
    target, options = settings(path)
    message = get_object(target)
    old = get_object(target.replace("fedloom.strategies.", "fedloom.strategies.legacy."))
    for make in (message, old):
        assert set(options) <= set(inspect.signature(make).parameters), (path.name, make)
    if options.get("weight_by") in SERVER_QUALITY_CHOICES:  # the experiment injects the scorer
        options["quality_scorer"] = lambda updates: np.full(len(updates), 0.5)
    new_api = message(**options, min_available_nodes=3, seed=0)
    old_api = old(**options, min_available_clients=3, seed=0)
    assert repr(new_api.schedule) == repr(old_api.schedule)
    for (_, a), (_, b) in zip(new_api.schedule.phases, old_api.schedule.phases):
        assert a.client_config == b.client_config and a.stage_names == b.stage_names
    updates = [ClientUpdate(str(k), [np.full(3, float(k), np.float32)], 10 + k, {"quality": 0.5})
               for k in range(8)]  # 8 >= 4f + 3 for robust_bulyan's f=1
    global_weights = [np.zeros(3, np.float32)]
    for server_round in (1, 5):
        a = new_api.schedule.at(server_round)(global_weights, updates, server_round=server_round)
        b = old_api.schedule.at(server_round)(global_weights, updates, server_round=server_round)
        assert a.weights is not None, (path.name, a.skipped_reason)
        assert a.weights[0].tobytes() == b.weights[0].tobytes()


def test_proximal_mu_is_sent_to_clients_as_flower_fedprox_does():
    assert "proximal-mu" not in FederatedAveraging().schedule.at(1).client_config
    for strategy in (FederatedAveraging(proximal_mu=0.01), legacy.FederatedAveraging(proximal_mu=0.01)):
        assert strategy.schedule.at(1).client_config["proximal-mu"] == 0.01
    with pytest.raises(ConfigError, match="proximal_mu >= 0"):
        FederatedAveraging(proximal_mu=-1.0)
    with pytest.raises(TypeError):
        FederatedAveraging(proximal_muu=0.1)  # misspelt: refused, not silently ignored
