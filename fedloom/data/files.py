"""Load the user's own data from a ``.npz`` or ``.csv`` file."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from fedloom.data._core import Dataset, check_fraction, encode, stratified_split
from fedloom.errors import DataError

__all__ = ["load_file"]

logger = logging.getLogger(__name__)


def load_file(
    path: str | Path,
    label_column: str = "label",
    client_id_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a dataset from a ``.npz`` or ``.csv`` file.

    ``.npz``: either keys ``x`` (shape ``(N, ...)``) and ``y`` (shape ``(N,)``), split here,
    or keys ``x_train``, ``y_train``, ``x_test``, ``y_test``, used as given. Client ids, if
    any, are read from the key ``client_id_column`` (default: ``client_id`` when present),
    one per row of ``x`` (or of ``x_train``). ``label_column`` is not used for ``.npz``.

    ``.csv``: a header row; ``label_column`` holds the labels, ``client_id_column`` (if set)
    the natural client of each row; every other column whose values all parse as numbers is
    a feature (other columns are skipped and logged).

    Features are cast to float32 as they are (no rescaling). Labels of any type are mapped
    to ``0..K-1`` in sorted order of the original values (over train and test together);
    client ids likewise to ``0..C-1`` in sorted order.

    Args:
      path: the ``.npz`` or ``.csv`` file.
      label_column: csv column with the labels.
      client_id_column: csv column (or npz key) with natural client ids, or None.
      test_fraction: fraction held out as the central test set when the file has no split,
        in [0, 1); stratified by client id when there are client ids, else by label.
      seed: seeds that split.

    Returns:
      A Dataset named after the file stem, with ``x`` float32 of shape ``(N, *feature_shape)``
      (``(N, F)`` for csv) and ``train_client_ids`` / ``test_client_ids`` int64 or None
      (``test_client_ids`` is None for a file with its own train/test split).
    """
    test_fraction = check_fraction(test_fraction, "dataset.test_fraction")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(
            f"dataset.path: file not found: {file}. "
            f"Set dataset.path to an existing .npz or .csv file."
        )
    suffix = file.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(file, client_id_column)
    elif suffix == ".csv":
        arrays = _read_csv(file, label_column, client_id_column)
    else:
        raise DataError(
            f"dataset.path: {file} has suffix {file.suffix!r}; load_file reads .npz or .csv files."
        )

    x, y, client_ids, given_test = arrays
    if given_test is not None:
        x_test, y_test = given_test
        codes, classes = encode(np.concatenate([y, y_test]))
        y, y_test = codes[: len(y)], codes[len(y) :]
        x_train, y_train = x, y
        train_ids, test_ids = (None if client_ids is None else encode(client_ids)[0]), None
    else:
        y, classes = encode(y)
        ids = None if client_ids is None else encode(client_ids)[0]
        train, test = stratified_split(y if ids is None else ids, test_fraction, seed)
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
        train_ids = None if ids is None else ids[train]
        test_ids = None if ids is None else ids[test]
    return Dataset(
        file.stem,
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=len(classes),
        train_client_ids=train_ids,
        test_client_ids=test_ids,
    )


def _read_npz(file: Path, client_id_key: str | None):
    with np.load(file, allow_pickle=False) as npz:
        keys = set(npz.files)
        split_keys = {"x_train", "y_train", "x_test", "y_test"}
        if split_keys <= keys:
            x, y = npz["x_train"], npz["y_train"]
            given_test = (_features(npz["x_test"], file), np.asarray(npz["y_test"]).reshape(-1))
        elif {"x", "y"} <= keys:
            x, y = npz["x"], npz["y"]
            given_test = None
        else:
            raise DataError(
                f"dataset.path: {file} has keys {sorted(keys)}; expected x and y, or "
                f"x_train, y_train, x_test and y_test."
            )
        key = client_id_key or ("client_id" if "client_id" in keys else None)
        if key is not None and key not in keys:
            raise DataError(
                f"dataset.client_id_column={key!r} is not a key of {file} (keys: {sorted(keys)}). "
                f"Fix the name or set client_id_column=None."
            )
        client_ids = None if key is None else np.asarray(npz[key]).reshape(-1)
    x, y = _features(x, file), np.asarray(y).reshape(-1)
    if len(y) != len(x) or (client_ids is not None and len(client_ids) != len(x)):
        raise DataError(
            f"dataset.path: {file} has {len(x)} feature rows but {len(y)} labels"
            + ("" if client_ids is None else f" and {len(client_ids)} client ids")
            + ". Give one of each per example."
        )
    return x, y, client_ids, given_test


def _features(x: np.ndarray, file: Path) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(
            f"dataset.path: features in {file} are not numeric (dtype {x.dtype})."
        ) from None
    if x.ndim == 1:
        x = x[:, None]
    return x


def _read_csv(file: Path, label_column: str, client_id_column: str | None):
    with open(file, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [row for row in reader if row]
    if not header:
        raise DataError(f"dataset.path: {file} is empty; expected a header row then data rows.")
    header = [h.strip() for h in header]
    for name, column in (("label_column", label_column), ("client_id_column", client_id_column)):
        if column is not None and column not in header:
            raise DataError(
                f"dataset.{name}={column!r} is not a column of {file} "
                f"(columns: {', '.join(header)}). Set dataset.{name} to one of them."
            )
    bad = [i + 2 for i, row in enumerate(rows) if len(row) != len(header)]
    if bad:
        raise DataError(
            f"dataset.path: {file} rows {bad[:5]} have a different number of fields than the "
            f"header ({len(header)}). Fix the file."
        )
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(header)
    by_name = dict(zip(header, columns, strict=True))
    features, skipped = [], []
    for name, values in by_name.items():
        if name in (label_column, client_id_column):
            continue
        try:
            features.append(np.array([float(v) for v in values], dtype=np.float32))
        except ValueError:
            skipped.append(name)
    if skipped:
        logger.info("load_file(%s): skipped non-numeric column(s) %s", file, ", ".join(skipped))
    if not features:
        raise DataError(
            f"dataset.path: {file} has no numeric feature column besides {label_column!r}; "
            f"skipped: {', '.join(skipped) or 'none'}."
        )
    x = np.stack(features, axis=1)
    y = _maybe_numeric(by_name[label_column])
    ids = None if client_id_column is None else _maybe_numeric(by_name[client_id_column])
    return x, y, ids, None


def _maybe_numeric(values) -> np.ndarray:
    """Parse csv text as numbers where all of it is numeric, so ``10`` sorts after ``9``."""
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        return np.array([v.strip() for v in values])
