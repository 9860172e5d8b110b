"""One training step of the 784-256-128-10 MLP (ReLU, softmax cross-entropy;
Adam, and plain SGD at batch 1): gdfast.MLP.train_step vs the NumPy reference
MLP + the same reference optimizer, and torch nn.Sequential + torch.optim
(Adam fused) when torch is installed; and Adam steps of the bigger networks
of `gdfast bench` (BIG_MLPS at BIG_BATCHES, test_*_big).

    python -m pytest bench/bench_mlp.py --benchmark-only --benchmark-columns=median,ops \
        --benchmark-group-by=param:batch,param:threads

samples/s = batch * ops; for the bigger networks GFLOP/s =
mlp_flops_per_sample(sizes) * batch * ops / 1e9.
"""
import pytest

from gdfast.bench import (BIG_BATCHES, BIG_MLPS, MLP_BATCHES, mlp_batches, mlp_cases, mlp_pair,
                          torch_mlp_step)

CASES = mlp_cases(MLP_BATCHES)
BIG = pytest.mark.parametrize("sizes,batch", [(s, b) for s in BIG_MLPS for b in BIG_BATCHES],
                              ids=lambda v: "-".join(map(str, v)) if isinstance(v, list) else str(v))


@pytest.mark.parametrize("batch,optimizer,lr", CASES)
def test_gdfast(benchmark, batch, optimizer, lr, threads):
    (model, opt), _ = mlp_pair(optimizer=optimizer, lr=lr)
    data = mlp_batches(batch)
    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(lambda: model.train_step(*next(data), opt))


@pytest.mark.parametrize("batch,optimizer,lr", CASES)
def test_numpy_reference(benchmark, batch, optimizer, lr, threads):
    _, (model, opt) = mlp_pair(optimizer=optimizer, lr=lr)
    data = mlp_batches(batch)

    def step():
        model.loss_and_grad(*next(data))
        opt.step()

    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(step)


@pytest.mark.parametrize("batch,optimizer,lr", CASES)
def test_torch(benchmark, batch, optimizer, lr, threads):
    torch = pytest.importorskip("torch")
    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(torch_mlp_step(torch, mlp_batches(batch), optimizer, lr))


@BIG
def test_gdfast_big(benchmark, sizes, batch, threads):
    (model, opt), _ = mlp_pair(sizes=sizes)
    data = mlp_batches(batch, sizes=sizes)
    benchmark.extra_info.update(batch=batch, threads=threads, sizes=sizes)
    benchmark(lambda: model.train_step(*next(data), opt))


@BIG
def test_torch_big(benchmark, sizes, batch, threads):
    torch = pytest.importorskip("torch")
    benchmark.extra_info.update(batch=batch, threads=threads, sizes=sizes)
    benchmark(torch_mlp_step(torch, mlp_batches(batch, sizes=sizes), sizes=sizes))
