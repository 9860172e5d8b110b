"""One training step of the 784-256-128-10 MLP (ReLU, softmax cross-entropy,
Adam): gdfast.MLP.train_step vs the NumPy reference MLP + reference Adam,
and torch nn.Sequential + torch.optim.Adam(fused) when torch is installed.

    python -m pytest bench/bench_mlp.py --benchmark-only --benchmark-columns=median,ops \
        --benchmark-group-by=param:batch,param:threads

samples/s = batch * ops.
"""
import pytest

from gdfast.bench import MLP_BATCHES, mlp_batches, mlp_pair, torch_mlp_step


@pytest.mark.parametrize("batch", MLP_BATCHES)
def test_gdfast(benchmark, batch, threads):
    (model, opt), _ = mlp_pair()
    data = mlp_batches(batch)
    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(lambda: model.train_step(*next(data), opt))


@pytest.mark.parametrize("batch", MLP_BATCHES)
def test_numpy_reference(benchmark, batch, threads):
    _, (model, opt) = mlp_pair()
    data = mlp_batches(batch)

    def step():
        model.loss_and_grad(*next(data))
        opt.step()

    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(step)


@pytest.mark.parametrize("batch", MLP_BATCHES)
def test_torch(benchmark, batch, threads):
    torch = pytest.importorskip("torch")
    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(torch_mlp_step(torch, mlp_batches(batch)))
