"""Lion against its NumPy twin (bit for bit), the paper's formula, and the rest
of the optimizer machinery (groups, state_dict, clipping, the fused MLP step)."""
import numpy as np
import pytest

import gdfast
from gdfast.reference import optim as ref


@pytest.fixture
def threads():
    before = gdfast.get_num_threads()
    yield gdfast.set_num_threads
    gdfast.set_num_threads(before)


def _arrays(rng, sizes):
    return [rng.standard_normal(n).astype(np.float32) for n in sizes]


def _assert_equal(got, want):
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.5}, {"maximize": True},
                                {"betas": (0.5, 0.0), "weight_decay": 0.1, "maximize": True}],
                         ids=["default", "wd", "maximize", "all"])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_bitwise_reference_every_simd_path_and_thread_count(simd, threads, nthreads, kw):
    threads(nthreads)
    rng = np.random.default_rng(1)
    params = _arrays(rng, [100_003, 0, 1, 7, 64])  # 100k floats split across 2 threads
    twin = [p.copy() for p in params]
    opt = gdfast.Lion(params, lr=0.01, **kw)
    oracle = ref.Lion(twin, lr=0.01, **kw)
    for t in range(8):
        grads = _arrays(rng, [p.size for p in params])
        if t == 0:
            grads[3][:3] = 0.0  # c = 0 at the first step: sign(0) = 0, no move
        clip = 50.0 if t % 3 == 0 else None  # the fused clip, below the norm (~320)
        n1 = opt.step(grads, max_grad_norm=clip)
        n2 = oracle.step(grads, max_grad_norm=clip)
        if clip:
            assert n1 == pytest.approx(n2, rel=1e-12) and n1 > clip
    _assert_equal(params, twin)
    _assert_equal([opt.state_dict()["state"][i]["exp_avg"] for i in range(5)], oracle.exp_avg)


