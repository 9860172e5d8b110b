"""GEMM: gdfast.matmul vs numpy.matmul (its BLAS pinned to the same thread
count) at the MLP's shapes and 1024^3, plus the FMA-loop ceiling.

    python -m pytest bench/bench_gemm.py --benchmark-only --benchmark-columns=median,ops \
        --benchmark-group-by=param:shape,param:threads
"""
import numpy as np
import pytest

import gdfast
from gdfast.bench import GEMM_SHAPES, gemm_operands


def _record(benchmark, shape, threads):
    m, n, k, _, _ = GEMM_SHAPES[shape]
    benchmark.extra_info.update(flops=2 * m * n * k, threads=threads)


@pytest.mark.parametrize("shape", list(GEMM_SHAPES))
def test_gdfast(benchmark, shape, threads):
    m, n, k, ta, tb = GEMM_SHAPES[shape]
    a, b, out = gemm_operands(m, n, k, ta, tb)
    _record(benchmark, shape, threads)
    benchmark(gdfast.matmul, a, b, ta, tb, out)


@pytest.mark.parametrize("shape", list(GEMM_SHAPES))
def test_numpy(benchmark, shape, threads):
    m, n, k, ta, tb = GEMM_SHAPES[shape]
    a, b, out = gemm_operands(m, n, k, ta, tb)
    _record(benchmark, shape, threads)
    benchmark(np.matmul, a.T if ta else a, b.T if tb else b, out=out)


def test_fma_peak(benchmark, threads):
    flops = benchmark.pedantic(gdfast._kernels.fma_loop, args=(20_000_000, threads),
                               rounds=3, iterations=1)
    benchmark.extra_info.update(flops=flops, threads=threads)
