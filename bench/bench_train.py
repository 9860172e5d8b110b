"""End-to-end training throughput: one whole epoch through gdfast.train.Trainer
(shuffling, batch gathering, schedule, forward/backward, optimizer), gdfast's
kernels vs the NumPy reference trainer, the same loop around both.

    GDFAST_DATA=../shared/data python -m pytest bench/bench_train.py --benchmark-only

Without the data a random set of MNIST's shape stands in (speed does not
depend on the pixel values).
"""
import numpy as np
import pytest

from gdfast.bench import mnist_trainers
from gdfast.datasets import DatasetError, load_mnist


@pytest.fixture(scope="module")
def data():
    try:
        d = load_mnist(progress=False)
        return d.x_train, d.y_train
    except DatasetError:
        rng = np.random.default_rng(0)
        return rng.random((17_196, 784), dtype=np.float32), rng.integers(0, 10, 17_196)


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("batch_size", [32, 128])
@pytest.mark.parametrize("kind", ["gdfast", "reference"])
def test_epoch(benchmark, data, kind, batch_size, shift, threads):
    x, y = data
    fast, ref = mnist_trainers(x, y, batch_size, shift)
    trainer = fast if kind == "gdfast" else ref
    benchmark.pedantic(trainer._run_epoch, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(samples=len(x), threads=threads)
