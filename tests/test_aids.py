"""Training aids of the optimizers: adaptive gradient clipping (AGC) and the
moving average of the weights (EMA), against their NumPy twins (bit for bit),
the optax/timm and Keras formulas written out, and the state machinery."""
import numpy as np
import pytest

import gdfast
from gdfast.reference import optim as ref

SHAPES = [(300, 70), (70,), (5, 4, 3), (0,), (100_003,), (1, 1)]


@pytest.fixture
def threads():
    before = gdfast.get_num_threads()
    yield gdfast.set_num_threads
    gdfast.set_num_threads(before)


def _arrays(rng, shapes, scale=1.0):
    return [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]


def _agc_formula(p, g, clip, eps):
    """timm's adaptive_clip_grad / optax's adaptive_grad_clip in float64, units
    over every axis but the last (optax's unitwise_norm for (in, out) weights)."""
    p, g = p.astype(np.float64), g.astype(np.float64)
    axes = tuple(range(p.ndim - 1)) if p.ndim >= 2 else None
    p_norm = np.sqrt((p * p).sum(axis=axes, keepdims=True))
    g_norm = np.sqrt((g * g).sum(axis=axes, keepdims=True))
    max_norm = np.maximum(p_norm, eps) * clip
    clipped = g * (max_norm / np.maximum(g_norm, 1e-6))
    return np.where(g_norm < max_norm, g, clipped)


@pytest.mark.parametrize("cls,kw", [("Adam", {"lr": 1e-2}), ("AdamW", {"lr": 1e-2}),
                                    ("SGD", {"lr": 0.1, "momentum": 0.9}),
                                    ("Lion", {"lr": 1e-3, "weight_decay": 0.1}),
                                    ("RMSprop", {"lr": 1e-3}), ("Adagrad", {"lr": 1e-2})])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_agc_and_ema_bitwise_reference_every_simd_path(simd, threads, nthreads, cls, kw):
    threads(nthreads)
    rng = np.random.default_rng(1)
    params = _arrays(rng, SHAPES)
    twin = [p.copy() for p in params]
    opt = getattr(gdfast, cls)(params, agc=0.05, agc_eps=1e-2, ema=0.9, **kw)
    oracle = getattr(ref, cls)(twin, agc=0.05, agc_eps=1e-2, ema=0.9, **kw)
    for t in range(5):
        grads = _arrays(rng, SHAPES, scale=10.0 ** (t - 2))  # some units clipped, some not
        clip = 50.0 if t % 2 else None
        n1, n2 = opt.step(grads, max_grad_norm=clip), oracle.step(grads, max_grad_norm=clip)
        assert (n1 is None) == (n2 is None)
    for i, (a, b) in enumerate(zip(params, twin)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(opt.ema_state()[i], oracle.ema[i])


def test_agc_against_the_optax_timm_formula():
    rng = np.random.default_rng(2)
    for shape in [(64, 33), (7,), (3, 4, 5)]:
        p = rng.standard_normal(shape).astype(np.float32)
        g = (rng.standard_normal(shape) * rng.choice([1e-4, 1.0], shape[-1])).astype(np.float32)
        want = _agc_formula(p, g, 0.01, 1e-3)
        got = g.copy()
        gdfast.adaptive_clip_grad([p], [got])   # the defaults: 0.01, 1e-3
        np.testing.assert_allclose(got, want, rtol=3e-6, atol=0)   # float32 norms
        # and inside a plain SGD step: p - lr * clipped g
        q = p.copy()
        gdfast.SGD([q], lr=1.0, agc=0.01).step([g])
        np.testing.assert_allclose(q, p - want, rtol=1e-6, atol=1e-7)
    # eps floors the weight norm: zero weights still get steps of clip * eps
    p, g = np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32)
    gdfast.adaptive_clip_grad(p, g, 0.5, 1e-2)
    np.testing.assert_allclose(np.linalg.norm(g, axis=0), 0.5 * 1e-2, rtol=1e-6)
    # a zero gradient stays zero (the 1e-6 floor, no 0/0)
    g = np.zeros((4, 3), np.float32)
    gdfast.adaptive_clip_grad(np.ones((4, 3), np.float32), g)
    assert not g.any()


