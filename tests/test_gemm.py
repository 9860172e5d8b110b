import numpy as np
import pytest

import gdfast

SIMD = gdfast.build_info()["simd_available"]


@pytest.fixture
def threads():
    before = gdfast.get_num_threads()
    yield gdfast.set_num_threads
    gdfast.set_num_threads(before)


def operands(rng, m, n, k, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b


def expected(a, b, trans_a, trans_b, alpha=1.0, beta=0.0, c=None):
    r = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    r *= alpha
    if beta:
        r += beta * c
    return r


def check(got, want, k):
    # float32 accumulation over k terms of unit-variance products
    tol = 1e-5 * (np.sqrt(max(k, 1)) * 8 + 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=tol)


SHAPES = [(1, 1, 1), (2, 3, 5), (7, 13, 29), (31, 37, 41), (6, 16, 1), (5, 17, 300),
          (97, 1, 53), (1, 101, 89), (64, 256, 784), (784, 256, 64), (130, 70, 700),
          (3, 2, 1500), (500, 4, 7), (257, 263, 269),
          # AVX-512 tiles span two 16-column panels: partial second panels
          (9, 45, 33), (40, 60, 500), (13, 20, 77),
          # few flops but B or C past L2's 256K floats: packed (a 1024-wide layer)
          (20, 1100, 240), (600, 500, 8), (13, 1024, 257),
          # a packed A block that fills its buffer (144 rows x 320): its last
          # step must not spill into the packed B after it
          (144, 832, 320)]


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_numpy_for_every_transpose(simd, m, n, k, trans_a, trans_b):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    check(gdfast.matmul(a, b, trans_a, trans_b), expected(a, b, trans_a, trans_b), k)


@pytest.mark.parametrize("m,n,k", [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 0, 0)])
def test_zero_sized(simd, m, n, k):
    rng = np.random.default_rng(0)
    a, b = operands(rng, m, n, k, False, False)
    c = gdfast.matmul(a, b)
    assert c.shape == (m, n)
    np.testing.assert_array_equal(c, np.zeros((m, n), np.float32))
    out = np.full((m, n), np.nan, np.float32)  # beta = 0 never reads out
    gdfast.matmul(a, b, out=out)
    np.testing.assert_array_equal(out, 0.0)
    out[...] = 2.0
    gdfast.matmul(a, b, out=out, beta=0.5)
    np.testing.assert_array_equal(out, 1.0)


@pytest.mark.parametrize("alpha,beta", [(2.0, 0.0), (1.0, 1.0), (-0.5, 0.25), (0.0, 3.0)])
@pytest.mark.parametrize("m,n,k", [(7, 13, 29), (200, 150, 600), (1, 13, 29), (2, 19, 9), (9, 21, 1)])
@pytest.mark.parametrize("trans_b", [False, True])
def test_alpha_beta(simd, alpha, beta, m, n, k, trans_b):
    rng = np.random.default_rng(1)
    a, b = operands(rng, m, n, k, False, trans_b)
    c = rng.standard_normal((m, n)).astype(np.float32)
    want = expected(a, b, False, trans_b, alpha, beta, c.astype(np.float64))
    got = gdfast.matmul(a, b, trans_b=trans_b, out=c, alpha=alpha, beta=beta)
    assert got is c
    check(c, want, k)


def test_beta_zero_ignores_nan_in_out(simd):
    rng = np.random.default_rng(2)
    a, b = operands(rng, 300, 300, 300, False, False)
    out = np.full((300, 300), np.nan, np.float32)
    gdfast.matmul(a, b, out=out)
    check(out, expected(a, b, False, False), 300)


@pytest.mark.parametrize("m,n,k,ta,tb", [(64, 256, 784, False, False), (784, 256, 64, True, False),
                                         (64, 784, 256, False, True), (301, 299, 530, False, False),
                                         (600, 40, 300, True, True), (128, 1024, 300, False, False),
                                         (1024, 300, 128, True, False)])
def test_one_and_two_threads_agree_bitwise(simd, threads, m, n, k, ta, tb):
    rng = np.random.default_rng(3)
    a, b = operands(rng, m, n, k, ta, tb)
    threads(1)
    one = gdfast.matmul(a, b, ta, tb)
    threads(2)
    two = gdfast.matmul(a, b, ta, tb)
    np.testing.assert_array_equal(one, two)


def test_simd_paths_agree_within_rounding():
    rng = np.random.default_rng(4)
    a, b = operands(rng, 50, 70, 300, False, False)
    before = gdfast.build_info()["simd"]
    try:
        results = []
        for name in SIMD:
            gdfast.set_simd(name)
            results.append(gdfast.matmul(a, b))
    finally:
        gdfast.set_simd(before)
    for r in results[1:]:
        check(r, results[0], 300)


