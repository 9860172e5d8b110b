"""Optimizer step benchmarks: gdfast vs in-place NumPy (gdfast.reference) vs
torch.optim (foreach and fused, when torch is installed), plus the memory
bandwidth ceiling measured by gdfast's own C probe in the same run.

    python -m pytest bench/bench_optim.py --benchmark-columns=median,ops

Bytes a step must move per parameter (the ceiling comparison): Adam/AdamW 28
(read p g m v, write p m v), SGD+momentum 20, RMSprop 20, Adagrad 20.
"""
import numpy as np
import pytest

import gdfast
from gdfast.reference import optim as ref

SIZES = [10_000, 100_000, 1_000_000, 10_000_000]
OPTIMIZERS = {
    "Adam": ({}, 28, 3, 1),
    "AdamW": ({}, 28, 3, 1),
    "SGD": ({"momentum": 0.9}, 20, 2, 1),
    "RMSprop": ({}, 20, 2, 1),
    "Adagrad": ({}, 20, 2, 1),
}


def _arena(n):
    p = gdfast.Params({"w": (n,)})
    rng = np.random.default_rng(0)
    p.data[...] = rng.standard_normal(n, dtype=np.float32)
    p.grad[...] = rng.standard_normal(n, dtype=np.float32) * 1e-3
    return p


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_gdfast(benchmark, name, n):
    kw, nbytes, _, _ = OPTIMIZERS[name]
    p = _arena(n)
    opt = getattr(gdfast, name)(p, lr=1e-4, **kw)
    benchmark.extra_info.update(bytes_per_step=nbytes * n, threads=gdfast.get_num_threads(),
                                simd=gdfast.build_info()["simd"])
    benchmark(opt.step)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_numpy_reference(benchmark, name, n):
    kw, nbytes, _, _ = OPTIMIZERS[name]
    p = _arena(n)
    opt = getattr(ref, name)([p.data], lr=1e-4, **kw)
    benchmark.extra_info["bytes_per_step"] = nbytes * n
    benchmark(opt.step, [p.grad])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode", ["foreach", "fused"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_torch(benchmark, name, mode, n):
    torch = pytest.importorskip("torch")
    kw, nbytes, _, _ = OPTIMIZERS[name]
    torch.set_num_threads(gdfast.get_num_threads())
    w = torch.nn.Parameter(torch.randn(n))
    w.grad = torch.randn(n) * 1e-3
    try:
        opt = getattr(torch.optim, name)([w], lr=1e-4, **kw, **{mode: True})
    except (TypeError, RuntimeError, ValueError) as e:
        pytest.skip(f"torch.optim.{name} has no {mode} CPU path here: {e}")
    benchmark.extra_info["bytes_per_step"] = nbytes * n
    with torch.no_grad():
        benchmark(opt.step)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_bandwidth_ceiling(benchmark, name):
    """In-place RMW bandwidth with the optimizer's own stream counts, 10M floats."""
    _, nbytes, rw, ro = OPTIMIZERS[name]
    rate = benchmark.pedantic(gdfast._kernels.bandwidth_rmw, args=(10_000_000, rw, ro, 5),
                              rounds=3, iterations=1)
    benchmark.extra_info.update(rmw_bytes_per_s=rate, step_ceiling_s=nbytes * 1e7 / rate)


def test_stream_triad(benchmark):
    rate = benchmark.pedantic(gdfast._kernels.bandwidth_triad, args=(10_000_000, 5),
                              rounds=3, iterations=1)
    benchmark.extra_info["triad_bytes_per_s"] = rate