def test_adaptive_clip_grad_matches_its_twin_and_is_thread_independent(threads):
    rng = np.random.default_rng(3)
    # row blocks of 256 (4, the last short) and column chunks of 1024 (2)
    params = _arrays(rng, [(1000, 300), (300,), (2, 3), (777, 1100)])
    grads = _arrays(rng, [p.shape for p in params])
    outs = []
    for nt in (1, 2):
        threads(nt)
        g = [a.copy() for a in grads]
        gdfast.adaptive_clip_grad(params, g, 0.002, 1e-3)
        outs.append(g)
    twin = [a.copy() for a in grads]
    ref.adaptive_clip_grad(params, twin, 0.002, 1e-3)
    for a, b, c in zip(*outs, twin):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(outs[0][0], grads[0])   # it clipped something
    # the twin's blocked sums are not one chain down each column (these differ)
    sq = params[3].reshape(-1, 1100) ** 2
    assert not np.array_equal(ref.unit_sumsq(params[3]), np.add.reduce(sq, axis=0))


def test_adaptive_clip_grad_on_an_arena():
    arena = gdfast.Params({"w": (20, 6), "b": (6,)})
    rng = np.random.default_rng(4)
    arena.data[...] = rng.standard_normal(arena.size)
    arena.grad[...] = rng.standard_normal(arena.size)
    want = [_agc_formula(arena[n], arena.grad_of(n), 0.01, 1e-3) for n in ("w", "b")]
    gdfast.adaptive_clip_grad(arena, None)
    for n, w in zip(("w", "b"), want):
        np.testing.assert_allclose(arena.grad_of(n), w, rtol=3e-6)


def test_nan_gradient_propagates_to_its_unit_only():
    rng = np.random.default_rng(5)
    p = rng.standard_normal((10, 4)).astype(np.float32)
    g = rng.standard_normal((10, 4)).astype(np.float32)
    g[3, 1] = np.nan
    gdfast.adaptive_clip_grad(p, g)
    assert np.isnan(g[:, 1]).all() and np.isfinite(np.delete(g, 1, axis=1)).all()


@pytest.mark.parametrize("ema", [0.99, None])
def test_agc_per_group_on_an_arena_and_thread_independent(threads, ema):
    rng = np.random.default_rng(6)
    shapes = {"w1": (400, 256), "b1": (256,), "w2": (256, 10), "b2": (10,)}
    results = []
    for nt in (1, 2, 1):
        threads(nt)
        arena = gdfast.Params(shapes)
        arena.data[...] = rng.standard_normal(arena.size) if not results else start
        start = arena.data.copy()
        opt = gdfast.Adam(arena, lr=1e-2, ema=ema,
                          groups=[{"params": ["w1", "b1"], "agc": 0.01}])
        g_rng = np.random.default_rng(7)
        for _ in range(3):
            arena.grad[...] = g_rng.standard_normal(arena.size)
            opt.step()
        results.append((arena.data.copy(), opt.state_dict()))
    for data, sd in results[1:]:
        np.testing.assert_array_equal(data, results[0][0])
        for key in shapes if ema else ():
            np.testing.assert_array_equal(sd["state"][key]["ema"], results[0][1]["state"][key]["ema"])
    # the twin: AGC on the first group only
    twin = {k: start[o:o + int(np.prod(s))].reshape(s).copy()
            for k, s, o in zip(shapes, shapes.values(), np.cumsum([0] + [int(np.prod(s)) for s in shapes.values()]))}
    first = ref.Adam([twin["w1"], twin["b1"]], lr=1e-2, agc=0.01, ema=ema)
    rest = ref.Adam([twin["w2"], twin["b2"]], lr=1e-2, ema=ema)
    g_rng = np.random.default_rng(7)
    arena = gdfast.Params(shapes)
    for _ in range(3):
        arena.grad[...] = g_rng.standard_normal(arena.size)
        first.step([arena.grad_of("w1"), arena.grad_of("b1")])
        rest.step([arena.grad_of("w2"), arena.grad_of("b2")])
    arena.data[...] = results[0][0]
    for k in shapes:
        np.testing.assert_array_equal(arena[k], twin[k])


