"""Python threads and the GIL-free kernels.

Different optimizers and MLPs stepped from several threads at once give the
same bits as running them one after another. One optimizer (or MLP) used by
two threads at once is refused with a RuntimeError in one of them, never
corrupted: afterwards its state is what the successful calls alone produce.
Kernels whose chunks any thread of the team may take, and whose team the guard
shrinks on busy cores, still give the same bits on any team; the guard's
rules are checked on replayed histories (no timing here).
"""
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import gdfast
from conftest import child_python
from gdfast import _kernels

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


# The team guard (src/threads.c): passes as (time, seconds on the team, seconds
# the caller alone would have taken), replayed through a fresh guard; it
# answers the team size allowed at each pass.
MIN_SOLO, MAX_SOLO = 0.01, 2.0


def test_guard_keeps_a_team_that_saves_time():
    passes = [(i * 1e-3, 2e-4, 4e-4) for i in range(1000)]
    assert _kernels._guard_replay(passes) == [2] * 1000


def test_guard_runs_alone_after_a_losing_pass_then_tries_the_team_again():
    passes = [(0.0, 1e-4, 2e-4), (0.001, 5e-3, 1e-4),       # the team lost 4.9 ms
              (0.002, 1e-4, 1e-4), (0.0105, 1e-4, 1e-4),   # inside the solo period
              (0.0115, 1e-4, 2e-4)]                        # after it: the team again
    assert _kernels._guard_replay(passes) == [2, 2, 1, 1, 2]


def test_guard_backs_off_four_times_as_long_per_loss_up_to_a_limit():
    """A team losing at every try is tried again after 10, 40, 160 ... ms, at
    most 2 s apart: a machine busy for good pays one losing pass in 2 s."""
    passes, now, solo = [], 0.0, MIN_SOLO
    periods = []
    for _ in range(8):
        passes.append((now, 5e-3, 1e-4))
        periods.append(solo)
        now += solo + 1e-6
        solo = min(4 * solo, MAX_SOLO)
    sizes = _kernels._guard_replay(passes)
    assert sizes == [2] * 8   # every try is made, each right after the solo period
    # and between tries the passes run alone
    between = [(t + p * 0.99, 1e-4, 1e-4) for (t, _, _), p in zip(passes, periods)]
    merged = sorted(passes + between)
    assert _kernels._guard_replay(merged) == [2, 1] * 8
    assert periods[-1] == MAX_SOLO


def test_guard_forgets_old_losses():
    """A loss long after the team came back (> 0.1 s of it doing well) is a
    one-off: one short solo period, not the last, longest one."""
    passes = [(0.0, 5e-3, 1e-4), (0.011, 5e-3, 1e-4), (0.052, 5e-3, 1e-4),   # 10, 40, 160 ms
              (10.0, 5e-3, 1e-4), (10.0 + MIN_SOLO + 1e-4, 1e-4, 2e-4)]
    assert _kernels._guard_replay(passes) == [2, 2, 2, 2, 2]


def test_guard_forgives_waking_the_team_and_stays_with_it_on_a_quiet_vm():
    """What a quiet 2-vCPU VM showed: a ~1 ms hiccup every 0.5 s, and the
    first pass after each solo period losing ~1 ms to wake the sleeping
    worker. Each hiccup costs one short solo period; it never escalates into
    running alone for good."""
    passes, now, tries = [], 0.0, []
    for hiccup in range(10):
        for _ in range(2000):                        # 0.5 s of 250 us passes
            passes.append((now, 2.2e-4, 4e-4))
            now += 2.5e-4
        passes.append((now, 1.1e-3, 1.3e-4))         # the host took the vCPU
        now, solo_end = now + 1e-4, now + MIN_SOLO
        while now < solo_end:                        # solo: recorded by nobody
            passes.append((now, 4e-4, 4e-4))
            now += 4e-4
        tries.append(len(passes))
        passes.append((now + 1e-3, 1.0e-3, 1.3e-4))  # the try: waking costs 0.9 ms
        now += 1.25e-3
    sizes = _kernels._guard_replay(passes)
    solo = sizes.count(1)
    assert solo == 10 * math.ceil(MIN_SOLO / 4e-4)   # exactly the short periods
    assert [sizes[i] for i in tries] == [2] * 10


def test_guard_counts_a_big_loss_on_waking_and_one_soon_after_the_try():
    # a try losing more than waking costs (2 ms) is a busy machine
    passes = [(0.0, 5e-3, 1e-4), (0.0101 + 1e-3, 4e-3, 1e-4), (0.0112, 1e-4, 1e-4)]
    assert _kernels._guard_replay(passes) == [2, 2, 1]
    # a forgiven try, then a loss within 0.1 s: the wait grows to 40 ms
    passes = [(0.0, 5e-3, 1e-4), (0.0112, 1e-3, 1e-4), (0.05, 5e-3, 1e-4),
              (0.05 + 0.039, 1e-4, 1e-4), (0.05 + 0.041, 1e-4, 2e-4)]
    assert _kernels._guard_replay(passes) == [2, 2, 2, 1, 2]
    # the same loss 0.2 s after the team came back: 10 ms again
    passes = [(0.0, 5e-3, 1e-4), (0.0112, 1e-3, 1e-4), (0.25, 5e-3, 1e-4),
              (0.25 + 0.011, 1e-4, 2e-4)]
    assert _kernels._guard_replay(passes) == [2, 2, 2, 2]


