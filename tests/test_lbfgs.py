"""L-BFGS: the C kernels against their NumPy twins (bit for bit, every SIMD
path, 1 and 2 threads), the optimizer against torch.optim.LBFGS and SciPy's
L-BFGS-B, the cases where PyTorch's fails, input checks, bit-exact resume,
and full-batch training through the Trainer and `gdfast train`."""
import math

import numpy as np
import pytest

import gdfast
from gdfast import _kernels
from gdfast.reference import lbfgs as ref
from gdfast.testfuncs import ROSENBROCK


@pytest.fixture
def threads():
    before = gdfast.get_num_threads()
    yield gdfast.set_num_threads
    gdfast.set_num_threads(before)


def _vec(rng, n):
    return rng.standard_normal(n).astype(np.float32)


# ---- kernels ----

@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 8, 4095, 4097, 140_001])  # 140k: two threads' blocks
def test_kernels_bitwise_reference(simd, threads, nthreads, n):
    threads(nthreads)
    rng = np.random.default_rng(n)
    a, b, d, g, gp = (_vec(rng, n) for _ in range(5))
    for name, args in (("lbfgs_dot", (a, b)), ("lbfgs_abssum", (a,)), ("lbfgs_maxabs", (a,))):
        assert getattr(_kernels, name)(*args) == getattr(ref, name)(*args), name
    out, want = np.empty_like(a), np.empty_like(a)
    _kernels.lbfgs_xpay(out, a, 0.3, d)
    ref.lbfgs_xpay(want, a, 0.3, d)
    np.testing.assert_array_equal(out, want)
    ys, ss = np.empty((2, n), np.float32), np.empty((2, n), np.float32)
    sums = _kernels.lbfgs_pair(ys[0], ss[0], g, gp, d, 0.7)
    assert sums == ref.lbfgs_pair(ys[1], ss[1], g, gp, d, 0.7)
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ss[0], ss[1])
    # three pairs in ring order (slot 2 is the oldest)
    S, Y = (rng.standard_normal((3, n)).astype(np.float32) for _ in range(2))
    order, rho = [2, 0, 1], [0.5, 1.5, 0.25]
    got, want = np.empty_like(g), np.empty_like(g)
    _kernels.lbfgs_two_loop(g, got, S, Y, order, rho, 0.8)
    ref.lbfgs_two_loop(g, want, S, Y, order, rho, 0.8)
    np.testing.assert_array_equal(got, want)


def test_maxabs_propagates_nan():
    x = np.ones(10_000, np.float32)
    x[9_000] = np.nan
    assert math.isnan(_kernels.lbfgs_maxabs(x))


# ---- the optimizer against its twin ----

def _rosen_np(p):
    x, y = float(p[0]), float(p[1])
    return ROSENBROCK.value(x, y), [np.array(ROSENBROCK.gradient(x, y), np.float32)]


@pytest.mark.parametrize("ls", [None, "strong_wolfe"])
def test_optimizer_bitwise_reference(simd, ls):
    paths = []
    for cls in (gdfast.LBFGS, ref.LBFGS):
        p = np.array(ROSENBROCK.start, np.float32)
        opt = cls([p], lr=1 if ls else 1e-3, line_search_fn=ls, history_size=5)
        path = []
        for _ in range(6):
            path.append((opt.step(lambda: _rosen_np(p)), p.copy(), opt.func_evals))
        paths.append(path)
    for (l1, p1, e1), (l2, p2, e2) in zip(*paths):
        assert (l1, e1) == (l2, e2)
        np.testing.assert_array_equal(p1, p2)
    if ls:
        np.testing.assert_allclose(paths[0][-1][1], ROSENBROCK.minimum, atol=1e-3)


def _mlp_data(n=64, d=784, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d), dtype=np.float32), rng.integers(0, 10, n)


