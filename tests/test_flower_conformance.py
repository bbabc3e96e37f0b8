"""Drop-in fidelity: Flower's own strategies and fedloom's equivalents, on identical replies.

The cases are those Flower's strategy tests check (both APIs): the aggregation step is
called on its own, with no configure step before it, on replies built by hand; two
replies of two arrays, float ``num-examples``, 0-dim arrays, a single reply, replies
with errors, float64 models. Each case runs Flower's class and fedloom's class on their
own copies of the same replies (Flower's robust strategies consume the replies' arrays)
and asserts the same arrays (1e-6 relative), keys, shapes and dtypes, and the same
averaged client metrics. Flower's two ``Bulyan`` classes select differently: the legacy
one recurses Krum as the paper does (fedloom's default), the Message-API one takes one
Multi-Krum pass (fedloom's ``bulyan_selection="multi_krum"``); each is compared with its
counterpart (``f = 3`` for the recursive one, where Krum keeps >= 2 neighbours so no
scores tie: with 1 neighbour Flower breaks ties by list order, fedloom by distance).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Code, Error, FitRes, Status, ndarrays_to_parameters
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server import strategy as flower_legacy
from flwr.serverapp import strategy as flower
from flwr.supercore.task_identity import TaskIdentity
from hydra.utils import get_object

from fedloom.aggregation.weighting import SERVER_QUALITY_CHOICES
from fedloom.compression import COMPRESSION_RECORD
from fedloom.errors import ConfigError
from fedloom.strategies import FederatedAveraging, Hybrid, SimpleAverage, WeightedAverage, legacy

CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's messages read the run's identity (the ServerApp process sets it)."""
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


# ------------------------------------------------------------------ replies
def reply(node: int, arrays: list[np.ndarray], num_examples: float, **metrics: float) -> Message:
    """A real train reply from node ``node``."""
    instruction = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": ArrayRecord([a.copy() for a in arrays]),
                          "metrics": MetricRecord({"num-examples": num_examples, **metrics})})
    return Message(content, reply_to=instruction)


def error_reply(node: int) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(Error(code=0, reason="client crashed"), reply_to=instruction)


TWO_ARRAYS = [  # Flower's FedAvg/FedAvgM test weights, and a third client
    ([np.array([[1, 2, 3], [4, 5, 6]], np.float32), np.array([7, 8, 9, 10], np.float32)], 1),
    ([np.array([[29, 23, 19], [17, 13, 11]], np.float32), np.array([7, 5, 3, 2], np.float32)], 2),
]


def random_clients(num: int, shapes=((7, 3), (4,)), dtype=np.float32, sizes=None):
    sizes = sizes or [10 * (k + 1) for k in range(num)]
    return [([RNG.standard_normal(s).astype(dtype) for s in shapes], n) for n in sizes[:num]]


def make_replies(clients, errors: int = 0) -> Callable[[], list[Message]]:
    def build() -> list[Message]:
        replies = [reply(k + 1, arrays, n, loss=0.5 * k, quality=0.5 + 0.05 * k)
                   for k, (arrays, n) in enumerate(clients)]
        return replies + [error_reply(100 + k) for k in range(errors)]
    return build


def assert_same(expected: ArrayRecord, actual: ArrayRecord) -> None:
    assert list(actual.keys()) == list(expected.keys())
    for a, e in zip(actual.to_numpy_ndarrays(), expected.to_numpy_ndarrays()):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, a.dtype, e.shape, e.dtype)
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6 * float(np.abs(e).max(initial=1.0)))


def assert_same_metrics(expected: MetricRecord | None, actual: MetricRecord) -> None:
    for key, value in (expected or {}).items():
        assert actual[key] == pytest.approx(value, rel=1e-9), key


