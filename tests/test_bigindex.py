"""64-bit sizes: buffers of more than 2^31 floats are indexed correctly.

Without committing 8 GiB: numpy.zeros gets fresh pages from the OS, and
reading an untouched page maps the shared zero page, so a gradient-norm pass
over 2^31 + k floats reads 8 GiB of virtual memory while only the pages we
plant values in are committed (~40 MB resident in all). Writing passes
(updates, scaling) would commit everything, so the thread-range arithmetic
they use is checked directly, through the driver's own C function.
"""
import math
import sys

import numpy as np
import pytest

import gdfast
from gdfast import _kernels

pytestmark = pytest.mark.skipif(sys.maxsize < 2**40, reason="needs a 64-bit address space")

BIG = 2**31 + 4096 + 37


@pytest.fixture(autouse=True)
def restore_threads():
    before = gdfast.get_num_threads()
    yield
    gdfast.set_num_threads(before)  # past 2^31, and not a multiple of the 4096-float norm block


def plant(n, where):
    """np.zeros(n) with values planted at `where` (only those pages get committed)."""
    g = np.zeros(n, np.float32)
    values = np.arange(1, len(where) + 1, dtype=np.float32)
    g[list(where)] = values
    return g, float(np.dot(values.astype(np.float64), values))


def test_gradient_norm_of_one_buffer_over_2_31_floats():
    g, sumsq = plant(BIG, [0, 2**31 - 1, 2**31, 2**31 + 4095, 2**31 + 4096, BIG - 1])
    for threads in (1, 2):
        gdfast.set_num_threads(threads)
        # max_norm far above the norm: the factor is 1 and nothing is written
        assert gdfast.clip_grad_norm(g, 1e30) == math.sqrt(sumsq)
    assert g[BIG - 1] == 6.0 and g[2**31] == 3.0


def test_gradient_norm_over_segments_starting_past_2_31():
    """Segment starts and block boundaries beyond 2^31 in the global index."""
    a, sa = plant(2**31 - 3, [2**31 - 4])       # ends 3 floats short of 2^31
    b, sb = plant(5000, [0, 2, 3, 4999])         # straddles 2^31 and a block boundary
    c, sc = plant(2**30 + 11, [0, 2**30 + 10])   # starts past 2^31, ends past 3 * 2^30
    for threads in (1, 2):
        gdfast.set_num_threads(threads)
        assert gdfast.clip_grad_norm([a, b, c], 1e30) == math.sqrt(sa + sb + sc)


TOTALS = [0, 1, 63, 64, 65, 2**31 - 1, 2**31, 2**31 + 1, 2**32 + 7, 3 * 2**31 + 65,
          2**40 + 3, 2**62 + 5]


@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize("nt", [1, 2, 3, 7, 8, 64])
def test_thread_ranges_cover_64_bit_totals_exactly(total, nt):
    """The optimizer driver's split of [0, total) into per-thread ranges."""
    ranges = _kernels._thread_ranges(total, nt)
    chunk = -(-(-(-total // nt)) // 64) * 64  # ceil(ceil(total / nt) / 64) * 64, exact
    assert len(ranges) == nt
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    for t, (lo, hi) in enumerate(ranges):
        assert lo == min(t * chunk, total) and hi == min((t + 1) * chunk, total)
        assert lo <= hi and (lo % 64 == 0 or lo == total)
        if t:
            assert ranges[t - 1][1] == lo