def test_guard_counts_waking_a_team_the_program_left_idle():
    """NumPy's calls between ours on a busy machine: every burst of 30 of our
    40 us passes starts with the worker asleep, and waking it loses 1.5 ms
    (under the 2 ms forgiven on a try). Only the team's tries after a solo
    period are forgiven, so the second burst's loss sends it alone."""
    passes, now = [], 1.0
    for burst in range(4):
        now += 2e-3 + 1.54e-3                        # 2 ms of NumPy, then the pass
        passes.append((now, 1.54e-3, 4e-5))
        for _ in range(29):
            now += 4e-5
            passes.append((now, 4e-5, 4e-5))
    sizes = _kernels._guard_replay(passes)
    assert sizes[:31] == [2] * 31 and sizes[31] == 1   # the first pass of all is a try


def test_guard_adds_up_small_losses_and_banks_little():
    first = [(0.0, 1e-4, 1e-4)]                              # waking the team: forgiven
    small = [((i + 1) * 1e-3, 2e-5, 1e-5) for i in range(20)]   # each loses 10 us
    sizes = _kernels._guard_replay(first + small + [(0.0215, 1e-4, 1e-4)])
    assert sizes[:12] == [2] * 12 and sizes[12] == 1     # 110 us lost in all: alone
    # a long good run banks at most 100 us: one pass losing 250 us still counts
    good = [(i * 1e-3, 1e-3, 2e-3) for i in range(100)]
    sizes = _kernels._guard_replay(good + [(0.1, 3.5e-4, 1e-4), (0.1005, 1e-4, 1e-4)])
    assert sizes[-1] == 1


@pytest.fixture
def busy_core():
    """A CPU-bound process beside the test, so the kernels' teams meet a busy
    core: chunks land on threads unevenly and the guard shrinks teams."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def run_everything(threads):
    """Results of each multi-threaded path, as arrays, on `threads` threads."""
    gdfast.set_num_threads(threads)
    rng = np.random.default_rng(7)
    out = []
    # optimizer steps with clipping (the norm's blocks) and without
    params = gdfast.Params({"w": (700, 300), "b": 3001})
    params.data[...] = rng.standard_normal(params.size)
    opt = gdfast.Adam(params, lr=1e-2)
    for t in range(6):
        params.grad[...] = rng.standard_normal(params.size)
        out.append(np.float64(opt.step(max_grad_norm=10.0 if t % 2 else None) or 0.0))
    out.append(params.data.copy())
    # GEMM: column and row splits, packed and unpacked, transposes
    for m, n, k, ta, tb in [(64, 256, 128, False, False), (300, 40, 200, False, True),
                            (512, 700, 300, True, False), (33, 1000, 17, False, False)]:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        out.append(gdfast.matmul(a, b, trans_a=ta, trans_b=tb))
    # MLP steps: batched (GEMMs with fused column sums) and batch 1 (the fused
    # update; with L2, its chunks end at whole weight rows)
    for batch, alpha in ((128, 0.0), (1, 0.0), (1, 1e-3)):
        net = gdfast.MLP([784, 256, 128, 10], seed=1, alpha=alpha)
        step_opt = gdfast.Adam(net.params, lr=1e-3)
        for _ in range(4):
            x = rng.random((batch, 784), dtype=np.float32)
            out.append(np.float64(net.train_step(x, rng.integers(0, 10, batch), step_opt)))
        out.append(net.params.data.copy())
    return out


@pytest.mark.parametrize("load", [False, True], ids=["quiet", "busy core"])
def test_chunked_passes_give_the_same_bits_on_any_team(load, omp_threads, request):
    """Each thread takes its own run of chunks, then what is left of the
    others', and the guard may run a pass alone: 1 to 5 threads (more than
    this machine's cores), with and without a busy core beside them, give
    the same bits."""
    if load:
        request.getfixturevalue("busy_core")
    want = run_everything(1)
    for threads in (2, 3, 5):
        for got, exp in zip(run_everything(threads), want):
            np.testing.assert_array_equal(got, exp, err_msg=f"{threads} threads")


ADAM_STEPS = """
import sys
import numpy as np
import gdfast
gdfast.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(3)
p = rng.standard_normal(1_200_000).astype(np.float32)
opt = gdfast.Adam([p], lr=1e-2)
for _ in range(3):
    opt.step([rng.standard_normal(p.size).astype(np.float32)])
np.save(sys.argv[2], p)
"""


def test_teams_larger_than_the_chunk_runs_cover_every_chunk_once(tmp_path):
    """A pass gives each of up to 64 threads a run of its chunks; threads past
    that share runs, and every thread ends up taking from every run. Adam on
    1.2M floats (hundreds of chunks) on 70 threads gives the 1-thread bits:
    a chunk skipped or updated twice would not. Fresh processes, so no
    earlier test has left the guard running passes alone."""
    env, cwd = child_python()
    for threads in (1, 70):
        subprocess.run([sys.executable, "-c", ADAM_STEPS, str(threads),
                        str(tmp_path / f"{threads}.npy")], env=env, cwd=cwd, check=True,
                       timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "70.npy"), np.load(tmp_path / "1.npy"))
