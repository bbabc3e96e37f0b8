"""Flower record encoding: zero-copy views and one-copy encoding equal Flower's own."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.common import ndarrays_to_parameters as flower_ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays

from fedloom.records import (
    arrayrecord_views,
    ndarray_to_array,
    ndarray_view,
    ndarrays_to_arrayrecord,
    ndarrays_to_parameters,
    parameters_views,
)

RNG = np.random.default_rng(0)
VALUES = [
    RNG.normal(size=(3, 4)).astype(np.float32),
    np.asfortranarray(RNG.normal(size=(5, 2))),
    np.arange(7, dtype=np.int64),
    np.array(2.5, dtype=np.float32),
    np.zeros((0, 3), np.float32),
    np.array([True, False]),
    np.ones(4, np.float16),
    np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")]),  # structured: the slow path
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{v.dtype}{v.shape}")
def test_views_equal_flower_decoding_and_share_its_bytes(value):
    array = Array(value)
    for view in (ndarray_view(array.data), ndarray_view(array.data, array.dtype, array.shape)):
        expected = array.numpy()
        np.testing.assert_array_equal(view, expected)
        assert view.dtype == expected.dtype and view.shape == expected.shape
        assert not view.flags.writeable  # a view of Flower's immutable bytes, not a copy


@pytest.mark.parametrize("value", VALUES[:-1], ids=lambda v: f"{v.dtype}{v.shape}")
def test_encoding_writes_the_bytes_numpy_save_writes(value):
    ours = ndarray_to_array(value)
    if value.flags.c_contiguous:
        assert ours.data == Array(value).data
    np.testing.assert_array_equal(ours.numpy(), value)
    assert (ours.dtype, ours.shape) == (str(value.dtype), value.shape)


def test_record_and_parameters_round_trips_keep_key_order():
    arrays = [v for v in VALUES[:5]]
    record = ndarrays_to_arrayrecord(arrays, ["w", "b", "c", "d", "e"])
    assert list(record.keys()) == ["w", "b", "c", "d", "e"]
    for got, want in zip(arrayrecord_views(record, ["w", "b", "c", "d", "e"]), arrays):
        np.testing.assert_array_equal(got, want)
    flower = ArrayRecord(arrays)
    for got, want in zip(arrayrecord_views(flower), flower.to_numpy_ndarrays()):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(parameters_views(flower_ndarrays_to_parameters(arrays)), arrays):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(parameters_to_ndarrays(ndarrays_to_parameters(arrays)), arrays):
        np.testing.assert_array_equal(got, want)


def test_garbage_and_object_arrays_are_refused():
    with pytest.raises(ValueError):
        ndarray_view(b"not an npy file at all")
    with pytest.raises(ValueError, match="pickling"):
        ndarray_to_array(np.array([{"a": 1}], dtype=object))
    truncated = Array(np.arange(10.0)).data[:-8]
    with pytest.raises(ValueError):
        ndarray_view(truncated)