def test_threads_give_the_same_bits(threads):
    """A 784-256-10 MLP (203k parameters: every pass split over 2 threads)."""
    x, y = _mlp_data()
    results = []
    for nthreads in (1, 2):
        threads(nthreads)
        model = gdfast.MLP([784, 256, 10], seed=0)
        opt = gdfast.LBFGS(model.params, max_iter=8, line_search_fn="strong_wolfe")
        losses = [opt.step(lambda: model.loss_and_grad(x, y)) for _ in range(2)]
        results.append((losses, model.params.data.copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


# ---- against PyTorch ----

def _torch_pair(fn, init, steps, **kw):
    """gdfast's and torch's iterates after each step, the loss and gradient
    both computed by torch (float32), so only the optimizers differ."""
    torch = pytest.importorskip("torch")
    xs = [a.copy() for a in init]
    opt = gdfast.LBFGS(xs, **kw)

    def closure():
        ts = [torch.from_numpy(a.copy()).requires_grad_() for a in xs]
        loss = fn(*ts)
        loss.backward()
        return loss.item(), [t.grad.numpy() for t in ts]

    tt = [torch.from_numpy(a.copy()).requires_grad_() for a in init]
    topt = torch.optim.LBFGS(tt, **kw)

    def tclosure():
        topt.zero_grad()
        loss = fn(*tt)
        loss.backward()
        return loss

    out = []
    for _ in range(steps):
        mine, theirs = opt.step(closure), topt.step(tclosure).item()
        out.append((mine, theirs, [a.copy() for a in xs], [t.detach().numpy().copy() for t in tt]))
    return out


def _close(a, b, atol):
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=0, atol=atol)


@pytest.mark.parametrize("ls", [None, "strong_wolfe"])
def test_rosenbrock_same_iterates_as_torch(ls):
    kw = dict(lr=1, line_search_fn=ls) if ls else dict(lr=1e-2)
    run = _torch_pair(lambda p: ROSENBROCK.value(p[0], p[1]),
                      [np.array(ROSENBROCK.start, np.float32)], 6, max_iter=10, **kw)
    # float32 rounding apart, step for step; Rosenbrock's valley amplifies
    # it mid-run (to ~5e-3 at the 30th iteration), then both converge
    _close(run[0][2], run[0][3], 1e-6)
    _close(run[1][2], run[1][3], 1e-4)
    for mine, theirs, a, b in run:
        assert mine == pytest.approx(theirs, rel=1e-2, abs=1e-3)
        _close(a, b, 1e-2)
    _close(run[-1][2], run[-1][3], 1e-4)
    if ls:
        _close(run[-1][2], [ROSENBROCK.minimum], 1e-4)


@pytest.mark.parametrize("ls", [None, "strong_wolfe"])
def test_logistic_regression_same_iterates_as_torch(ls):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 1.0]) + rng.normal(size=200) > 0).astype(np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def loss(w, b):   # two parameter arrays: the list path with two segments
        return torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt)

    kw = dict(line_search_fn=ls) if ls else dict(lr=0.5)
    run = _torch_pair(loss, [np.zeros(5, np.float32), np.zeros(1, np.float32)], 4,
                      max_iter=5, **kw)
    for i, (mine, theirs, a, b) in enumerate(run):
        assert mine == pytest.approx(theirs, rel=1e-6)
        # at the optimum (steps 3, 4) the loss is flat to float32 rounding
        _close(a, b, 1e-5 if i < 2 else 1e-3)


# ---- against SciPy ----

def test_small_mlp_final_loss_as_scipy_lbfgsb():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 10)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(10, 3)) + 2.0 * rng.normal(size=(2000, 3)), 1)
    model = gdfast.MLP([10, 8, 3], activation="tanh", seed=0)
    twin = gdfast.MLP([10, 8, 3], activation="tanh", seed=0)
    start = model.params.data.astype(np.float64)
    opt = gdfast.LBFGS(model.params, max_iter=200, history_size=10, line_search_fn="strong_wolfe")
    opt.step(lambda: model.loss_and_grad(x, y))
    mine = model.loss_and_grad(x, y)

    def fun(w):
        twin.params.data[...] = w
        return float(twin.loss_and_grad(x, y)), twin.params.grad.astype(np.float64)

    res = optimize.minimize(fun, start, jac=True, method="L-BFGS-B",
                            options=dict(maxiter=200, maxcor=10))
    assert opt.n_iter == 200 and res.nit == 200
    assert mine < 0.7 and mine == pytest.approx(res.fun, rel=0.01)


# ---- where PyTorch's fails ----

def test_nearly_orthogonal_pair_is_skipped():
    """y . s = 6e-8 passes PyTorch's 1e-10 test, but y is 1e4 long and
    orthogonal to s: PyTorch keeps the pair and its next step is 3e7 long.
    Here it is skipped and the step is the steepest descent's."""
    g0 = np.array([1.0, 0.0], np.float32)
    g1 = np.array([1.0 - 2.0 ** -24, 1e4], np.float32)   # y = (-2^-24, 1e4), s = (-1, 0)
    evals = iter([(2.0, [g0]), (1.0, [g1])])
    p = np.zeros(2, np.float32)
    opt = gdfast.LBFGS([p], max_iter=2, max_eval=10)
    opt.step(lambda: next(evals))
    assert opt.state_dict()["state"][0]["ro"].size == 0
    np.testing.assert_array_equal(p, -g0 - g1)


