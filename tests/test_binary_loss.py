"""loss="binary_cross_entropy": a logistic sigmoid per output (multi-label
targets, or one output for two classes), the C kernel against its NumPy twin."""
import numpy as np
import pytest

import gdfast
from gdfast.reference.mlp import MLP as RefMLP
from test_mlp import assert_matches_reference


def test_reference_matches_finite_differences():
    rng = np.random.default_rng(0)
    ref = RefMLP([4, 5, 3], "tanh", "binary_cross_entropy")
    for p in ref.params.values():
        p[...] = rng.standard_normal(p.shape)
    x = rng.standard_normal((6, 4))
    t = (rng.random((6, 3)) < 0.5).astype(np.float64)
    _, grads = ref.loss_and_grad(x, t)
    h = 1e-6
    for name, p in ref.params.items():
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up, _ = ref.loss_and_grad(x, t)
            p[idx] = old - h
            down, _ = ref.loss_and_grad(x, t)
            p[idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / (2 * h), abs=1e-6)


@pytest.mark.parametrize("sizes", [[6, 8, 1], [6, 8, 5, 4]])
def test_kernel_matches_reference(sizes):
    rng = np.random.default_rng(1)
    net = gdfast.MLP(sizes, activation="relu", loss="binary_cross_entropy", seed=2)
    x = rng.standard_normal((37, sizes[0])).astype(np.float32)
    t = (rng.random((37, sizes[-1])) < 0.3).astype(np.float32)
    assert_matches_reference(net, x, t)
    out = net.forward(x)
    assert ((out > 0) & (out < 1)).all()  # independent probabilities, not a softmax
    assert not np.allclose(out.sum(axis=1), 1.0)


def test_loss_is_stable_for_large_logits():
    net = gdfast.MLP([1, 1], loss="binary_cross_entropy")
    net.params["w1"][...] = 100.0
    x = np.ones((2, 1), np.float32)
    t = np.array([[1.0], [0.0]], np.float32)
    # softplus(-100) ~ 0 for the right one, softplus(100) = 100 for the wrong one
    assert net.loss_and_grad(x, t) == pytest.approx(50.0)
    np.testing.assert_allclose(net.params.grad_of("w1"), [[0.5]], rtol=1e-6)


def test_training_learns_independent_labels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 4)).astype(np.float32)
    t = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0], axis=1).astype(np.float32)
    net = gdfast.MLP([4, 16, 2], activation="relu", loss="binary_cross_entropy", seed=0)
    opt = gdfast.Adam(net.params, lr=1e-2)
    first = net.train_step(x, t, opt)
    for _ in range(300):
        last = net.train_step(x, t, opt)
    assert last < first / 5
    assert ((net.forward(x) > 0.5) == (t > 0.5)).mean() > 0.95
    loss, _ = net.evaluate(x, t)
    assert loss == pytest.approx(net.loss_and_grad(x, t), rel=1e-4)
