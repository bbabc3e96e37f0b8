"""Tests for fedloom.data: loaders on the real offline datasets, partitioning, per-client data."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import (
    FASHION_MNIST_PATH,
    HEART_DISEASE_HOSPITALS,
    PARTITION_SCHEMES,
    ClientData,
    Dataset,
    client_datasets,
    dirichlet_partition,
    iid_partition,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_file,
    load_heart_disease,
    load_mnist5k,
    load_synthetic,
    log_partition_stats,
    natural_partition,
    partition,
    partition_stats,
    pathological_partition,
    shard_partition,
    train_val_split,
)
from fedloom.errors import DataError, FedloomError

HAVE_FASHION = (Path(FASHION_MNIST_PATH) / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_PATH} "
    f"(apt-get install dataset-fashion-mnist)",
)

# Options that make each scheme runnable on a 10-class label array.
SCHEME_OPTIONS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "pathological": {"num_classes_per_partition": 2},
    "shards": {},
}


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_mnist5k()


@pytest.fixture(scope="module")
def heart() -> Dataset:
    return load_heart_disease()


def _check_common(d: Dataset, feature_shape: tuple[int, ...], num_classes: int) -> None:
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    assert d.feature_shape == feature_shape
    assert d.x_train.shape == (len(d.y_train), *feature_shape)
    assert d.x_test.shape == (len(d.y_test), *feature_shape)
    assert d.num_classes == num_classes
    assert set(np.unique(d.y_train)) == set(range(num_classes))
    assert d.y_test.min() >= 0 and d.y_test.max() < num_classes
    assert np.isfinite(d.x_train).all() and np.isfinite(d.x_test).all()


def _label_entropy(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    hist = np.array(partition_stats(labels, parts, num_classes)["label_histogram"], dtype=float)
    p = hist / hist.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return float(ent.mean())


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    everything = np.concatenate(parts)
    assert len(everything) == n
    assert len(np.unique(everything)) == n
    assert everything.min() >= 0 and everything.max() < n
    assert all(p.dtype == np.int64 for p in parts)


# ------------------------------------------------------------------------- loaders


def test_load_digits_shapes_and_split():
    d = load_digits(test_fraction=0.2, seed=0)
    _check_common(d, (64,), 10)
    assert len(d.y_train) + len(d.y_test) == 1797
    assert abs(len(d.y_test) - 0.2 * 1797) <= 10  # stratified per class, rounded per class
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert d.train_client_ids is None
    # every class keeps about the same share in the test set (stratified)
    share = np.bincount(d.y_test, minlength=10) / np.bincount(np.r_[d.y_train, d.y_test])
    assert np.all(np.abs(share - 0.2) < 0.01)


@needs_fashion
def test_load_fashion_mnist_official_split_and_cache():
    d = load_fashion_mnist()
    _check_common(d, (28, 28, 1), 10)
    assert len(d.y_train) == 60_000 and len(d.y_test) == 10_000
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert np.all(np.bincount(d.y_train) == 6000) and np.all(np.bincount(d.y_test) == 1000)
    again = load_dataset("fashion-mnist")
    assert np.shares_memory(again.x_train, d.x_train)  # decoded once, cached in-process
    small = load_fashion_mnist(limit_train=1000, limit_test=200)
    assert small.x_train.shape == (1000, 28, 28, 1) and small.y_test.shape == (200,)
    np.testing.assert_array_equal(small.y_train, d.y_train[:1000])


def test_load_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_fashion_mnist(path=tmp_path)
    message = str(err.value)
    assert "dataset.path" in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_load_mnist5k(mnist5k):
    _check_common(mnist5k, (28, 28, 1), 10)
    assert len(mnist5k.y_train) + len(mnist5k.y_test) == 5000
    assert np.all(np.bincount(np.r_[mnist5k.y_train, mnist5k.y_test]) == 500)
    assert np.all(np.bincount(mnist5k.y_test) == 100)
    assert 0.0 <= mnist5k.x_train.min() and mnist5k.x_train.max() <= 1.0


def test_load_heart_disease(heart):
    _check_common(heart, (25,), 2)
    assert len(heart.y_train) + len(heart.y_test) == 920
    totals = np.bincount(heart.train_client_ids, minlength=4) + np.bincount(
        heart.test_client_ids, minlength=4
    )
    expected = {"Cleveland": 304, "Hungary": 293, "VA Long Beach": 200, "Switzerland": 123}
    assert totals.tolist() == [expected[h] for h in HEART_DISEASE_HOSPITALS]
    # each hospital keeps about 20% of its patients in the test set
    share = np.bincount(heart.test_client_ids, minlength=4) / totals
    assert np.all(np.abs(share - 0.2) < 0.03)
    # numerics (first 6 columns) standardised with train statistics; one-hots are 0/1
    assert np.allclose(heart.x_train[:, :6].mean(axis=0), 0, atol=1e-5)
    assert np.allclose(heart.x_train[:, :6].std(axis=0), 1, atol=1e-4)
    assert set(np.unique(heart.x_train[:, 6:])) == {0.0, 1.0}
    # Switzerland (id 2) is mostly diseased, Hungary (id 1) mostly healthy
    sick = [heart.y_train[heart.train_client_ids == h].mean() for h in range(4)]
    assert sick[2] > 0.85 and sick[1] < 0.45


def test_load_synthetic_devices_and_heterogeneity():
    d = load_synthetic(alpha=1.0, beta=1.0, num_devices=30, seed=0)
    _check_common(d, (60,), 10)
    assert set(np.unique(d.train_client_ids)) == set(range(30))
    per_device = np.bincount(d.train_client_ids, minlength=30) + np.bincount(
        d.test_client_ids, minlength=30
    )
    assert per_device.min() >= 50  # lognormal(4, 2) + 50 samples per device
    same = load_synthetic(alpha=1.0, beta=1.0, seed=0)
    np.testing.assert_array_equal(same.x_train, d.x_train)
    other = load_synthetic(alpha=1.0, beta=1.0, seed=1)
    assert other.x_train.shape != d.x_train.shape or not np.array_equal(other.x_train, d.x_train)
    # Synthetic(1,1): devices' label mixes differ far more than in the IID variant
    iid = load_synthetic(iid=True, seed=0)
    assert iid.name == "synthetic_iid" and d.name == "synthetic_1_1"

    def device_spread(ds):
        parts = natural_partition(ds.train_client_ids)
        return _label_entropy(ds.y_train, parts, 10)

    assert device_spread(d) < device_spread(iid)


def test_load_dataset_registry_and_errors():
    half = load_dataset("digits", test_fraction=0.5)
    assert len(half.y_test) == pytest.approx(1797 / 2, abs=10)
    with pytest.raises(DataError, match=r"dataset\.name='cifar10'.*digits.*fashion_mnist"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match=r"dataset\.batch_size is not an option of dataset 'dig"):
        load_dataset("digits", batch_size=32)
    with pytest.raises(DataError, match=r"dataset\.test_fraction"):
        load_digits(test_fraction=1.0)
    with pytest.raises(DataError, match=r"dataset\.path is required for dataset 'file'"):
        load_dataset("file")
    with pytest.raises(DataError, match=r"dataset\.alpha"):
        load_synthetic(alpha=-1)
    assert issubclass(DataError, FedloomError) and issubclass(DataError, ValueError)


def test_dataset_validates_shapes():
    x = np.zeros((4, 3))
    with pytest.raises(DataError, match="y_train must have shape"):
        Dataset("bad", x, np.zeros(3), x, np.zeros(4), num_classes=2)
    with pytest.raises(DataError, match="labels 0..1"):
        Dataset("bad", x, np.array([0, 1, 2, 0]), x, np.zeros(4), num_classes=2)
    d = Dataset("ok", x, np.array([0, 1, 1, 0]), x, np.zeros(4), num_classes=2)
    assert d.x_train.dtype == np.float32 and d.y_test.dtype == np.int64


# ------------------------------------------------------------------------- load_file


def test_load_file_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    x = rng.normal(size=(n, 4, 3)).astype(np.float32)
    x[:, 0, 0] = np.arange(n)  # row id, to match rows after the split
    y = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, n)]
    client = rng.integers(10, 16, n)  # ids 10..15 -> 0..5
    np.savez(tmp_path / "mine.npz", x=x, y=y, client_id=client)
    d = load_file(tmp_path / "mine.npz", test_fraction=0.25, seed=3)
    assert d.name == "mine" and d.feature_shape == (4, 3) and d.num_classes == 3
    assert len(d.y_train) + len(d.y_test) == n
    rows = np.r_[d.x_train[:, 0, 0], d.x_test[:, 0, 0]].astype(int)
    assert sorted(rows) == list(range(n))
    codes = {"cat": 0, "dog": 1, "emu": 2}
    np.testing.assert_array_equal(d.y_train, [codes[v] for v in y[rows[: len(d.y_train)]]])
    np.testing.assert_array_equal(d.train_client_ids, client[rows[: len(d.y_train)]] - 10)
    np.testing.assert_allclose(d.x_train, x[rows[: len(d.y_train)]])

    # an explicit split is used as given
    np.savez(
        tmp_path / "split.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:]
    )
    s = load_file(tmp_path / "split.npz")
    np.testing.assert_array_equal(s.x_test, x[100:])
    np.testing.assert_array_equal(s.y_train, [codes[v] for v in y[:100]])
    assert s.train_client_ids is None


@pytest.mark.parametrize("with_client_ids", [False, True])
def test_load_file_csv_round_trip(tmp_path, with_client_ids):
    rng = np.random.default_rng(1)
    n = 60
    a, b = np.arange(n, dtype=float), rng.normal(size=n).round(3)
    label = rng.choice([3, 7, 11], n)  # numeric labels sort numerically: 3, 7, 11 -> 0, 1, 2
    site = rng.choice(["north", "south", "east"], n)
    lines = ["id_a,b,note,target,site"] + [
        f"{a[i]},{b[i]},txt{i},{label[i]},{site[i]}" for i in range(n)
    ]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    d = load_file(
        tmp_path / "table.csv",
        label_column="target",
        client_id_column="site" if with_client_ids else None,
        test_fraction=0.2,
        seed=0,
    )
    assert d.feature_shape == (2,)  # 'note' is not numeric, 'target' and 'site' are not features
    assert d.num_classes == 3
    rows = d.x_train[:, 0].astype(int)
    np.testing.assert_allclose(d.x_train[:, 1], b[rows], atol=1e-6)
    np.testing.assert_array_equal(d.y_train, np.searchsorted([3, 7, 11], label[rows]))
    if with_client_ids:
        names = ["east", "north", "south"]
        np.testing.assert_array_equal(d.train_client_ids, np.searchsorted(names, site[rows]))
        parts = natural_partition(d.train_client_ids)
        assert [len(p) for p in parts] == np.bincount(d.train_client_ids).tolist()
    else:
        assert d.train_client_ids is None


def test_load_file_errors(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError) as err:
        load_file(missing)
    assert "dataset.path" in str(err.value) and str(missing) in str(err.value)
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"dataset\.label_column='label' is not a column"):
        load_file(tmp_path / "t.csv")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DataError, match=r"\.npz or \.csv"):
        load_file(tmp_path / "t.txt")


# ------------------------------------------------------------------------- partitioning


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "shards"])
def test_partitions_cover_training_set_once(mnist5k, scheme):
    y = mnist5k.y_train  # 4000 labels, 400 per class
    parts = partition(y, scheme, 20, seed=0, **SCHEME_OPTIONS[scheme])
    assert len(parts) == 20
    assert all(len(p) > 0 for p in parts)
    _assert_disjoint_cover(parts, len(y))  # 4000 = 20 clients x 2 shards x 100: shards use all


def test_iid_partition_equal_sizes(mnist5k):
    parts = iid_partition(mnist5k.y_train, 7, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    # IID: every client sees every class
    assert min(partition_stats(mnist5k.y_train, parts, 10)["classes_per_client"]) == 10


def test_dirichlet_skew_grows_as_alpha_falls(mnist5k):
    y = mnist5k.y_train
    entropy = {
        alpha: _label_entropy(y, dirichlet_partition(y, 20, alpha, seed=0), 10)
        for alpha in (0.1, 1.0, 10.0)
    }
    assert entropy[0.1] < entropy[1.0] < entropy[10.0]
    assert entropy[10.0] > 0.9 * np.log(10)  # near-uniform label mix at large alpha


def test_dirichlet_min_partition_size(mnist5k):
    parts = dirichlet_partition(mnist5k.y_train, 50, 0.3, seed=0, min_partition_size=20)
    assert min(len(p) for p in parts) >= 20
    _assert_disjoint_cover(parts, len(mnist5k.y_train))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_exactly_k_classes(mnist5k, k):
    parts = pathological_partition(mnist5k.y_train, 20, k, seed=0)
    stats = partition_stats(mnist5k.y_train, parts, 10)
    assert stats["classes_per_client"] == [k] * 20
    assert stats["num_examples"] == len(mnist5k.y_train)  # first-deterministic uses every class


def test_shards_two_per_client(mnist5k):
    y = mnist5k.y_train
    parts = shard_partition(y, 40, num_shards_per_partition=2, seed=0)
    shard = len(y) // 80
    assert [len(p) for p in parts] == [2 * shard] * 40
    # a shard is a run of the label-sorted data: most clients see 1-2 classes, none more than 4
    classes = partition_stats(y, parts, 10)["classes_per_client"]
    assert max(classes) <= 4 and np.mean(classes) <= 2.5


@needs_fashion
def test_shards_mcmahan_setting():
    y = load_fashion_mnist().y_train
    parts = shard_partition(y, 100, seed=0)  # 200 shards of 300, 2 per client
    assert [len(p) for p in parts] == [600] * 100
    _assert_disjoint_cover(parts, 60_000)
    assert max(partition_stats(y, parts, 10)["classes_per_client"]) <= 2


def test_natural_partition_reproduces_hospitals(heart):
    parts = partition(heart.y_train, "natural", 4, seed=0, client_ids=heart.train_client_ids)
    assert [len(p) for p in parts] == np.bincount(heart.train_client_ids).tolist()
    for hospital, p in enumerate(parts):
        assert np.all(heart.train_client_ids[p] == hospital)
    _assert_disjoint_cover(parts, len(heart.y_train))
    # string ids are sorted: partition i holds the i-th smallest name
    names = np.array(HEART_DISEASE_HOSPITALS, dtype=object)[heart.train_client_ids]
    by_name = natural_partition(names)
    order = sorted(HEART_DISEASE_HOSPITALS)
    assert [set(names[p]) for p in by_name] == [{h} for h in order]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "shards"])
def test_partition_determinism(mnist5k, scheme):
    y = mnist5k.y_train
    first = partition(y, scheme, 10, seed=5, **SCHEME_OPTIONS[scheme])
    again = partition(y, scheme, 10, seed=5, **SCHEME_OPTIONS[scheme])
    other = partition(y, scheme, 10, seed=6, **SCHEME_OPTIONS[scheme])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# ------------------------------------------------------------------------- errors


def test_impossible_requests_name_the_setting(mnist5k, heart):
    y = mnist5k.y_train

    def clients(dataset, scheme, num_clients, **options):
        return lambda: client_datasets(dataset, scheme, num_clients, seed=0, **options)

    cases = [
        (clients(mnist5k, "iid", len(y) + 1), r"num_clients=4001 .*4000"),
        (clients(mnist5k, "iid", 0), r"num_clients must be an integer >= 1"),
        (clients(mnist5k, "dirichlet", 10, alpha=0), r"partition\.alpha must be > 0.*alpha=0"),
        (clients(mnist5k, "dirichlet", 10, alpha=-1.5), r"partition\.alpha"),
        (clients(mnist5k, "dirichlet", 10), r"partition\.alpha is required"),
        (
            clients(mnist5k, "pathological", 10, num_classes_per_partition=11),
            r"partition\.num_classes_per_partition must be an integer in 1\.\.10",
        ),
        (
            clients(mnist5k, "pathological", 10, num_classes_per_partition=0),
            r"partition\.num_classes_per_partition",
        ),
        (clients(mnist5k, "kmeans", 10), r"partition\.scheme='kmeans'.*dirichlet"),
        (
            clients(mnist5k, "iid", 10, alpha=0.5),
            r"partition\.alpha is not an option of the 'iid'",
        ),
        (clients(mnist5k, "natural", 10), r"natural.*train_client_ids is None"),
        (clients(heart, "natural", 10), r"num_clients=10 .* 4 clients .*num_clients=4"),
        (clients(mnist5k, "iid", 10, val_fraction=1.0), r"val_fraction must be in \[0, 1\)"),
        (lambda: shard_partition(y, 100, shard_size=50, seed=0), r"partition\.shard_size=50"),
        (
            lambda: dirichlet_partition(y, 100, 0.5, seed=0, min_partition_size=50),
            r"partition\.min_partition_size=50",
        ),
        (lambda: load_dataset("mnist"), r"dataset\.name='mnist'"),
    ]
    for call, pattern in cases:
        with pytest.raises(DataError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)  # one-line messages


def test_light_import_and_validation_before_work():
    # In a fresh interpreter: importing fedloom.data, loading mnist5k and refusing a bad
    # request must not import the slow `datasets` / `flwr_datasets` / scikit-learn.
    code = (
        "import sys\n"
        "from fedloom.data import client_datasets, load_mnist5k\n"
        "from fedloom.errors import DataError\n"
        "d = load_mnist5k()\n"
        "for kw in ({'alpha': 0}, {'alpha': None}):\n"
        "    try:\n"
        "        client_datasets(d, 'dirichlet', 10, seed=0, **kw)\n"
        "    except DataError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
        "heavy = [m for m in ('datasets', 'flwr_datasets', 'sklearn') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[1],  # the repo root, so fedloom imports
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------- per-client data


def test_train_val_split_rules():
    idx = np.arange(100, 150)
    train, val = train_val_split(idx, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45
    assert sorted(np.r_[train, val]) == idx.tolist()
    t2, v2 = train_val_split(idx, 0.1, seed=0)
    assert np.array_equal(train, t2) and np.array_equal(val, v2)
    t3, _ = train_val_split(idx, 0.1, seed=1)
    assert not np.array_equal(train, t3)
    assert len(train_val_split(np.arange(3), 0.01, seed=0)[1]) == 1  # >= 1 val from 2 examples on
    assert len(train_val_split(np.arange(2), 0.9, seed=0)[0]) == 1  # >= 1 train kept
    assert len(train_val_split(np.arange(1), 0.5, seed=0)[1]) == 0
    assert len(train_val_split(idx, 0.0, seed=0)[1]) == 0


def test_client_datasets_iid(mnist5k):
    clients = client_datasets(mnist5k, "iid", 8, seed=0, val_fraction=0.2)
    assert len(clients) == 8 and all(isinstance(c, ClientData) for c in clients)
    assert sum(c.num_examples + len(c.y_val) for c in clients) == len(mnist5k.y_train)
    for c in clients:
        assert c.x_train.shape == (c.num_examples, 28, 28, 1) and c.x_train.dtype == np.float32
        assert c.x_val.shape == (len(c.y_val), 28, 28, 1) and len(c.y_val) == 100
        assert c.y_train.dtype == np.int64
    # examples are real rows of the training set, labels travel with them
    first = clients[0]
    match = np.flatnonzero((mnist5k.x_train == first.x_train[0]).all(axis=(1, 2, 3)))
    assert first.y_train[0] in mnist5k.y_train[match]


def test_client_datasets_determinism(heart):
    a = client_datasets(heart, "dirichlet", 5, seed=3, alpha=1.0)
    b = client_datasets(heart, "dirichlet", 5, seed=3, alpha=1.0)
    c = client_datasets(heart, "dirichlet", 5, seed=4, alpha=1.0)
    for ca, cb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ca.x_train, cb.x_train)
        np.testing.assert_array_equal(ca.y_val, cb.y_val)
    assert [x.num_examples for x in a] != [x.num_examples for x in c] or any(
        not np.array_equal(x.x_train, y.x_train) for x, y in zip(a, c, strict=True)
    )
    natural = client_datasets(heart, "natural", 4, seed=0, val_fraction=0.1)
    counts = np.bincount(heart.train_client_ids)
    assert [c.num_examples + len(c.y_val) for c in natural] == counts.tolist()


def test_partition_stats_and_log(mnist5k, caplog):
    y = mnist5k.y_train
    parts = partition(y, "shards", 100, seed=0)
    stats = partition_stats(y, parts, 10)
    assert stats["num_clients"] == 100 and len(stats["label_histogram"]) == 100
    assert all(len(row) == 10 for row in stats["label_histogram"])
    assert sum(map(sum, stats["label_histogram"])) == stats["num_examples"] == 4000
    assert stats["min"] == stats["max"] == 40 and stats["mean"] == 40.0
    logger = logging.getLogger("fedloom.test")
    with caplog.at_level(logging.INFO, logger="fedloom.test"):
        log_partition_stats(stats, logger)
    assert 2 <= len(caplog.records) <= 4  # a summary, not one line per client
    assert "100 clients" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fedloom.test"):
        log_partition_stats(partition_stats(y, iid_partition(y, 3, seed=0), 10), logger)
    assert len(caplog.records) == 5  # few clients: one line each


def test_schemes_constant():
    assert PARTITION_SCHEMES == ("iid", "dirichlet", "pathological", "shards", "natural")


def test_partition_cache_returns_the_same_clients_without_repartitioning(tmp_path):
    import subprocess
    import sys

    dataset = load_digits()
    fresh = client_datasets(dataset, "dirichlet", 20, seed=3, alpha=0.5)
    cached = client_datasets(dataset, "dirichlet", 20, seed=3, alpha=0.5, cache_dir=tmp_path)
    again = client_datasets(dataset, "dirichlet", 20, seed=3, alpha=0.5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    for a, b, c in zip(fresh, cached, again):
        np.testing.assert_array_equal(a.y_train, b.y_train)
        np.testing.assert_array_equal(b.x_val, c.x_val)
    client_datasets(dataset, "dirichlet", 20, seed=4, alpha=0.5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # another seed is another entry
    code = (
        "import sys; from fedloom.data import load_digits, client_datasets; "
        f"c = client_datasets(load_digits(), 'dirichlet', 20, seed=3, alpha=0.5, cache_dir={str(tmp_path)!r}); "
        "assert 'flwr_datasets' not in sys.modules and len(c) == 20"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
