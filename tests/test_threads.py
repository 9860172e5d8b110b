"""Python threads and the GIL-free kernels.

Different optimizers and MLPs stepped from several threads at once give the
same bits as running them one after another. One optimizer (or MLP) used by
two threads at once is refused with a RuntimeError in one of them, never
corrupted: afterwards its state is what the successful calls alone produce.
"""
import threading
import time

import numpy as np
import pytest

import gdfast

THREADS = [1, 2]  # OpenMP threads inside each kernel call


@pytest.fixture
def omp_threads():
    before = gdfast.get_num_threads()
    yield gdfast.set_num_threads
    gdfast.set_num_threads(before)


def run_concurrently(jobs):
    """Start all jobs together; re-raise the first exception of any."""
    barrier = threading.Barrier(len(jobs))
    errors = []

    def wrap(job):
        try:
            barrier.wait()
            job()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


OPTIMIZERS = [
    (gdfast.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    (gdfast.Adam, {"lr": 1e-3, "amsgrad": True}),
    (gdfast.RMSprop, {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    (gdfast.Adagrad, {"lr": 0.1, "lr_decay": 0.01}),
    (gdfast.AdamW, {"lr": 1e-3, "weight_decay": 0.1}),
]


def optimizer_job(index, n=40_000, steps=20):
    """A job stepping its own optimizer over its own arena; returns (job, result getter)."""
    cls, kw = OPTIMIZERS[index]
    rng = np.random.default_rng(index)
    params = gdfast.Params({"w": (n // 3, 2), "b": n - 2 * (n // 3)})
    params.data[...] = rng.standard_normal(params.size)
    grads = rng.standard_normal((steps, params.size)).astype(np.float32)
    opt = cls(params, **kw)

    def job():
        for t in range(steps):
            params.grad[...] = grads[t]
            opt.step(max_grad_norm=50.0 if t % 3 == 0 else None)

    def result():
        sd = opt.state_dict()
        return [params.data.copy()] + [b for s in sd["state"].values() for b in s.values()]

    return job, result


def mlp_job(index, steps=15):
    sizes = [(20, 48, 10), (30, 64, 32, 5), (12, 100, 3)][index % 3]
    act = ["relu", "tanh", "sigmoid"][index % 3]
    net = gdfast.MLP(sizes, activation=act, seed=index)
    opt = gdfast.Adam(net.params, lr=1e-3)
    rng = np.random.default_rng(100 + index)
    xs = rng.standard_normal((steps, 37 + 50 * index, sizes[0])).astype(np.float32)
    ys = rng.integers(0, sizes[-1], (steps, xs.shape[1]))
    losses = []

    def job():
        for t in range(steps):
            losses.append(net.train_step(xs[t], ys[t], opt))
        losses.append(net.forward(xs[0]))

    def result():
        return [net.params.data.copy(), np.array(losses[:-1]), losses[-1]]

    return job, result


def matmul_job(index):
    rng = np.random.default_rng(200 + index)
    a = rng.standard_normal((150 + index, 200)).astype(np.float32)
    b = rng.standard_normal((200, 90)).astype(np.float32)
    out = np.empty((a.shape[0], 90), np.float32)

    def job():
        for _ in range(10):
            gdfast.matmul(a, b, out=out)

    return job, lambda: [out.copy()]


@pytest.mark.parametrize("threads", THREADS)
def test_concurrent_different_objects_match_sequential_bitwise(threads, omp_threads):
    omp_threads(threads)
    makers = [lambda i=i: optimizer_job(i) for i in range(len(OPTIMIZERS))] \
        + [lambda i=i: mlp_job(i) for i in range(3)] + [lambda: matmul_job(0)]
    sequential = []
    for make in makers:
        job, result = make()
        job()
        sequential.append(result())
    pairs = [make() for make in makers]
    run_concurrently([job for job, _ in pairs])
    for k, ((_, result), want) in enumerate(zip(pairs, sequential)):
        for got, exp in zip(result(), want):
            np.testing.assert_array_equal(got, exp, err_msg=f"job {k}")


def hammer(call, seconds=10.0, min_conflicts=3):
    """Call from two threads until a few calls were refused; returns (successes, refusals)."""
    ok, refused = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker():
        while time.monotonic() < deadline:
            with lock:
                if refused[0] >= min_conflicts:
                    return
            try:
                call()
            except RuntimeError as e:
                assert "another thread" in str(e)
                with lock:
                    refused[0] += 1
            else:
                with lock:
                    ok[0] += 1

    run_concurrently([worker, worker])
    return ok[0], refused[0]


@pytest.mark.parametrize("cls,kw", OPTIMIZERS[:3], ids=lambda v: getattr(v, "__name__", ""))
def test_same_optimizer_from_two_threads_is_refused_not_corrupted(cls, kw, omp_threads):
    omp_threads(2)
    n = 1_000_000
    params = gdfast.Params({"w": n})
    params.data[...] = np.linspace(-1, 1, n, dtype=np.float32)
    params.grad[...] = np.cos(np.arange(n, dtype=np.float32))  # the same every step
    opt = cls(params, **kw)
    ok, refused = hammer(opt.step)
    assert refused >= 1, "the two threads never overlapped; the test proves nothing"
    assert opt.state_dict()["step"] == ok
    # the same number of steps, one thread: the same bits
    twin = gdfast.Params({"w": n})
    twin.data[...] = np.linspace(-1, 1, n, dtype=np.float32)
    twin.grad[...] = params.grad
    twin_opt = cls(twin, **kw)
    for _ in range(ok):
        twin_opt.step()
    np.testing.assert_array_equal(params.data, twin.data)
    for key, bufs in twin_opt.state_dict()["state"].items():
        for name, b in bufs.items():
            np.testing.assert_array_equal(opt.state_dict()["state"][key][name], b)


def test_same_list_mode_optimizer_from_two_threads(omp_threads):
    """List mode rebinds the gradient pointers each step: the race that mattered most."""
    omp_threads(2)
    p = np.zeros(800_000, np.float32)
    g1 = np.full_like(p, 1.0)
    g2 = np.full_like(p, 1.0)
    opt = gdfast.SGD([p], lr=0.5)
    calls = iter(range(10**9))

    def step():
        opt.step([g1 if next(calls) % 2 else g2])

    ok, refused = hammer(step)
    assert refused >= 1
    assert np.all(p == np.float32(-0.5 * ok)), "lost or torn updates"


def test_same_lookahead_from_two_threads(omp_threads):
    omp_threads(2)
    params = gdfast.Params({"w": 600_000})
    params.grad[...] = 0.25
    opt = gdfast.Lookahead(gdfast.Adam(params, lr=0.01), k=2, alpha=0.5)
    ok, refused = hammer(opt.step)
    assert refused >= 1
    twin = gdfast.Params({"w": 600_000})
    twin.grad[...] = 0.25
    twin_opt = gdfast.Lookahead(gdfast.Adam(twin, lr=0.01), k=2, alpha=0.5)
    for _ in range(ok):
        twin_opt.step()
    np.testing.assert_array_equal(params.data, twin.data)


def test_same_mlp_from_two_threads_is_refused_not_corrupted(omp_threads):
    """Different batch sizes: the bigger batch would regrow (free) the work buffers."""
    omp_threads(2)
    net = gdfast.MLP((64, 256, 10), seed=3)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 10, n))
               for n in (16, 3000, 600, 4000)]
    calls = iter(range(10**9))

    def call():
        x, y = batches[next(calls) % len(batches)]
        if next(calls) % 3 == 0:
            net.forward(x)
        else:
            net.loss_and_grad(x, y)

    ok, refused = hammer(call)
    assert refused >= 1
    # nothing was corrupted: the same answers as a fresh network
    fresh = gdfast.MLP((64, 256, 10), seed=3)
    for x, y in batches:
        assert net.loss_and_grad(x, y) == fresh.loss_and_grad(x, y)
        np.testing.assert_array_equal(net.params.grad, fresh.params.grad)
        np.testing.assert_array_equal(net.forward(x), fresh.forward(x))


def test_begin_end_step_hold_the_optimizer():
    params = gdfast.Params({"w": 10})
    opt = gdfast.SGD(params, lr=0.1)
    plan = opt._begin_step(params)
    with pytest.raises(RuntimeError, match="already stepping in another thread"):
        opt.step()
    with pytest.raises(RuntimeError, match="already stepping"):
        opt._begin_step(params)
    plan.execute()
    opt._end_step()
    opt.step()
    assert opt.state_dict()["step"] == 2
    # a refused _begin_step (bad hyperparameter) does not leave the optimizer held
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt._begin_step(params)
    opt.param_groups[0]["lr"] = 0.1
    opt.step()
    assert opt.state_dict()["step"] == 3


def test_same_fused_train_step_from_two_threads(omp_threads):
    """MLP.train_step (forward, backward and the update in one GIL-free call)
    on one MLP and optimizer from two threads: refused, never interleaved."""
    omp_threads(2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 64)).astype(np.float32)
    y = rng.integers(0, 10, 2000)

    def make():
        net = gdfast.MLP((64, 256, 10), seed=4)
        return net, gdfast.Adam(net.params, lr=1e-3)

    net, opt = make()
    ok, refused = hammer(lambda: net.train_step(x, y, opt))  # the same batch every time
    assert refused >= 1
    assert opt.state_dict()["step"] == ok
    twin, twin_opt = make()
    for _ in range(ok):
        twin.train_step(x, y, twin_opt)
    np.testing.assert_array_equal(net.params.data, twin.params.data)