def test_no_nan_after_many_noisy_iterations():
    """Mini-batch-like gradients (a quadratic plus noise): pairs of random
    sign and size over 4000 iterations; the parameters stay finite and near
    the minimum."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(50).astype(np.float32)
    scale = np.linspace(0.1, 10, 50).astype(np.float32)
    opt = gdfast.LBFGS([p], lr=0.1, history_size=10, tolerance_grad=0, tolerance_change=0)
    for _ in range(200):
        opt.step(lambda: (float(0.5 * (scale * p * p).sum()),
                          [scale * p + rng.standard_normal(50).astype(np.float32)]))
        assert np.isfinite(p).all()
    assert opt.n_iter == 4000 and np.abs(p).max() < 10


def test_negative_curvature_pairs_are_skipped():
    """On a concave loss every pair has y . s < 0: none is kept, the
    direction stays the steepest descent, nothing overflows to NaN."""
    p = np.array([0.5, -0.25], np.float32)
    opt = gdfast.LBFGS([p], lr=0.1, max_iter=30, tolerance_grad=0, tolerance_change=0)
    opt.step(lambda: (-float(p.astype(np.float64) @ p), [-2 * p]))
    assert opt.state_dict()["state"][0]["ro"].size == 0
    assert np.isfinite(p).all() and abs(p[0] / p[1] + 2) < 1e-5


def test_nan_loss_in_line_search_shrinks_the_step():
    """Beyond |x| > 3 the loss is NaN: a too-long step. PyTorch's strong
    Wolfe search interpolates through the NaN (an IndexError at lr=10); here
    the NaN bounds the bracket and the search bisects back to finite ground."""
    p = np.zeros(2, np.float32)

    def closure():
        x = p.astype(np.float64)
        if np.abs(x).max() > 3:
            return math.nan, [np.full(2, np.nan, np.float32)]
        return float(((x - 2) ** 2).sum()), [(2 * (x - 2)).astype(np.float32)]

    opt = gdfast.LBFGS([p], lr=10, line_search_fn="strong_wolfe")
    for _ in range(3):
        assert math.isfinite(opt.step(closure))
    np.testing.assert_allclose(p, [2, 2], atol=1e-4)


def test_nonfinite_loss_at_start_changes_nothing():
    p = np.ones(3, np.float32)
    opt = gdfast.LBFGS([p])
    assert math.isnan(opt.step(lambda: (math.nan, [np.ones(3, np.float32)])))
    np.testing.assert_array_equal(p, 1)
    assert opt.n_iter == 0 and opt.func_evals == 1


# ---- input checks ----

@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1), "lr must be a finite number >= 0"),
    (dict(max_iter=0), "max_iter must be an integer >= 1"),
    (dict(max_iter=2.5), "max_iter must be an integer >= 1"),
    (dict(max_eval=0), "max_eval must be an integer >= 1"),
    (dict(tolerance_grad=-1e-3), "tolerance_grad must be"),
    (dict(tolerance_change=math.nan), "tolerance_change must be"),
    (dict(history_size=0), "history_size must be an integer >= 1"),
    (dict(line_search_fn="armijo"), "line_search_fn must be None or 'strong_wolfe'"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        gdfast.LBFGS([np.zeros(2, np.float32)], **kw)


def test_bad_params():
    a = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="dtype float32"):
        gdfast.LBFGS([np.zeros(2)])
    with pytest.raises(ValueError, match="params is empty"):
        gdfast.LBFGS([])
    with pytest.raises(ValueError, match="share memory"):
        gdfast.LBFGS([a, a[2:]])
    with pytest.raises(TypeError, match="one parameter group"):
        gdfast.LBFGS([{"params": [a]}])
    with pytest.raises(ValueError, match="no elements"):
        gdfast.LBFGS([np.zeros(0, np.float32)])
    ro = np.zeros(2, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        gdfast.LBFGS([ro])


def test_bad_closure_or_groups_change_nothing():
    p = np.ones(2, np.float32)
    opt = gdfast.LBFGS([p])
    with pytest.raises(TypeError, match="closure must be callable"):
        opt.step(None)
    with pytest.raises(TypeError, match=r"closure must return \(loss, grads\)"):
        opt.step(lambda: 1.0)
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(3,\), expected \(2,\)"):
        opt.step(lambda: (1.0, [np.ones(3, np.float32)]))
    opt.param_groups[0]["history_size"] = 200
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['history_size'\] must be at "
                                         r"most 100"):
        opt.step(lambda: (1.0, [p.copy()]))
    opt.param_groups[0]["history_size"] = 100
    np.testing.assert_array_equal(p, 1)
    assert opt.func_evals == 0 and opt.n_iter == 0


def test_arena_buffer_replaced():
    model = gdfast.MLP([4, 3], seed=0)
    opt = gdfast.LBFGS(model.params)
    model.params.data = model.params.data.copy()
    with pytest.raises(ValueError, match="replaced"):
        opt.step(lambda: 0.0)


# ---- state ----

def _mlp_run(opt_steps, resume_at=None, tmp_path=None):
    x, y = _mlp_data(n=128, d=20)
    model = gdfast.MLP([20, 16, 10], seed=1)
    opt = gdfast.LBFGS(model.params, max_iter=4, history_size=6, line_search_fn="strong_wolfe")
    losses = []
    for i in range(opt_steps):
        if i == resume_at:
            saved = (model.state_dict(), opt.state_dict())
            if tmp_path is not None:
                opt.save(tmp_path / "opt.npz")
            model = gdfast.MLP([20, 16, 10], seed=99)
            model.load_state_dict(saved[0])
            opt = gdfast.LBFGS(model.params, max_iter=4, history_size=6,
                               line_search_fn="strong_wolfe")
            if tmp_path is not None:
                opt.load(tmp_path / "opt.npz")
            else:
                opt.load_state_dict(saved[1])
        losses.append(opt.step(lambda: model.loss_and_grad(x, y)))
    return losses, model.params.data.copy(), opt


@pytest.mark.parametrize("via_file", [False, True])
def test_resume_is_bit_exact(tmp_path, via_file):
    straight = _mlp_run(6)
    resumed = _mlp_run(6, resume_at=3, tmp_path=tmp_path if via_file else None)
    assert straight[0] == resumed[0]
    np.testing.assert_array_equal(straight[1], resumed[1])
    assert straight[2].func_evals == resumed[2].func_evals
    assert len(straight[2].state_dict()["state"]["w1"]["ro"]) == 6   # a full history


def test_bad_state_dict_changes_nothing():
    _, _, opt = _mlp_run(2)
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["state"]["w1"]["old_dirs"] = bad["state"]["w1"]["old_dirs"][:, :5]
    with pytest.raises(ValueError, match="old_dirs"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="one entry, for 'w1'"):
        opt.load_state_dict({**before, "state": {"b1": before["state"]["w1"]}})
    after = opt.state_dict()
    for key, v in before["state"]["w1"].items():
        np.testing.assert_array_equal(after["state"]["w1"][key], v)
    assert after["param_groups"] == before["param_groups"]


# ---- training ----

def test_trainer_full_batch_and_resume(tmp_path):
    x, y = _mlp_data(n=256, d=20, seed=3)

    def trainer(directory):
        model = gdfast.MLP([20, 16, 10], seed=0)
        opt = gdfast.LBFGS(model.params, max_iter=5, line_search_fn="strong_wolfe")
        return gdfast.Trainer(model, opt, (x, y), batch_size=None, checkpoint_dir=directory)

    straight = trainer(tmp_path / "a").fit(4)
    first = trainer(tmp_path / "b")
    first.fit(2)
    resumed = trainer(tmp_path / "b")
    history = resumed.fit(4, resume=True)
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in straight]
    assert straight[-1]["train_loss"] < 0.9 * straight[0]["train_loss"]   # random labels
    model = gdfast.MLP([20, 16, 10], seed=0)
    with pytest.raises(ValueError, match="clip_norm does not apply to LBFGS"):
        gdfast.Trainer(model, gdfast.LBFGS(model.params), (x, y), clip_norm=1.0)


def test_cli_train_lbfgs(tmp_path, capsys):
    from gdfast import cli
    x, y = _mlp_data(n=200, d=12, seed=4)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y % 3)
    assert cli.main(["train", "--train", str(path), "--optimizer", "lbfgs", "--epochs", "2",
                     "--hidden", "8", "--no-progress"]) in (0, None)
    out = capsys.readouterr().out
    assert "lbfgs lr 1 constant, batch full" in out and "epoch   2/2" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--train", str(path), "--optimizer", "lbfgs", "--batch-size", "32"])
    assert e.value.code == 2
    assert "--batch-size does not apply to lbfgs" in capsys.readouterr().err


def test_bench_lbfgs_row(monkeypatch):
    from types import SimpleNamespace

    from gdfast import bench, datasets
    pytest.importorskip("scipy.optimize")  # scipy may import where this fails (NumPy 1.23)
    x, y = _mlp_data(n=32)
    monkeypatch.setattr(datasets, "load_mnist", lambda **kw: SimpleNamespace(x_train=x, y_train=y))
    monkeypatch.setattr(bench, "quiet_cores", lambda: None)
    [row] = bench.bench_lbfgs(1, True, print)
    assert row.section.startswith("L-BFGS full batch (32 MNIST images, 10 pairs, 3 iterations)")
    assert row.gdfast_s > 0 and row.extra["scipy L-BFGS-B"] > 0
    assert 0 < row.extra["outside closure"] < row.gdfast_s
    assert "scipy outside closure" in bench.table([row])