def test_one_step_against_the_paper_formula_in_float64():
    rng = np.random.default_rng(2)
    p0, m0, g = (rng.standard_normal(1000) for _ in range(3))
    lr, b1, b2, wd = 0.03, 0.8, 0.95, 0.2
    p = [p0.astype(np.float32)]
    opt = gdfast.Lion(p, lr=lr, betas=(b1, b2), weight_decay=wd)
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = m0.astype(np.float32)
    opt.load_state_dict(sd)
    opt.step([g.astype(np.float32)])
    m32, g32, p32 = (a.astype(np.float32).astype(np.float64) for a in (m0, g, p0))
    c = b1 * m32 + (1 - b1) * g32
    want_p = p32 - lr * (np.sign(c) + wd * p32)
    want_m = b2 * m32 + (1 - b2) * g32
    np.testing.assert_allclose(p[0], want_p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(opt.state_dict()["state"][0]["exp_avg"], want_m,
                               rtol=1e-6, atol=1e-7)
    # every coordinate moved by lr (plus the decay) in the direction -sign(c)
    assert np.all(np.sign(p32 * (1 - lr * wd) - p[0]) == np.sign(c))


def test_nan_gradient_propagates_and_zero_update_stays():
    p = [np.ones(4, np.float32)]
    opt = gdfast.Lion(p, lr=0.1)
    opt.step([np.array([np.nan, 0.0, 1.0, -1.0], np.float32)])
    assert np.isnan(p[0][0])
    np.testing.assert_array_equal(p[0][1:], np.array([1.0, 0.9, 1.1], np.float32))
    assert np.isnan(opt.state_dict()["state"][0]["exp_avg"][0])


def test_sign_in_the_vector_loop_keeps_nan_and_zeros(simd):
    """NaN, +0 and -0 at every lane of the SIMD loop (not just its scalar tail)."""
    g = np.tile(np.array([np.nan, 0.0, -0.0, 2.0, -3.0, 1e-30, -1e-30, np.inf], np.float32), 32)
    p = [np.ones_like(g)]
    gdfast.Lion(p, lr=0.5).step([g])
    want = np.tile(np.array([np.nan, 1.0, 1.0, 0.5, 1.5, 0.5, 1.5, 0.5], np.float32), 32)
    np.testing.assert_array_equal(p[0], want)
    assert not np.signbit(p[0][1::8]).any()


def test_arena_groups_match_reference(simd, threads):
    threads(2)
    rng = np.random.default_rng(3)
    p = gdfast.Params({"w1": (300, 200), "b1": (200,), "w2": (200, 3), "b2": (3,)})
    p.data[...] = rng.standard_normal(p.size)
    opt = gdfast.Lion(p, lr=1e-3, weight_decay=0.1,
                      groups=[{"params": ["b1", "b2"], "weight_decay": 0.0, "lr": 0.01}])
    ow = ref.Lion([p["w1"].copy(), p["w2"].copy()], lr=1e-3, weight_decay=0.1)
    ob = ref.Lion([p["b1"].copy(), p["b2"].copy()], lr=0.01)
    for t in range(6):
        p.grad[...] = rng.standard_normal(p.size)
        if t == 3:  # a schedule changing lr of one group
            opt.param_groups[1]["lr"] = 1e-4
            ow.hyper["lr"] = 1e-4
        opt.step()
        ow.step([p.grad_of("w1"), p.grad_of("w2")])
        ob.step([p.grad_of("b1"), p.grad_of("b2")])
    _assert_equal([p["w1"], p["w2"], p["b1"], p["b2"]], ow.params + ob.params)


def test_state_dict_and_file_resume_bit_exactly(tmp_path):
    rng = np.random.default_rng(4)
    p = gdfast.Params({"w": (33, 3), "b": (3,)})
    p.data[...] = rng.standard_normal(p.size)
    grads = [rng.standard_normal(p.size).astype(np.float32) for _ in range(12)]
    opt = gdfast.Lion(p, lr=0.01, weight_decay=0.1)
    for g in grads[:6]:
        p.grad[...] = g
        opt.step()
    sd, saved = opt.state_dict(), p.data.copy()
    assert set(sd["state"]["w"]) == {"exp_avg"} and sd["step"] == 6
    opt.save(tmp_path / "lion.state")
    for g in grads[6:]:
        p.grad[...] = g
        opt.step()
    for restore in ("dict", "file"):
        q = gdfast.Params({"w": (33, 3), "b": (3,)})
        q.data[...] = saved
        fresh = gdfast.Lion(q, lr=0.5)
        if restore == "dict":
            fresh.load_state_dict(sd)
        else:
            fresh.load(tmp_path / "lion.state")
        assert fresh.param_groups[0]["lr"] == 0.01
        for g in grads[6:]:
            q.grad[...] = g
            fresh.step()
        np.testing.assert_array_equal(q.data, p.data)
    with pytest.raises(ValueError, match="holds Lion state"):
        gdfast.Adam(p).load(tmp_path / "lion.state")


@pytest.mark.parametrize("n", [1, 32])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_mlp_train_step_equals_loss_and_grad_then_step(simd, threads, n, nthreads):
    threads(nthreads)
    rng = np.random.default_rng(n)
    sizes = [450, 70, 33, 10]
    fused, split = gdfast.MLP(sizes, seed=3), gdfast.MLP(sizes, seed=3)
    kw = dict(lr=1e-3, weight_decay=0.1, groups=[{"params": ["b1", "b2", "b3"], "lr": 1e-2}])
    opt_f, opt_s = gdfast.Lion(fused.params, **kw), gdfast.Lion(split.params, **kw)
    for _ in range(3):
        x = rng.standard_normal((n, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], n).astype(np.int32)
        assert fused.train_step(x, y, opt_f) == split.loss_and_grad(x, y)
        opt_s.step()
    np.testing.assert_array_equal(fused.params.data, split.params.data)
    sf, ss = opt_f.state_dict()["state"], opt_s.state_dict()["state"]
    for key in ss:
        np.testing.assert_array_equal(sf[key]["exp_avg"], ss[key]["exp_avg"], err_msg=key)


@pytest.mark.parametrize("kw,match", [
    ({"betas": (1.0, 0.99)}, r"betas.*\[0, 1\)"),
    ({"betas": (0.9, -0.1)}, r"betas.*\[0, 1\)"),
    ({"betas": (0.9,)}, "betas.*pair"),
    ({"lr": -1e-3}, "lr.*>= 0"),
    ({"lr": float("nan")}, "lr.*>= 0"),
    ({"weight_decay": -0.1}, "weight_decay.*>= 0"),
])
def test_bad_hyperparameters_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        gdfast.Lion([np.ones(3, np.float32)], **kw)


def test_bad_hyperparameter_before_a_step_changes_nothing():
    p = [np.ones(3, np.float32)]
    opt = gdfast.Lion(p, lr=0.1)
    opt.step([np.ones(3, np.float32)])
    before, sd = p[0].copy(), opt.state_dict()
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match=r"betas.*\[0, 1\)"):
        opt.step([np.ones(3, np.float32)])
    np.testing.assert_array_equal(p[0], before)
    assert opt.state_dict()["step"] == sd["step"]
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"],
                                  sd["state"][0]["exp_avg"])
