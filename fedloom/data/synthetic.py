"""FedProx's Synthetic(alpha, beta) data: heterogeneous logistic-regression devices.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020 (FedProx), section 5.1, following Shamir et al. 2014. ``alpha``
controls how much the devices' local models differ, ``beta`` how much their inputs differ.
"""

from __future__ import annotations

import numpy as np

from fedloom.data._core import Dataset, check_fraction, is_int, stratified_split
from fedloom.errors import DataError

__all__ = ["load_synthetic"]

_DIMENSION = 60
_NUM_CLASSES = 10


def load_synthetic(
    alpha: float = 1.0,
    beta: float = 1.0,
    num_devices: int = 30,
    iid: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Generate Synthetic(alpha, beta) (Li et al. 2020) with one natural client per device.

    For each device ``k``: ``u_k ~ N(0, alpha)``, ``W_k ~ N(u_k, 1)`` (60 x 10),
    ``b_k ~ N(u_k, 1)`` (10); ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)`` elementwise (60);
    ``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal, ``Sigma_jj = j^-1.2`` (j = 1..60);
    ``y = argmax(softmax(x W_k + b_k))``. The number of samples of device ``k`` is
    ``int(lognormal(4, 2)) + 50``. As in the authors' generator, the second argument of
    ``N(., .)`` is used as the standard deviation (numpy's ``scale``). With ``iid=True`` every
    device shares one ``W ~ N(0, 1)``, ``b ~ N(0, 1)`` and ``v = 0`` (FedProx's Synthetic-IID;
    ``alpha`` and ``beta`` are then unused). The paper's settings are Synthetic(0, 0),
    (0.5, 0.5) and (1, 1). Draws come from ``np.random.default_rng(seed)``, so the numbers
    differ from the authors' files but follow the same distribution.

    Args:
      alpha: spread of the devices' models, >= 0.
      beta: spread of the devices' inputs, >= 0.
      num_devices: number of devices (natural clients), >= 1.
      iid: generate the IID variant instead.
      test_fraction: fraction of each device's samples held out for the central test set,
        in [0, 1) (FedProx keeps 20% of each device for testing).
      seed: seeds generation and the split.

    Returns:
      A Dataset with ``x`` float32 of shape ``(N, 60)`` (raw, not rescaled), ``y`` int64 in
      0..9 and ``train_client_ids`` / ``test_client_ids`` int64, the device id
      ``0..num_devices-1``.
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
            raise DataError(
                f"dataset.{name} must be a number >= 0 for Synthetic(alpha, beta); got "
                f"{name}={value!r}. Use 0, 0.5 or 1 as in FedProx."
            )
    if not (is_int(num_devices) and num_devices >= 1):
        raise DataError(
            f"dataset.num_devices must be an integer >= 1; got num_devices={num_devices!r}. "
            f"Use e.g. num_devices=30 as in FedProx."
        )
    test_fraction = check_fraction(test_fraction, "dataset.test_fraction")

    rng = np.random.default_rng(seed)
    samples_per_device = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    std_x = np.arange(1, _DIMENSION + 1, dtype=np.float64) ** (-1.2 / 2)
    if iid:
        shared_w = rng.normal(0, 1, (_DIMENSION, _NUM_CLASSES))
        shared_b = rng.normal(0, 1, _NUM_CLASSES)
    else:
        u = rng.normal(0, alpha, num_devices)
        big_b = rng.normal(0, beta, num_devices)

    # Rows are written straight into float32 train/test arrays, device by device, so
    # memory peaks near the data's own size (float64 only for one device at a time).
    device = np.repeat(np.arange(num_devices, dtype=np.int64), samples_per_device)
    train, test = stratified_split(device, test_fraction, (seed, 1))
    is_test = np.zeros(len(device), dtype=bool)
    is_test[test] = True
    x_train = np.empty((len(train), _DIMENSION), dtype=np.float32)
    x_test = np.empty((len(test), _DIMENSION), dtype=np.float32)
    y = np.empty(len(device), dtype=np.int64)
    start, train_at, test_at = 0, 0, 0
    for k in range(num_devices):
        if iid:
            w, b, v = shared_w, shared_b, np.zeros(_DIMENSION)
        else:
            w = rng.normal(u[k], 1, (_DIMENSION, _NUM_CLASSES))
            b = rng.normal(u[k], 1, _NUM_CLASSES)
            v = rng.normal(big_b[k], 1, _DIMENSION)
        stop = start + int(samples_per_device[k])
        x = v + rng.standard_normal((stop - start, _DIMENSION)) * std_x
        y[start:stop] = np.argmax(x @ w + b, axis=1)  # softmax is monotone: argmax of logits
        held_out = is_test[start:stop]
        n_test = int(held_out.sum())
        x_test[test_at:test_at + n_test] = x[held_out]
        x_train[train_at:train_at + len(x) - n_test] = x[~held_out]
        start, train_at, test_at = stop, train_at + len(x) - n_test, test_at + n_test
    name = "synthetic_iid" if iid else f"synthetic_{alpha:g}_{beta:g}"
    return Dataset(
        name,
        x_train,
        y[train],
        x_test,
        y[test],
        num_classes=_NUM_CLASSES,
        train_client_ids=device[train],
        test_client_ids=device[test],
    )
