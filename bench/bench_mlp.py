"""One training step of the 784-256-128-10 MLP (ReLU, softmax cross-entropy;
Adam, and plain SGD at batch 1): gdfast.MLP.train_step vs the NumPy reference
MLP + the same reference optimizer, and torch nn.Sequential + torch.optim
(Adam fused) when torch is installed.

    python -m pytest bench/bench_mlp.py --benchmark-only --benchmark-columns=median,ops \
        --benchmark-group-by=param:batch,param:threads

samples/s = batch * ops.
"""
import pytest

from gdfast.bench import MLP_BATCHES, mlp_batches, mlp_cases, mlp_pair, torch_mlp_step

CASES = mlp_cases(MLP_BATCHES)


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
