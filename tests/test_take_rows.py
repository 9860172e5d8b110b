"""gdfast.take_rows, the mini-batch gather of Batches and gdfast.sklearn:
np.take's rows on the threads, and clear errors for what it cannot take."""
import numpy as np
import pytest

import gdfast
from gdfast import _kernels


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int64])
@pytest.mark.parametrize("shape", [(500, 784), (300, 3, 5), (1000,), (40, 0)])
def test_takes_the_rows_numpy_takes(threads, dtype, shape):
    rng = np.random.default_rng(3)
    x = (rng.random(shape) * 200).astype(dtype)
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(threads)
    try:
        for n in (0, 1, 7, 256, len(x)):
            idx = rng.integers(0, len(x), n)
            out = np.full((n,) + x.shape[1:], 99, dtype=dtype)
            assert _kernels.take_rows(x, idx, out) is out
            np.testing.assert_array_equal(out, np.take(x, idx, axis=0))
    finally:
        gdfast.set_num_threads(before)


def test_any_integer_index_dtype_and_repeated_rows():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    for idx in (np.array([5, 5, 0], np.int32), np.array([2, 1], np.uint16),
                np.arange(6)[::-2]):
        out = np.empty((len(idx), 2), np.float32)
        np.testing.assert_array_equal(_kernels.take_rows(x, idx, out), x[idx])


@pytest.mark.parametrize("bad", [-1, 6, 2**40])
def test_an_index_out_of_range_is_refused_and_nothing_is_written(bad):
    x = np.ones((6, 3), np.float32)
    out = np.zeros((3, 3), np.float32)
    with pytest.raises(IndexError, match=rf"idx\[2\] = {bad} is out of range for x with 6 rows"):
        _kernels.take_rows(x, np.array([0, 1, bad, 2]), np.zeros((4, 3), np.float32))
    with pytest.raises(IndexError):
        _kernels.take_rows(x, np.array([bad, 0, 1]), out)
    assert not out.any()


def test_bad_arguments_get_clear_errors():
    x = np.ones((6, 3), np.float32)
    idx = np.array([0, 1])
    out = np.empty((2, 3), np.float32)
    cases = [
        (([[1.0]], idx, out), TypeError, "x must be a numpy.ndarray"),
        ((x, idx, [[0.0]]), TypeError, "out must be a numpy.ndarray"),
        ((x, idx, np.empty((2, 3), np.float64)), TypeError, "out must have x's dtype float32"),
        ((x, idx, np.empty((3, 3), np.float32)), ValueError, r"out must have shape \(2, 3\)"),
        ((x, [0, 1], out), TypeError, "idx must be a 1-D numpy array of integers"),
        ((x, np.array([0.0, 1.0]), out), TypeError, "idx must be a 1-D numpy array of integers"),
        ((x, idx.reshape(2, 1), out), TypeError, "idx must be a 1-D"),
        ((np.ones((3, 6), np.float32).T, idx, np.empty((2, 3), np.float32)), ValueError,
         "x must be C-contiguous"),
        ((x, idx, np.empty((3, 2), np.float32).T), ValueError, "out must be C-contiguous"),
        ((np.array(1.0, np.float32), np.array([0]), np.empty(1, np.float32)), ValueError,
         "at least one dimension"),
        ((np.empty((2, 2), object), idx, np.empty((2, 2), object)), TypeError, "plain values"),
        ((x, idx, x[:2]), ValueError, "must not share memory with x"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            _kernels.take_rows(*args)
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _kernels.take_rows(x, idx, ro)


def test_batches_refuse_object_data():
    from gdfast.batching import Batches
    with pytest.raises(TypeError, match="x must hold numbers"):
        Batches(np.empty((4, 2), object), np.zeros(4), batch_size=2)