# ------------------------------------------------------------------ Message API
MESSAGE_CASES = {
    # name: (Flower strategy, fedloom strategy, clients, error replies)
    "fedavg": (flower.FedAvg, lambda: WeightedAverage("num_examples"), TWO_ARRAYS, 0),
    "fedavg_as_federated_averaging": (flower.FedAvg, FederatedAveraging, TWO_ARRAYS, 0),
    "fedavg_float_num_examples": (flower.FedAvg, WeightedAverage,
                                  random_clients(3, sizes=[0.25, 0.4, 0.35]), 0),
    "fedavg_float64": (flower.FedAvg, WeightedAverage, random_clients(3, dtype=np.float64), 0),
    "fedavg_0_dim": (flower.FedAvg, WeightedAverage, random_clients(3, shapes=((),)), 0),
    "fedavg_one_reply": (flower.FedAvg, WeightedAverage, random_clients(1), 0),
    "fedavg_with_errors": (flower.FedAvg, WeightedAverage, random_clients(3), 2),
    "fedavg_uniform": (lambda: flower.FedAvg(weighted_by_key="weight"), SimpleAverage,
                       [(a, 1) for a, _ in random_clients(4)], 0),
    "fedmedian": (flower.FedMedian, lambda: Hybrid.robust_weighted("median", max_norm_ratio=None),
                  random_clients(5), 1),
    "fedtrimmedavg": (lambda: flower.FedTrimmedAvg(beta=0.2),
                      lambda: Hybrid.robust_weighted("trimmed_mean", beta=0.2, weight_by="uniform",
                                                     max_norm_ratio=None),
                      random_clients(6, dtype=np.float64), 1),
    "krum": (lambda: flower.Krum(num_malicious_nodes=1),
             lambda: Hybrid.robust_weighted("krum", num_byzantine=1, num_selected=1, max_norm_ratio=None),
             random_clients(5), 0),
    "bulyan": (lambda: flower.Bulyan(num_malicious_nodes=1),
               lambda: Hybrid.robust_weighted("bulyan", num_byzantine=1, bulyan_selection="multi_krum",
                                              max_norm_ratio=None),
               random_clients(7), 1),
    "bulyan_f2": (lambda: flower.Bulyan(num_malicious_nodes=2),
                  lambda: Hybrid.robust_weighted("bulyan", num_byzantine=2, bulyan_selection="multi_krum",
                                                 max_norm_ratio=None),
                  random_clients(12, dtype=np.float64), 0),
    "multikrum": (lambda: flower.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3),
                  lambda: Hybrid.robust_weighted("krum", num_byzantine=1, num_selected=3,
                                                 max_norm_ratio=None),
                  random_clients(6), 1),
}


@pytest.mark.parametrize("name", sorted(MESSAGE_CASES))
def test_message_api_aggregate_train_equals_flower_without_configure(name):
    make_flower, make_ours, clients, errors = MESSAGE_CASES[name]
    replies = make_replies(clients, errors)
    if name == "fedavg_uniform":  # Flower's FedAvg weighted by a metric that is 1 for all
        def replies():
            return [reply(k + 1, arrays, 1, weight=1) for k, (arrays, _) in enumerate(clients)]
    expected, expected_metrics = make_flower().aggregate_train(1, replies())
    ours = make_ours()
    actual, metrics = ours.aggregate_train(1, replies())
    assert_same(expected, actual)
    if name not in ("fedavg_uniform",):
        assert_same_metrics(expected_metrics, metrics)
    assert metrics["clients-used"] == len(ours.reports[-1].clients_used)
    assert metrics.get("rejected-client_error", 0) == errors


def test_flower_fedavgm_with_current_arrays_equals_federated_averaging_over_two_rounds():
    initial = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    theirs = flower.FedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    ours = FederatedAveraging(server_learning_rate=0.7, server_momentum=0.9)
    for strategy in (theirs, ours):
        strategy.current_arrays = ArrayRecord(initial)
    for server_round in (1, 2):
        expected, _ = theirs.aggregate_train(server_round, make_replies(TWO_ARRAYS)())
        actual, _ = ours.aggregate_train(server_round, make_replies(TWO_ARRAYS)())
        assert_same(expected, actual)
    assert not np.allclose(actual.to_numpy_ndarrays()[0], initial[0])


def test_fedavgm_scalar_weights_keep_their_shape():
    theirs = flower.FedAvgM(server_learning_rate=0.5)
    ours = FederatedAveraging(server_learning_rate=0.5)
    for strategy in (theirs, ours):
        strategy.current_arrays = ArrayRecord([np.array(0.0)])
    clients = [([np.array(1.0)], 1), ([np.array(3.0)], 2)]
    expected, _ = theirs.aggregate_train(1, make_replies(clients)())
    actual, _ = ours.aggregate_train(1, make_replies(clients)())
    assert_same(expected, actual)
    assert actual.to_numpy_ndarrays()[0].shape == ()


