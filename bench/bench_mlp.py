"""One training step of the 784-256-128-10 MLP (ReLU, softmax cross-entropy,
Adam): gdfast.MLP.train_step vs the NumPy reference MLP + reference Adam
(both at the same thread count), and torch nn.Sequential + torch.optim.Adam
when torch is installed (optional).

    python -m pytest bench/bench_mlp.py --benchmark-columns=median,ops \
        --benchmark-group-by=param:batch,param:threads

samples/s = batch * ops. Targets at 2 threads: 120,000 samples/s at batch
128, 90,000 at batch 32, 10,000 steps/s at batch 1.
"""
import numpy as np
import pytest

import gdfast
from gdfast.reference import optim as ref_optim
from gdfast.reference.mlp import MLP as RefMLP

from _blas import set_blas_threads

SIZES = [784, 256, 128, 10]
BATCHES = [1, 32, 128, 512]


@pytest.fixture(params=[1, 2])
def threads(request):
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(request.param)
    set_blas_threads(request.param)
    yield request.param
    gdfast.set_num_threads(before)


def _batch(n):
    rng = np.random.default_rng(n)
    return rng.random((n, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], n)


@pytest.mark.parametrize("batch", BATCHES)
def test_gdfast(benchmark, batch, threads):
    net = gdfast.MLP(SIZES, activation="relu", loss="cross_entropy", seed=0)
    opt = gdfast.Adam(net.params, lr=1e-4)
    x, y = _batch(batch)
    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(net.train_step, x, y, opt)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("batch", BATCHES)
def test_numpy_reference(benchmark, batch, threads):
    net = gdfast.MLP(SIZES, seed=0)
    ref = RefMLP(SIZES, "relu", "cross_entropy", params={k: net.params[k] for k in net.params},
                 dtype=np.float32)
    names = list(ref.params)
    opt = ref_optim.Adam([ref.params[k] for k in names], lr=1e-4)
    x, y = _batch(batch)

    def step():
        loss, grads = ref.loss_and_grad(x, y)
        opt.step([grads[k] for k in names])
        return loss

    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(step)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("batch", BATCHES)
def test_torch(benchmark, batch, threads):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = _batch(batch)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss

    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(step)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median
