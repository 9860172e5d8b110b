import numpy as np
import pytest

from gdfast.params import Params


def test_views_share_one_aligned_buffer():
    p = Params({"w": (3, 4), "b": (4,)})
    assert p.size == 16
    assert p.data.ctypes.data % 64 == 0 and p.grad.ctypes.data % 64 == 0
    p["w"][...] = 1.0
    p["b"][...] = 2.0
    np.testing.assert_array_equal(p.data[:12], 1.0)
    np.testing.assert_array_equal(p.data[12:], 2.0)
    p.grad_of("b")[...] = 5.0
    np.testing.assert_array_equal(p.grad[12:], 5.0)
    assert p.layout() == [("w", (3, 4)), ("b", (4,))]


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(ValueError, match="at least one tensor"):
        Params({})
    with pytest.raises(ValueError, match="non-negative"):
        Params({"w": (-1, 2)})
    with pytest.raises(KeyError, match="no tensor named 'x'"):
        Params({"w": 3})["x"]
