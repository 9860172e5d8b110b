"""Optimizer steps: gdfast vs the in-place NumPy reference vs torch.optim
(foreach and fused, when torch is installed), and the in-place
read-modify-write bandwidth and square-root-and-divide ceilings measured by
gdfast's own C probes.

    python -m pytest bench/bench_optim.py --benchmark-only --benchmark-columns=median,ops
"""
import numpy as np
import pytest

import gdfast
from gdfast.bench import OPTIMIZER_SIZES, OPTIMIZERS
from gdfast.reference import optim as ref_optim


def _arena(n):
    p = gdfast.Params({"w": (n,)})
    rng = np.random.default_rng(0)
    p.data[...] = rng.standard_normal(n, dtype=np.float32)
    p.grad[...] = rng.standard_normal(n, dtype=np.float32) * 1e-3
    return p


def _record(benchmark, name, n, threads):
    _, _, (rw, ro) = OPTIMIZERS[name]
    benchmark.extra_info.update(bytes_per_step=(2 * rw + ro) * 4 * n, threads=threads)


@pytest.mark.parametrize("n", OPTIMIZER_SIZES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_gdfast(benchmark, name, n, threads):
    cls, hyper, _ = OPTIMIZERS[name]
    opt = getattr(gdfast, cls)(_arena(n), **hyper)
    _record(benchmark, name, n, threads)
    benchmark(opt.step)


@pytest.mark.parametrize("n", OPTIMIZER_SIZES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_numpy_reference(benchmark, name, n, threads):
    cls, hyper, _ = OPTIMIZERS[name]
    p = _arena(n)
    opt = getattr(ref_optim, cls)([p.data], **hyper)
    _record(benchmark, name, n, threads)
    benchmark(opt.step, [p.grad])


@pytest.mark.parametrize("n", OPTIMIZER_SIZES)
@pytest.mark.parametrize("mode", ["foreach", "fused"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_torch(benchmark, name, mode, n, threads):
    torch = pytest.importorskip("torch")
    cls, hyper, _ = OPTIMIZERS[name]
    w = torch.nn.Parameter(torch.randn(n))
    w.grad = torch.randn(n) * 1e-3
    try:
        opt = getattr(torch.optim, cls)([w], **hyper, **{mode: True})
    except (TypeError, RuntimeError, ValueError) as e:
        pytest.skip(f"torch.optim.{cls} has no {mode} CPU path here: {e}")
    _record(benchmark, name, n, threads)
    with torch.no_grad():
        benchmark(opt.step)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_bandwidth_ceiling(benchmark, name, threads):
    """In-place RMW bandwidth with the optimizer's own stream counts, 10M floats."""
    _, _, (rw, ro) = OPTIMIZERS[name]
    rate = benchmark.pedantic(gdfast._kernels.bandwidth_rmw, args=(10_000_000, rw, ro, 5),
                              rounds=3, iterations=1)
    benchmark.extra_info.update(rmw_bytes_per_s=rate, threads=threads)


def test_stream_triad(benchmark, threads):
    rate = benchmark.pedantic(gdfast._kernels.bandwidth_triad, args=(10_000_000, 5),
                              rounds=3, iterations=1)
    benchmark.extra_info.update(triad_bytes_per_s=rate, threads=threads)


def test_rootdiv_ceiling(benchmark, threads):
    """Square roots and divisions per second, one of each per element: the
    compute ceiling of Adam, RMSprop and Adagrad where the divider is slow."""
    done = benchmark.pedantic(gdfast._kernels.rootdiv_loop, args=(2_000_000, threads),
                              rounds=3, iterations=1)
    benchmark.extra_info.update(elements=done, threads=threads)