def test_stages_that_need_the_global_model_say_so_without_one():
    replies = make_replies(random_clients(5))
    with pytest.raises(ConfigError, match=r"needs the global model.*'server_step'.*current_arrays"):
        FederatedAveraging(server_momentum=0.9).aggregate_train(1, replies())
    with pytest.raises(ConfigError, match=r"'reject_norm_outliers'"):
        Hybrid.robust_weighted("trimmed_mean").aggregate_train(1, replies())
    with pytest.raises(ConfigError, match=r"guard RejectNormOutliers"):
        WeightedAverage(absurd_norm_ratio=1000.0).aggregate_train(1, replies())
    compressed = replies()[0]
    compressed.content[COMPRESSION_RECORD] = ConfigRecord({"method": "top_k"})
    with pytest.raises(ConfigError, match="compressed update.*needs the global model"):
        WeightedAverage().aggregate_train(1, [compressed])
    # with the global model the same strategies aggregate
    strategy = Hybrid.robust_weighted("trimmed_mean")
    strategy.current_arrays = ArrayRecord([np.zeros((7, 3), np.float32), np.zeros(4, np.float32)])
    arrays, _ = strategy.aggregate_train(1, replies())
    assert arrays is not None and strategy.current_arrays is arrays


def test_replies_with_other_keys_than_the_first_are_left_out_without_a_global_model():
    clients = random_clients(3)
    odd = reply(9, [np.ones((7, 3), np.float32)], 10)  # one array instead of two
    arrays, metrics = WeightedAverage().aggregate_train(1, [*make_replies(clients)(), odd])
    assert metrics["rejected-wrong_num_arrays"] == 1 and metrics["clients-used"] == 3
    expected, _ = flower.FedAvg().aggregate_train(1, make_replies(clients)())  # Flower raises with odd
    assert_same(expected, arrays)


# ------------------------------------------------------------------ legacy API
def fit_results(clients, failed: int = 0):
    results = [(GridClientProxy(k + 1, None, 1),  # type: ignore[arg-type]
                FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {"loss": 0.5 * k}))
               for k, (arrays, n) in enumerate(clients)]
    failures = [(GridClientProxy(100 + k, None, 1),  # type: ignore[arg-type]
                 FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "no fit"), ndarrays_to_parameters([]), 0, {}))
                for k in range(failed)]
    return results, failures


LEGACY_CASES = {
    "fedavg": (flower_legacy.FedAvg, lambda **o: legacy.WeightedAverage("num_examples", **o), TWO_ARRAYS),
    "fedavg_float64": (flower_legacy.FedAvg, legacy.WeightedAverage, random_clients(3, dtype=np.float64)),
    "fedavg_0_dim": (flower_legacy.FedAvg, legacy.WeightedAverage, random_clients(3, shapes=((),))),
    "fedavg_one_result": (flower_legacy.FedAvg, legacy.WeightedAverage, random_clients(1)),
    "fedavgm": (lambda **o: flower_legacy.FedAvgM(server_learning_rate=0.7, server_momentum=0.9, **o),
                lambda **o: legacy.FederatedAveraging(server_learning_rate=0.7, server_momentum=0.9, **o),
                TWO_ARRAYS),
    "fedmedian": (flower_legacy.FedMedian,
                  lambda **o: legacy.Hybrid.robust_weighted("median", max_norm_ratio=None, **o),
                  random_clients(5)),
    "fedtrimmedavg": (lambda **o: flower_legacy.FedTrimmedAvg(beta=0.2, **o),
                      lambda **o: legacy.Hybrid.robust_weighted(
                          "trimmed_mean", beta=0.2, weight_by="uniform", max_norm_ratio=None, **o),
                      random_clients(6)),
    "bulyan": (lambda **o: flower_legacy.Bulyan(num_malicious_clients=3, to_keep=0, **o),
               lambda **o: legacy.Hybrid.robust_weighted("bulyan", num_byzantine=3, max_norm_ratio=None, **o),
               random_clients(15)),
    "krum": (lambda **o: flower_legacy.Krum(num_malicious_clients=1, num_clients_to_keep=0, **o),
             lambda **o: legacy.Hybrid.robust_weighted("krum", num_byzantine=1, num_selected=1,
                                                       max_norm_ratio=None, **o),
             random_clients(5)),
    "multikrum": (lambda **o: flower_legacy.Krum(num_malicious_clients=1, num_clients_to_keep=3, **o),
                  lambda **o: legacy.Hybrid.robust_weighted("krum", num_byzantine=1, num_selected=3,
                                                            max_norm_ratio=None, **o),
                  random_clients(6)),
}