def in_order_chain(a, b, fused):
    """C[i, j] as a running sum over p = 0, 1, ... k-1 from 0, rounded to
    float32 at each step: of the exact product (float32 products are exact in
    float64; the float64 sum rounded to float32 is the FMA's result unless it
    rounds twice, which no element of these seeds does) or of the product
    rounded first (multiply, then add)."""
    c = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for p in range(a.shape[1]):
        if fused:
            c = (c.astype(np.float64) + np.outer(a[:, p].astype(np.float64), b[p])).astype(np.float32)
        else:
            c = c + np.outer(a[:, p], b[p])
    return c


# Up to GD_KC (320) steps of k, one block: packed, strided, masked and
# copying tiles, the 1-2 row tile and a transposed A. Not 1-2 rows against a
# transposed B: those are dot products, summed in 8 lanes.
@pytest.mark.parametrize("m,n,k,ta,tb", [
    (1, 256, 200, False, False), (2, 45, 300, False, False), (2, 200, 300, True, False),
    (6, 16, 50, False, False), (7, 13, 29, False, False), (31, 37, 41, False, True),
    (64, 256, 300, False, False), (300, 256, 64, True, False), (64, 256, 128, False, True),
    (13, 20, 77, True, True), (700, 100, 300, False, False), (20, 1100, 240, False, False),
    (144, 832, 320, False, False)])
def test_each_element_is_one_sum_over_k_in_order(simd, m, n, k, ta, tb):
    # The SIMD tiles chain FMAs, the portable one multiplies then adds; a
    # tile that unrolled or split its k loop into several sums would show here.
    rng = np.random.default_rng(m + n + k)
    a, b = operands(rng, m, n, k, ta, tb)
    want = in_order_chain(a.T if ta else a, b.T if tb else b, fused=simd != "scalar")
    np.testing.assert_array_equal(gdfast.matmul(a, b, ta, tb), want)


@pytest.mark.skipif("avx512" not in SIMD, reason="this CPU has no AVX-512")
@pytest.mark.parametrize("m,n,k,ta,tb", [
    (64, 256, 784, False, False), (784, 256, 64, True, False), (64, 256, 128, False, True),
    (1, 256, 784, False, False), (2, 45, 300, False, False), (2, 200, 300, True, False),
    (13, 20, 77, True, True),
    (40, 60, 500, False, False), (31, 37, 41, False, True), (700, 100, 3000, False, False)])
@pytest.mark.parametrize("threads_n", [1, 2])
def test_avx512_gives_the_avx2_bits(threads, m, n, k, ta, tb, threads_n):
    # Both run every element of C as the same FMA chain with the same
    # write-back, so wider registers change the speed, not the result; the
    # last shape is large enough to pack A and B.
    rng = np.random.default_rng(11)
    a, b = operands(rng, m, n, k, ta, tb)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    threads(threads_n)
    before = gdfast.build_info()["simd"]
    try:
        out = {}
        for name in ("avx2", "avx512"):
            gdfast.set_simd(name)
            out[name] = (gdfast.matmul(a, b, ta, tb),
                         gdfast.matmul(a, b, ta, tb, out=c0.copy(), alpha=0.5, beta=-2.0))
    finally:
        gdfast.set_simd(before)
    for x, y in zip(out["avx2"], out["avx512"]):
        np.testing.assert_array_equal(x, y)


def test_bad_input_is_refused():
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    with pytest.raises(TypeError, match="a must have dtype float32"):
        gdfast.matmul(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="b must be a numpy.ndarray"):
        gdfast.matmul(a, [[1.0]])
    with pytest.raises(ValueError, match="b must be C-contiguous"):
        gdfast.matmul(a, np.ones((5, 4), np.float32).T)
    with pytest.raises(ValueError, match="a must be 2-D"):
        gdfast.matmul(np.ones(4, np.float32), b)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        gdfast.matmul(a, b, trans_a=True)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 5\)"):
        gdfast.matmul(a, b, out=np.empty((5, 3), np.float32))
    with pytest.raises(ValueError, match="out must not share memory"):
        sq = np.ones((4, 4), np.float32)
        gdfast.matmul(sq, sq, out=sq)
    with pytest.raises(ValueError, match="beta=.* needs an `out`"):
        gdfast.matmul(a, b, beta=1.0)
    ro = np.empty((3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        gdfast.matmul(a, b, out=ro)


def test_matmul_releases_the_gil(threads):
    import threading
    import time
    threads(1)
    a = np.ones((1500, 1500), np.float32)
    started = threading.Event()

    def work():
        started.set()
        gdfast.matmul(a, a)  # ~0.1 s: the main thread must run meanwhile

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    time.sleep(0.005)
    running = t.is_alive()  # with the GIL held, this line would wait for the end
    t.join()
    assert running


def test_concurrent_calls_from_python_threads():
    # each call packs into a buffer of the shared pool; concurrent calls must not share one
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(5)
    pairs = [operands(rng, 130 + i, 140, 700, False, i % 2 == 1) for i in range(8)]
    want = [expected(a, b, False, i % 2 == 1) for i, (a, b) in enumerate(pairs)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda i: gdfast.matmul(*pairs[i], trans_b=i % 2 == 1),
                            range(8)))
    for g, w in zip(got, want):
        check(g, w, 700)
