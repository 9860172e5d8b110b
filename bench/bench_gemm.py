"""GEMM: gdfast.matmul vs numpy.matmul (OpenBLAS) at the MLP's shapes and 1024^3,
with 1 and 2 threads for both (OpenBLAS is set to the same count in-process).

    python -m pytest bench/bench_gemm.py --benchmark-columns=median,ops \
        --benchmark-group-by=param:shape,param:threads

GFLOP/s = 2*m*n*k / time, reported in extra_info. The issue's targets:
MLP shapes >= 0.9x numpy's GFLOP/s; 1024^3 >= 70% of the FMA peak
(Zen3: 32 flops/cycle/core).
"""
import numpy as np
import pytest

import gdfast

from _blas import set_blas_threads

# name: (m, n, k, trans_a, trans_b)
SHAPES = {
    "fwd 64x784@784x256": (64, 256, 784, False, False),
    "fwd 64x256@256x128": (64, 128, 256, False, False),
    "wgrad 784x64@64x256 (X.T@dZ)": (784, 256, 64, True, False),
    "dgrad 64x256@256x784 (dZ@W.T)": (64, 784, 256, False, True),
    "1024^3": (1024, 1024, 1024, False, False),
}


def _operands(m, n, k, ta, tb):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
    return a, b, np.empty((m, n), np.float32)


@pytest.fixture(params=[1, 2])
def threads(request):
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(request.param)
    set_blas_threads(request.param)
    yield request.param
    gdfast.set_num_threads(before)


def _record(benchmark, m, n, k, threads):
    benchmark.extra_info.update(flops=2 * m * n * k, threads=threads,
                                simd=gdfast.build_info()["simd"])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gdfast(benchmark, shape, threads):
    m, n, k, ta, tb = SHAPES[shape]
    a, b, out = _operands(m, n, k, ta, tb)
    _record(benchmark, m, n, k, threads)
    benchmark(gdfast.matmul, a, b, ta, tb, out)
    benchmark.extra_info["gflops"] = 2 * m * n * k / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("shape", list(SHAPES))
def test_numpy(benchmark, shape, threads):
    m, n, k, ta, tb = SHAPES[shape]
    a, b, out = _operands(m, n, k, ta, tb)
    a = a.T if ta else a
    b = b.T if tb else b
    _record(benchmark, m, n, k, threads)
    benchmark(np.matmul, a, b, out=out)
    benchmark.extra_info["gflops"] = 2 * m * n * k / benchmark.stats.stats.median / 1e9