@pytest.mark.parametrize("name", sorted(LEGACY_CASES))
def test_legacy_aggregate_fit_equals_flower_without_configure(name):
    make_flower, make_ours, clients = LEGACY_CASES[name]
    initial = ndarrays_to_parameters([np.zeros_like(a) for a in clients[0][0]])
    theirs, ours = make_flower(initial_parameters=initial), make_ours(initial_parameters=initial)
    for server_round in (1, 2):
        expected, _ = theirs.aggregate_fit(server_round, *fit_results(clients))
        actual, metrics = ours.aggregate_fit(server_round, *fit_results(clients, failed=1))
        assert_same(ArrayRecord(parameters_to_list(expected)), ArrayRecord(parameters_to_list(actual)))
        assert metrics["rejected-client_error"] == 1


def parameters_to_list(parameters) -> list[np.ndarray]:
    from flwr.common import parameters_to_ndarrays

    return parameters_to_ndarrays(parameters)


def test_legacy_aggregate_fit_without_any_global_model():
    clients = random_clients(3)
    expected, _ = flower_legacy.FedAvg().aggregate_fit(1, *fit_results(clients))
    actual, _ = legacy.WeightedAverage().aggregate_fit(1, *fit_results(clients))
    assert_same(ArrayRecord(parameters_to_list(expected)), ArrayRecord(parameters_to_list(actual)))
    with pytest.raises(ConfigError, match=r"'server_step'.*initial_parameters"):
        legacy.FederatedAveraging(server_momentum=0.5).aggregate_fit(1, *fit_results(clients))


# ------------------------------------------------------------------ a stock Flower app's test
def named_strategies() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(CONF.glob("*.yaml")):
        options = yaml.safe_load(path.read_text())
        out.append((path.stem, {k: 2 if isinstance(v, str) and v.startswith("${") else v
                                for k, v in options.items()}))
    return out


@pytest.mark.parametrize(("name", "options"), named_strategies(), ids=[n for n, _ in named_strategies()])
def test_a_stock_flower_app_calls_aggregate_train_directly_for_every_named_strategy(name, options):
    """What a Flower app's own unit test does: build the strategy, hand it mock replies,
    check the aggregate. With ``current_arrays`` set (as Flower's FedAvgM test does) every
    named strategy aggregates; without, those that need no global model still do."""
    options = dict(options)
    make = get_object(options.pop("_target_"))
    if options.get("weight_by") in SERVER_QUALITY_CHOICES:  # the app gives the server's scorer
        options["quality_scorer"] = lambda updates: np.linspace(0.5, 0.9, len(updates))
    clients = random_clients(8)  # 8 >= 4f + 3 for robust_bulyan's f=1
    global_model = ArrayRecord([np.zeros((7, 3), np.float32), np.zeros(4, np.float32)])

    primed = make(**options)
    primed.current_arrays = global_model
    arrays, metrics = primed.aggregate_train(1, make_replies(clients)())
    assert arrays is not None and list(arrays.keys()) == list(global_model.keys())
    for a, g in zip(arrays.to_numpy_ndarrays(), global_model.to_numpy_ndarrays()):
        assert a.shape == g.shape and a.dtype == g.dtype and np.isfinite(a).all()
    assert metrics["clients-used"] >= 1 and "loss" in metrics

    bare = make(**options)
    needing = bare.schedule.at(1).stages_needing_global_model(bare.round.guards)
    if needing:
        with pytest.raises(ConfigError, match=needing[0]):
            bare.aggregate_train(1, make_replies(clients)())
    else:
        arrays, _ = bare.aggregate_train(1, make_replies(clients)())
        assert arrays is not None and len(arrays) == 2
