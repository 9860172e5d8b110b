"""End-to-end training throughput: one whole epoch through gdfast.train.Trainer
(shuffling, batch gathering, schedule, forward/backward, optimizer), gdfast's
C kernels vs the NumPy reference trainer (gdfast.reference.train), same loop.

    GDFAST_DATA=../shared/data python -m pytest bench/bench_train.py --benchmark-columns=median,ops

Samples/s = training examples per epoch / median epoch time, recorded in
extra_info. Without GDFAST_DATA a random set of MNIST's shape stands in
(the speed does not depend on the pixel values).
"""
import os

import numpy as np
import pytest

import gdfast
from gdfast import schedules
from gdfast.reference.train import ReferenceMLP, ReferenceOptimizer
from gdfast.train import Trainer

SIZES = [784, 256, 128, 10]


def _data():
    if os.environ.get("GDFAST_DATA"):
        from gdfast.datasets import load_mnist
        d = load_mnist()
        return d.x_train, d.y_train
    rng = np.random.default_rng(0)
    return rng.random((17_196, 784), dtype=np.float32), rng.integers(0, 10, 17_196)


@pytest.fixture(scope="module")
def data():
    return _data()


def _trainer(kind, x, y, batch_size, shift):
    model = gdfast.MLP(SIZES, seed=0)
    if kind == "reference":
        model = ReferenceMLP(SIZES, init_from=model.params)
        opt = ReferenceOptimizer("Adam", model.params, lr=1e-3)
    else:
        opt = gdfast.Adam(model.params, lr=1e-3)
    steps = -(-len(x) // batch_size)
    sched = schedules.Warmup(schedules.Cosine(1e-3, 100 * steps), steps)
    return Trainer(model, opt, (x, y), batch_size=batch_size, schedule=sched, shift=shift,
                   track_grad_norm=False, acc_every=0)


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("batch_size", [32, 128])
@pytest.mark.parametrize("kind", ["gdfast", "reference"])
def test_epoch(benchmark, data, kind, batch_size, shift):
    x, y = data
    trainer = _trainer(kind, x, y, batch_size, shift)
    benchmark.pedantic(trainer._run_epoch, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(samples_per_s=len(x) / benchmark.stats.stats.median,
                                threads=gdfast.get_num_threads(), samples=len(x))
