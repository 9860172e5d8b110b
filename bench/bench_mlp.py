"""One training step of the 784-256-128-10 MLP (ReLU, softmax cross-entropy,
Adam): gdfast.MLP.train_step vs the NumPy reference MLP + reference Adam,
and torch nn.Sequential + torch.optim.Adam(fused) when torch is installed.

    python -m pytest bench/bench_mlp.py --benchmark-only --benchmark-columns=median,ops \
        --benchmark-group-by=param:batch,param:threads

samples/s = batch * ops.
"""
import pytest

from gdfast.bench import MLP_BATCHES, MLP_SIZES, mlp_batches, mlp_pair


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
    layers = []
    for a, b in zip(MLP_SIZES, MLP_SIZES[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = mlp_batches(batch)

    def step():
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()

    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(step)
