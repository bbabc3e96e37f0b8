"""The ``Dataset`` container and the small helpers every loader shares.

Imports numpy only, so ``import fedloom.data`` stays light.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedloom.data.token_windows import TokenWindows
from fedloom.errors import DataError

__all__ = ["Dataset"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A centralised dataset: a training pool to split across clients and a server test set.

    Attributes:
      name: short name, e.g. ``"fashion_mnist"``.
      x_train: float32, shape ``(N, *feature_shape)``; pixels scaled to [0, 1] or tabular
        features standardised, as each loader documents.
      y_train: int64, shape ``(N,)``, labels ``0 .. num_classes - 1``.
      x_test: float32, shape ``(M, *feature_shape)``: the central test set for server-side
        evaluation (``M`` may be 0).

        Token datasets (next-character prediction) hold both as
        :class:`~fedloom.data.token_windows.TokenWindows` instead: integer token ids of
        shape ``(N, sequence_length)``, rows built only when indexed.
      y_test: int64, shape ``(M,)``.
      num_classes: number of classes ``K``.
      train_client_ids: int64, shape ``(N,)``, the natural client (hospital, device, ...)
        of each training example, or ``None`` when the data has no natural clients.
      test_client_ids: shape ``(M,)``, the natural client of each test example (for
        per-client evaluation), or ``None``.

    Equality is identity (``eq=False``): comparing arrays element-wise has no single truth
    value. Arrays of cached datasets (Fashion-MNIST) are read-only; index them to get copies.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    train_client_ids: np.ndarray | None = None
    test_client_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Coerce to the documented dtypes so hand-built datasets behave like loaded ones.
        for field, dtype in (
            ("x_train", np.float32),
            ("x_test", np.float32),
            ("y_train", np.int64),
            ("y_test", np.int64),
        ):
            value = getattr(self, field)
            if isinstance(value, TokenWindows):  # token ids stay integers, rows stay lazy
                continue
            if not (isinstance(value, np.ndarray) and value.dtype == dtype):
                try:
                    object.__setattr__(self, field, np.asarray(value, dtype=dtype))
                except (TypeError, ValueError) as err:
                    raise DataError(
                        f"dataset {self.name!r}: {field} must convert to {np.dtype(dtype).name}; "
                        f"got {np.asarray(value).dtype}. Map labels to integers 0..K-1 and "
                        f"features to numbers ({err})."
                    ) from None
        for field in ("train_client_ids", "test_client_ids"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, np.asarray(getattr(self, field)))
        n, m = len(self.x_train), len(self.x_test)
        if self.y_train.shape != (n,):
            raise DataError(
                f"dataset {self.name!r}: y_train must have shape ({n},) to match x_train; "
                f"got {self.y_train.shape}. Give one label per training example."
            )
        if self.y_test.shape != (m,):
            raise DataError(
                f"dataset {self.name!r}: y_test must have shape ({m},) to match x_test; "
                f"got {self.y_test.shape}. Give one label per test example."
            )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train and test features differ in shape: "
                f"{self.x_train.shape[1:]} vs {self.x_test.shape[1:]}. Use the same features."
            )
        if self.num_classes < 1:
            raise DataError(
                f"dataset {self.name!r}: num_classes must be >= 1; got {self.num_classes}."
            )
        for split, y in (("y_train", self.y_train), ("y_test", self.y_test)):
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(
                    f"dataset {self.name!r}: {split} must hold labels 0..{self.num_classes - 1}; "
                    f"got values {int(y.min())}..{int(y.max())}. Map labels to 0..K-1."
                )
        for field, size in (("train_client_ids", n), ("test_client_ids", m)):
            ids = getattr(self, field)
            if ids is not None and ids.shape != (size,):
                raise DataError(
                    f"dataset {self.name!r}: {field} must have shape ({size},); got "
                    f"{ids.shape}. Give one client id per example."
                )

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)`` or ``(64,)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        clients = (
            "none"
            if self.train_client_ids is None
            else str(len(np.unique(self.train_client_ids)))
        )
        return (
            f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"feature_shape={self.feature_shape}, num_classes={self.num_classes}, "
            f"natural_clients={clients})"
        )


def check_fraction(value: float, setting: str, example: float = 0.2) -> float:
    """Return ``value`` as a float if it is in [0, 1), else raise a DataError naming ``setting``."""
    name = setting.rsplit(".", 1)[-1]
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not (ok and 0 <= value < 1):
        raise DataError(
            f"{setting} must be in [0, 1); got {name}={value!r}. Use e.g. {name}={example}."
        )
    return float(value)


def is_int(value) -> bool:
    """True for Python and numpy integers, False for bools (``True`` is not a client count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def stratified_split(
    groups: np.ndarray, test_fraction: float, seed: int | tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(test_fraction * n_g)`` random examples of every group ``g``.

    Args:
      groups: shape ``(N,)``, any hashable values (a label, a hospital, a device).
      test_fraction: in [0, 1).
      seed: seed for ``np.random.default_rng``.

    Returns:
      ``(train_index, test_index)``: sorted int64 index arrays that partition ``0..N-1``.
    """
    rng = np.random.default_rng(seed)
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    # One stable sort gives every group's members in index order (what
    # np.flatnonzero(codes == g) gives, without a pass over N per group).
    members = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes))]) if len(codes) else [0]
    test_mask = np.zeros(len(groups), dtype=bool)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        n_test = int(round(test_fraction * int(stop - start)))
        test_mask[rng.permutation(members[start:stop])[:n_test]] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary values to int64 codes ``0..K-1`` in sorted order; returns (codes, uniques)."""
    uniques, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), uniques


def package_file(package: str, relative: str, install_hint: str, setting: str) -> Path:
    """Locate a data file shipped inside an installed package without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"{setting} is not set and package {package!r} (which ships the data) is not "
            f"installed. Run `{install_hint}` or set {setting} to your own copy."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DataError(
            f"{setting} is not set and {path} is missing from the installed {package!r}. "
            f"Reinstall with `{install_hint}` or set {setting} to your own copy."
        )
    return path


def require_file(path: str | Path, setting: str, what: str, fix: str) -> Path:
    """Return ``path`` as a Path if it is a file, else raise a DataError naming ``setting``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{setting}: {what} not found at {path}. {fix}")
    return path


def as_labels(labels, setting: str = "labels") -> np.ndarray:
    """``labels`` as a non-empty 1-D array, else a DataError naming ``setting``."""
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) == 0:
        raise DataError(
            f"{setting} must be a non-empty 1-D array, one entry per training example; got "
            f"shape {array.shape}."
        )
    return array


def check_num_partitions(num_partitions: int, n: int) -> None:
    """Refuse a client count below 1 or above the ``n`` training examples."""
    if not (is_int(num_partitions) and num_partitions >= 1):
        raise DataError(
            f"num_clients must be an integer >= 1; got num_clients={num_partitions!r}. "
            f"Use e.g. num_clients=10."
        )
    if num_partitions > n:
        raise DataError(
            f"num_clients={num_partitions} is more than the {n} training examples; each client "
            f"needs at least one. Lower num_clients to at most {n} or use a larger dataset."
        )
