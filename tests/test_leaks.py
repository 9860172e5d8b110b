"""No leaks: resident memory and Python allocations stay flat over many steps.

100k steps of each of three optimizers (arena and list mode, fused
clipping, Lookahead around RMSprop) and
10k MLP training steps, after a warm-up that lets every buffer reach its
final size. tracemalloc sees Python-level allocations (a leaked object per
step shows up as a few MB); the resident set size sees the C side
(malloc in the kernels), where 100k steps leaking even 16 bytes each
would add 1.6 MB.
"""
import os
import tracemalloc

import numpy as np
import pytest

import gdfast

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


def measure(run, warmup, steps):
    """(RSS growth, tracemalloc growth) in bytes over `steps` calls after `warmup`."""
    run(warmup)
    tracemalloc.start()
    try:
        run(warmup)  # tracemalloc's own tables warm up too
        traced0, rss0 = tracemalloc.get_traced_memory()[0], rss()
        run(steps)
        traced1, rss1 = tracemalloc.get_traced_memory()[0], rss()
    finally:
        tracemalloc.stop()
    return rss1 - rss0, traced1 - traced0


RSS_LIMIT = 1 << 20      # 1 MiB
TRACED_LIMIT = 64 << 10  # 64 KiB


def test_100k_optimizer_steps_do_not_leak():
    params = gdfast.Params({"w": (16, 8), "b": 8})
    params.grad[...] = 0.01
    adam = gdfast.Adam(params, lr=1e-4, amsgrad=True, weight_decay=0.01)
    arrays = [np.zeros(100, np.float32), np.zeros((4, 5), np.float32)]
    grads = [np.full(100, 0.01, np.float32), np.full((4, 5), -0.01, np.float32)]
    sgd = gdfast.SGD(arrays, lr=1e-3, momentum=0.9, nesterov=True)
    look = gdfast.Lookahead(gdfast.RMSprop([np.zeros(50, np.float32)], lr=1e-3), k=3)
    g50 = [np.full(50, 0.1, np.float32)]

    def run(n):  # n steps of each of the three
        for i in range(n // 2):
            adam.step()
            adam.step(max_grad_norm=1.0)
            sgd.step(grads)
            sgd.step(grads)
            look.step(g50)
            look.step(g50)
        gdfast.clip_grad_norm(grads, 1.0)


    grew_rss, grew_traced = measure(run, 4_000, 100_000)
    assert adam.state_dict()["step"] == 2 * 4_000 + 100_000
    assert grew_traced < TRACED_LIMIT, f"Python allocations grew {grew_traced} B over 100k steps"
    assert grew_rss < RSS_LIMIT, f"RSS grew {grew_rss} B over 100k steps"


def test_10k_mlp_steps_do_not_leak():
    net = gdfast.MLP((24, 32, 10), activation="tanh", seed=0)
    opt = gdfast.SGD(net.params, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 24)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    targets = np.eye(10, dtype=np.float32)[y]
    batches = [(x[:16], y[:16]), (x[16:48], targets[16:48]), (x, y)]

    def run(n):
        for i in range(n):
            xb, yb = batches[i % 3]
            net.train_step(xb, yb, opt)
            if i % 10 == 0:
                net.forward(x)
                gdfast.matmul(x, x, trans_b=True)

    grew_rss, grew_traced = measure(run, 500, 10_000)
    assert np.all(np.isfinite(net.params.data))
    assert grew_traced < TRACED_LIMIT, f"Python allocations grew {grew_traced} B over 10k steps"
    assert grew_rss < RSS_LIMIT, f"RSS grew {grew_rss} B over 10k MLP steps"


def test_refused_calls_do_not_leak():
    """The error paths (bad input raising in the Cython layer) free what they took."""
    opt = gdfast.Adam([np.zeros(10, np.float32)])
    net = gdfast.MLP((4, 3), seed=0)
    bad_g = [np.zeros(10, np.float64)]
    x = np.zeros((2, 4), np.float32)

    def run(n):
        for _ in range(n // 2):
            try:
                opt.step(bad_g)
            except TypeError:
                pass
            try:
                net.loss_and_grad(x, np.array([0, 7]))
            except ValueError:
                pass

    grew_rss, grew_traced = measure(run, 2_000, 20_000)
    assert grew_traced < TRACED_LIMIT and grew_rss < RSS_LIMIT, (grew_traced, grew_rss)


def test_short_lived_threads_do_not_leak_gemm_buffers():
    """Each thread's GEMM packing buffer (1.2 MB) is freed when the thread exits."""
    import threading

    a = np.ones((700, 700), np.float32)   # big enough for the packed path
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(1)

    def run(n):
        for _ in range(n):
            t = threading.Thread(target=gdfast.matmul, args=(a, a))
            t.start()
            t.join()

    try:
        run(4)
        rss0 = rss()
        run(40)
        grew = rss() - rss0
    finally:
        gdfast.set_num_threads(before)
    assert grew < 40 * 350_000, f"RSS grew {grew / 40 / 1e6:.2f} MB per finished thread"