def test_ema_is_keras_use_ema():
    rng = np.random.default_rng(8)
    p = rng.standard_normal(50).astype(np.float32)
    opt = gdfast.SGD([p], lr=0.1, ema=0.75)
    np.testing.assert_array_equal(opt.ema_state()[0], p)    # before any step: the weights
    ema = None
    for t in range(4):
        g = rng.standard_normal(50).astype(np.float32)
        opt.step([g])
        # Keras: momentum = (iterations != 0) * ema_momentum; average = m * average + (1 - m) * var
        m = np.float32(0.0 if t == 0 else 0.75)
        ema = p.copy() if ema is None else m * ema + (np.float32(1) - m) * p
        np.testing.assert_array_equal(opt.ema_state()[0], ema)


def test_ema_and_agc_resume_bit_exact(tmp_path):
    rng = np.random.default_rng(9)
    start = _arrays(rng, [(30, 8), (8,)])
    grads = [_arrays(rng, [(30, 8), (8,)]) for _ in range(6)]

    def run(split):
        params = [a.copy() for a in start]
        opt = gdfast.AdamW(params, lr=1e-2, agc=0.02, ema=0.9)
        for t, g in enumerate(grads):
            if t == split:
                opt.save(tmp_path / "opt.npz")
                saved = [a.copy() for a in params]
                params = [a.copy() for a in saved]
                opt = gdfast.AdamW(params, lr=1e-2, agc=0.02, ema=0.9)
                opt.load(tmp_path / "opt.npz")
            opt.step(g)
        return params, opt.ema_state()

    (p1, e1), (p2, e2) = run(None), run(3)
    for a, b in zip(p1 + list(e1.values()), p2 + list(e2.values())):
        np.testing.assert_array_equal(a, b)


def test_ema_survives_add_param_group():
    a, b = np.ones(5, np.float32), np.full(3, 2.0, np.float32)
    opt = gdfast.Adam([a], lr=0.1, ema=0.5)
    opt.step([np.ones(5, np.float32)])
    before = opt.ema_state()[0].copy()
    opt.add_param_group({"params": [b]})
    np.testing.assert_array_equal(opt.ema_state()[0], before)
    np.testing.assert_array_equal(opt.ema_state()[1], b)   # starts as the new weights


def test_state_dict_without_the_aids_still_loads():
    p = [np.ones(4, np.float32)]
    opt = gdfast.Adam(p, lr=0.1)
    opt.step([np.ones(4, np.float32)])
    sd = opt.state_dict()
    for g in sd["param_groups"]:        # as written before agc/ema existed
        for k in ("agc", "agc_eps", "ema"):
            del g[k]
    fresh = gdfast.Adam([np.ones(4, np.float32)], lr=0.1)
    fresh.load_state_dict(sd)
    assert fresh._step == 1 and fresh.param_groups[0]["agc"] == 0.0


@pytest.mark.parametrize("kw,match", [({"agc": -0.1}, "agc"), ({"agc": float("inf")}, "agc"),
                                      ({"agc": "x"}, "agc"), ({"agc_eps": 0.0}, "agc_eps"),
                                      ({"ema": 1.0}, "ema"), ({"ema": -0.5}, "ema"),
                                      ({"ema": "x"}, "ema")])
def test_bad_options_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        gdfast.Adam([np.ones(3, np.float32)], **kw)


