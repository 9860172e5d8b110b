"""The GEMM's paths for few rows (batch 1 and 2 of an MLP): the wide tile
(1x64, 2x32) against an unpacked B, and the dot products against a
transposed B. Shapes are chosen to hit full wide tiles, leftover columns
(n not a multiple of 8/16/64), k = 0/1, and the K blocks (k > 320)."""
import numpy as np
import pytest

import gdfast
from gdfast.reference.mlp import MLP as RefMLP

from test_gemm import check, expected, operands


@pytest.fixture
def threads():
    before = gdfast.get_num_threads()
    yield gdfast.set_num_threads
    gdfast.set_num_threads(before)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("n,k", [(256, 784), (64, 5), (130, 1), (200, 0), (71, 333), (10, 128)])
def test_a_row_alone_equals_the_row_in_a_batch(simd, n, k, trans_a):
    # m = 1 and 2 take the wide tile, m = 7..9 split into tiles of 3..5 rows,
    # m = 32 and 40 pack B: every row must come out with the same bits.
    rng = np.random.default_rng(n + k)
    a, b = operands(rng, 40, n, k, trans_a, False)
    rows = (lambda lo, hi: np.ascontiguousarray(a[:, lo:hi])) if trans_a else (lambda lo, hi: a[lo:hi])
    batch = gdfast.matmul(a, b, trans_a)
    for lo, hi in [(0, 1), (0, 2), (5, 7), (0, 7), (3, 4), (1, 9), (0, 8), (7, 39)]:
        np.testing.assert_array_equal(gdfast.matmul(rows(lo, hi), b, trans_a), batch[lo:hi])
    check(batch[:2], expected(rows(0, 2), b, trans_a, False), k)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (-0.5, 0.25), (2.0, 0.0)])
@pytest.mark.parametrize("m", [1, 2])
def test_few_rows_alpha_beta_match_the_batch(simd, m, alpha, beta):
    rng = np.random.default_rng(7)
    a, b = operands(rng, 9, 150, 700, False, False)
    c0 = rng.standard_normal((9, 150)).astype(np.float32)
    batch = gdfast.matmul(a, b, out=c0.copy(), alpha=alpha, beta=beta)
    few = gdfast.matmul(a[:m], b, out=c0[:m].copy(), alpha=alpha, beta=beta)
    np.testing.assert_array_equal(few, batch[:m])
    check(few, expected(a[:m], b, False, False, alpha, beta, c0[:m].astype(np.float64)), 700)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("m,n,k", [(1, 256, 128), (2, 13, 7), (1, 9, 17), (2, 1, 1),
                                   (1, 5, 0), (1, 300, 801)])
def test_dot_products_against_transposed_b(simd, m, n, k, trans_a):
    rng = np.random.default_rng(m * 7 + n + k)
    a, b = operands(rng, m, n, k, trans_a, True)
    check(gdfast.matmul(a, b, trans_a, True), expected(a, b, trans_a, True), k)
    c = rng.standard_normal((m, n)).astype(np.float32)
    want = expected(a, b, trans_a, True, -1.5, 0.5, c.astype(np.float64))
    check(gdfast.matmul(a, b, trans_a, True, out=c, alpha=-1.5, beta=0.5), want, k)


@pytest.mark.parametrize("m,n,k,tb", [(1, 1024, 300, False), (2, 700, 333, False),
                                      (1, 1000, 300, True), (2, 517, 401, True)])
def test_few_rows_one_and_two_threads_agree_bitwise(simd, threads, m, n, k, tb):
    rng = np.random.default_rng(8)
    a, b = operands(rng, m, n, k, False, tb)
    threads(1)
    one = gdfast.matmul(a, b, False, tb)
    threads(2)
    two = gdfast.matmul(a, b, False, tb)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_mlp_epilogues_on_the_few_row_paths(simd, act):
    # layer widths >= 64 so batch 1 and 2 reach the wide tile (bias + activation
    # in its write-back) and the dot products (act' and bias-gradient sums)
    rng = np.random.default_rng(9)
    net = gdfast.MLP([100, 130, 70, 9], activation=act, seed=3)
    x = rng.standard_normal((7, 100)).astype(np.float32)
    y = rng.integers(0, 9, 7)
    batch = net.forward(x)
    params = {name: net.params[name] for name in net.params}
    ref = RefMLP(net.sizes, act, "cross_entropy", net.output_activation, params, np.float64)
    for n in (1, 2):
        np.testing.assert_array_equal(net.forward(x[:n]), batch[:n])
        loss_c = net.loss_and_grad(x[:n], y[:n])
        loss_r, grads = ref.loss_and_grad(x[:n], y[:n])
        assert loss_c == pytest.approx(loss_r, rel=1e-5)
        for name in net.params:
            scale = np.abs(grads[name]).max() + 1e-12
            np.testing.assert_allclose(net.params.grad_of(name) / scale, grads[name] / scale,
                                       atol=1e-5, err_msg=name)