def test_bad_option_set_between_steps_changes_nothing():
    p = np.ones(6, np.float32)
    opt = gdfast.Adam([p], lr=0.1, agc=0.01)
    opt.step([np.ones(6, np.float32)])
    before, sd = p.copy(), opt.state_dict()
    opt.param_groups[0]["agc"] = -1.0
    with pytest.raises(ValueError, match="agc"):
        opt.step([np.ones(6, np.float32)])
    np.testing.assert_array_equal(p, before)
    assert opt._step == sd["step"]
    # ema switched on without its buffer
    opt.param_groups[0]["agc"] = 0.01
    opt.param_groups[0]["ema"] = 0.9
    with pytest.raises(ValueError, match="ema"):
        opt.step([np.ones(6, np.float32)])
    np.testing.assert_array_equal(p, before)


def test_adaptive_clip_grad_bad_input():
    p, g = np.ones((3, 2), np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="shape"):
        gdfast.adaptive_clip_grad([p], [np.ones((2, 3), np.float32)])
    with pytest.raises(ValueError, match="grads has 2"):
        gdfast.adaptive_clip_grad([p], [g, g])
    with pytest.raises(TypeError, match="float32"):
        gdfast.adaptive_clip_grad([p], [g.astype(np.float64)])
    with pytest.raises(ValueError, match="clip_factor"):
        gdfast.adaptive_clip_grad([p], [g], clip_factor=0.0)
    with pytest.raises(ValueError, match="eps"):
        gdfast.adaptive_clip_grad([p], [g], eps=-1.0)
    with pytest.raises(ValueError, match="shares memory"):
        gdfast.adaptive_clip_grad([p], [p])
    ro = g.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only|writeable"):
        gdfast.adaptive_clip_grad([p], [ro])
    np.testing.assert_array_equal(g, 1.0)


@pytest.mark.parametrize("batch", [1, 16])
def test_mlp_train_step_agc_is_the_hidden_layers_group(batch):
    """train_step(agc=) clips every layer but the output one: the same bits as
    an optimizer with agc on the hidden layers' group."""
    rng = np.random.default_rng(10)
    x = rng.random((batch, 20), dtype=np.float32)
    y = rng.integers(0, 5, batch)
    a, b = gdfast.MLP([20, 16, 8, 5], seed=1), gdfast.MLP([20, 16, 8, 5], seed=1)
    opt_a = gdfast.Adam(a.params, lr=1e-2, ema=0.9)
    opt_b = gdfast.Adam(b.params, lr=1e-2, ema=0.9,
                        groups=[{"params": ["w1", "b1", "w2", "b2"], "agc": 0.01}])
    for _ in range(3):
        a.train_step(x, y, opt_a, agc=0.01)
        b.train_step(x, y, opt_b)
    np.testing.assert_array_equal(a.params.data, b.params.data)
    for k, v in opt_a.ema_state().items():
        np.testing.assert_array_equal(v, opt_b.ema_state()[k])
    with pytest.raises(ValueError, match="not both"):
        b.train_step(x, y, opt_b, agc=0.01)
    with pytest.raises(ValueError, match="agc"):
        a.train_step(x, y, opt_a, agc=-1.0)
    assert opt_a._step == 3 and not opt_a._in_step


@pytest.mark.parametrize("alpha", [0.0, 1e-3])
def test_fused_batch1_step_keeps_ema_exact(alpha):
    """The batch-1 fused pass (no stored dW) updates the EMA as the plain step
    does, also with the L2 term (whose rows take another route)."""
    rng = np.random.default_rng(11)
    x, y = rng.random((1, 12), dtype=np.float32), np.array([2])
    a, b = (gdfast.MLP([12, 9, 4], seed=2, alpha=alpha) for _ in range(2))
    opt_a, opt_b = gdfast.Adam(a.params, ema=0.8), gdfast.Adam(b.params, ema=0.8)
    for _ in range(3):
        a.train_step(x, y, opt_a)
        b.loss_and_grad(x, y)
        opt_b.step()
    np.testing.assert_array_equal(a.params.data, b.params.data)
    for k, v in opt_a.ema_state().items():
        np.testing.assert_array_equal(v, opt_b.ema_state()[k])
