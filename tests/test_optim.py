"""The optimizers against their NumPy twins, on every SIMD path and thread count."""
import numpy as np
import pytest

import gdfast
from gdfast.reference import optim as ref

SIMD = gdfast.build_info()["simd_available"]

CONFIGS = [
    ("SGD", {}),
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    ("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"weight_decay": 0.01, "maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"centered": True}),
    ("RMSprop", {"momentum": 0.5, "weight_decay": 0.01}),
    ("RMSprop", {"centered": True, "momentum": 0.5, "maximize": True, "alpha": 0.9}),
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("Adam", {"weight_decay": 0.01, "betas": (0.5, 0.9)}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.01, "maximize": True}),
    ("AdamW", {}),
    ("AdamW", {"amsgrad": True, "maximize": True, "weight_decay": 0.1}),
    ("Adagrad", {}),
    ("Adagrad", {"lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("Adagrad", {"maximize": True, "eps": 1e-6}),
]


def _ids(configs):
    return [f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for c, kw in configs]


IDS = _ids(CONFIGS)


def _all_combinations():
    """Every optimizer with every combination of its options (each at an off and an on value)."""
    from itertools import product
    options = {
        "SGD": {"momentum": [0.0, 0.9], "dampening": [0.0, 0.1], "nesterov": [False, True],
                "weight_decay": [0.0, 0.01], "maximize": [False, True]},
        "RMSprop": {"centered": [False, True], "momentum": [0.0, 0.5],
                    "weight_decay": [0.0, 0.01], "maximize": [False, True]},
        "Adam": {"amsgrad": [False, True], "weight_decay": [0.0, 0.01], "maximize": [False, True]},
        "AdamW": {"amsgrad": [False, True], "weight_decay": [0.0, 0.1], "maximize": [False, True]},
        "Adagrad": {"lr_decay": [0.0, 0.01], "weight_decay": [0.0, 0.01],
                    "initial_accumulator_value": [0.0, 0.1], "maximize": [False, True]},
    }
    out = []
    for cls, opts in options.items():
        for values in product(*opts.values()):
            kw = dict(zip(opts, values))
            if kw.get("nesterov") and (kw["momentum"] == 0 or kw["dampening"] != 0):
                continue  # refused, as in PyTorch (tested with the bad input)
            out.append((cls, kw))
    return out


COMBOS = _all_combinations()


@pytest.fixture
def simd_threads():
    before = (gdfast.build_info()["simd"], gdfast.get_num_threads())

    def use(simd, threads):
        gdfast.set_simd(simd)
        gdfast.set_num_threads(threads)

    yield use
    gdfast.set_simd(before[0])
    gdfast.set_num_threads(before[1])


def _arrays(rng, sizes):
    return [rng.standard_normal(n).astype(np.float32) for n in sizes]


def _assert_close(got, want):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls,kw", COMBOS, ids=_ids(COMBOS))
def test_matches_reference_small_tensors(cls, kw, threads, simd, simd_threads):
    simd_threads(simd, threads)
    rng = np.random.default_rng(1)
    params = _arrays(rng, [0, 1, 7, 1023, 64])
    twin = [p.copy() for p in params]
    opt = getattr(gdfast, cls)(params, lr=0.01, **kw)
    oracle = getattr(ref, cls)(twin, lr=0.01, **kw)
    for t in range(50):
        grads = _arrays(rng, [p.size for p in params])
        clip = 5.0 if t % 3 == 0 else None  # exercise the fused clip too
        n1 = opt.step(grads, max_grad_norm=clip)
        n2 = oracle.step(grads, max_grad_norm=clip)
        if clip:
            assert n1 == pytest.approx(n2, rel=1e-12)
    _assert_close(params, twin)
    assert opt.state_dict()["step"] == 50


LARGE = [CONFIGS[3], CONFIGS[8], CONFIGS[12], CONFIGS[14], CONFIGS[16]]


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("cls,kw", LARGE, ids=[IDS[CONFIGS.index(c)] for c in LARGE])
def test_large_arena_threads_bitwise_and_reference(cls, kw, simd, simd_threads):
    rng = np.random.default_rng(2)
    shapes = {"w": (1_000_003,), "b": (7,)}
    init = rng.standard_normal(1_000_010).astype(np.float32)
    arenas, opts = [], []
    for threads in (1, 2):
        p = gdfast.Params(shapes)
        p.data[...] = init
        arenas.append(p)
        opts.append(getattr(gdfast, cls)(p, lr=0.01, **kw))
    twin = [init[:1_000_003].copy(), init[1_000_003:].copy()]
    oracle = getattr(ref, cls)(twin, lr=0.01, **kw)
    check_reference = simd == SIMD[-1]  # the small-tensor tests cover every path
    pool = [rng.standard_normal(1_000_010, dtype=np.float32) for _ in range(3)]
    for t in range(50):
        g = pool[t % 3]
        clip = 800.0 if t % 2 else None
        norms = []
        for threads, p, opt in zip((1, 2), arenas, opts):
            simd_threads(simd, threads)
            p.grad[...] = g
            norms.append(opt.step(max_grad_norm=clip))
        if check_reference:
            oracle.step([g[:1_000_003], g[1_000_003:]], max_grad_norm=clip)
        assert norms[0] == norms[1]
    np.testing.assert_array_equal(arenas[0].data, arenas[1].data)
    if check_reference:
        _assert_close([arenas[0]["w"], arenas[0]["b"]], twin)


def test_arena_param_groups_and_lr_changes(simd_threads):
    simd_threads(SIMD[-1], 2)
    rng = np.random.default_rng(3)
    p = gdfast.Params({"w1": (30, 20), "b1": (20,), "w2": (20, 3), "b2": (3,)})
    p.data[...] = rng.standard_normal(p.size)
    opt = gdfast.AdamW(p, lr=0.01, groups=[{"params": ["b1", "b2"], "weight_decay": 0.0}])
    assert [g["params"] for g in opt.param_groups] == [["b1", "b2"], ["w1", "w2"]]
    assert opt.param_groups[1]["weight_decay"] == 1e-2
    ow = ref.AdamW([p["w1"].copy(), p["w2"].copy()], lr=0.01)
    ob = ref.AdamW([p["b1"].copy(), p["b2"].copy()], lr=0.01, weight_decay=0.0)
    for t in range(60):
        p.grad[...] = rng.standard_normal(p.size)
        if t == 30:  # a schedule lowering lr on one group only
            opt.param_groups[1]["lr"] = 0.001
            ow.hyper["lr"] = 0.001
        opt.step()
        ow.step([p.grad_of("w1"), p.grad_of("w2")])
        ob.step([p.grad_of("b1"), p.grad_of("b2")])
    _assert_close([p["w1"], p["w2"], p["b1"], p["b2"]], ow.params + ob.params)


def test_list_param_groups_pytorch_style():
    rng = np.random.default_rng(4)
    a, b = _arrays(rng, [50, 5])
    ta, tb = a.copy(), b.copy()
    opt = gdfast.SGD([{"params": [a], "momentum": 0.9}, {"params": [b], "lr": 0.5}], lr=0.1)
    ra, rb = ref.SGD([ta], lr=0.1, momentum=0.9), ref.SGD([tb], lr=0.5)
    for _ in range(50):
        ga, gb = _arrays(rng, [50, 5])
        opt.step([ga, gb])
        ra.step([ga])
        rb.step([gb])
    _assert_close([a, b], [ta, tb])


def test_begin_end_step_equals_step():
    rng = np.random.default_rng(5)
    shapes = {"w": (100,), "b": (3,)}
    p1, p2 = gdfast.Params(shapes), gdfast.Params(shapes)
    p1.data[...] = p2.data[...] = rng.standard_normal(103)
    o1 = gdfast.Lookahead(gdfast.Adam(p1, lr=0.01), k=3)
    o2 = gdfast.Lookahead(gdfast.Adam(p2, lr=0.01), k=3)
    for _ in range(10):
        p1.grad[...] = p2.grad[...] = rng.standard_normal(103)
        o1.step()
        plan = o2._begin_step(p2)
        assert isinstance(plan, gdfast._kernels.StepPlan) and plan.size == 103
        plan.execute()
        o2._end_step()
    np.testing.assert_array_equal(p1.data, p2.data)
    with pytest.raises(ValueError, match="not the Params arena"):
        o2._begin_step(p1)
    with pytest.raises(ValueError, match="Params arena"):
        gdfast.Adam([np.zeros(3, np.float32)])._begin_step(p1)


def test_lookahead_matches_reference():
    rng = np.random.default_rng(6)
    params = _arrays(rng, [40, 3])
    twin = [p.copy() for p in params]
    opt = gdfast.Lookahead(gdfast.SGD(params, lr=0.1, momentum=0.9), k=4, alpha=0.3)
    oracle = ref.Lookahead(ref.SGD(twin, lr=0.1, momentum=0.9), k=4, alpha=0.3)
    for _ in range(50):
        grads = _arrays(rng, [40, 3])
        opt.step(grads)
        oracle.step(grads)
    _assert_close(params, twin)
    with pytest.raises(ValueError, match="k must be"):
        gdfast.Lookahead(gdfast.SGD(params), k=0)
    with pytest.raises(ValueError, match="alpha must be"):
        gdfast.Lookahead(gdfast.SGD(params), alpha=1.5)


@pytest.mark.parametrize("cls,kw", [CONFIGS[2], CONFIGS[8], CONFIGS[12], CONFIGS[16]],
                         ids=["SGD", "RMSprop", "Adam", "Adagrad"])
def test_state_dict_and_file_resume_bit_exactly(cls, kw, tmp_path):
    rng = np.random.default_rng(7)
    p = gdfast.Params({"w": (33, 3), "b": (3,)})
    p.data[...] = rng.standard_normal(p.size)
    grads = [rng.standard_normal(p.size).astype(np.float32) for _ in range(20)]
    opt = gdfast.Lookahead(getattr(gdfast, cls)(p, lr=0.01, **kw), k=3)
    for g in grads[:10]:
        p.grad[...] = g
        opt.step()
    sd, saved = opt.state_dict(), p.data.copy()
    opt.save(tmp_path / "opt.state")
    for g in grads[10:]:
        p.grad[...] = g
        opt.step()
    want = p.data.copy()
    for restore in ("dict", "file"):
        q = gdfast.Params({"w": (33, 3), "b": (3,)})
        q.data[...] = saved
        fresh = gdfast.Lookahead(getattr(gdfast, cls)(q, **{**kw, "lr": 0.5}), k=3)
        if restore == "dict":
            fresh.load_state_dict(sd)
        else:
            fresh.load(tmp_path / "opt.state")
        assert fresh.param_groups[0]["lr"] == 0.01
        for g in grads[10:]:
            q.grad[...] = g
            fresh.step()
        np.testing.assert_array_equal(q.data, want)
    assert set(sd["state"]) == {"w", "b"} and sd["step"] == 10


def test_file_of_another_optimizer_is_refused(tmp_path):
    p = [np.ones(4, np.float32)]
    gdfast.Adam(p).save(tmp_path / "adam.npz")
    with np.load(tmp_path / "adam.npz", allow_pickle=False) as z:
        assert "__meta__" in z.files and all(z[f].dtype != object for f in z.files)
    with pytest.raises(ValueError, match="holds Adam state"):
        gdfast.AdamW(p).load(tmp_path / "adam.npz")


def test_load_state_dict_checks_before_changing():
    p = [np.ones(4, np.float32)]
    opt = gdfast.Adam(p, lr=0.1)
    opt.step([np.ones(4, np.float32)])
    sd = opt.state_dict()
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["param_groups"][0]["betas"] = (1.0, 0.9)
    bad["step"] = 7
    with pytest.raises(ValueError, match="betas"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["step"] == before["step"] and after["param_groups"] == before["param_groups"]
    np.testing.assert_array_equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])
    opt.load_state_dict(sd)


def _bad_input_cases():
    ok = lambda: [np.zeros((2, 3), np.float32)]  # noqa: E731
    return [
        ("params", lambda: gdfast.Adam([]), ValueError, "params is empty"),
        ("params", lambda: gdfast.Adam([np.zeros(3)]), TypeError, "dtype float32"),
        ("params", lambda: gdfast.Adam([np.zeros((3, 4), np.float32)[:, 1]]), ValueError,
         "C-contiguous"),
        ("params", lambda: gdfast.Adam([[1.0, 2.0]]), TypeError, "numpy.ndarray"),
        ("lr", lambda: gdfast.Adam(ok(), lr=-1), ValueError, "'lr'] must be >= 0"),
        ("betas", lambda: gdfast.Adam(ok(), betas=(0.9, 1.0)), ValueError, "betas"),
        ("betas", lambda: gdfast.Adam(ok(), betas=(-0.1, 0.9)), ValueError, "betas"),
        ("option", lambda: gdfast.Adam(ok(), momentum=0.9), TypeError, "momentum"),
        ("option", lambda: gdfast.Adam([{"params": ok(), "foo": 1}]), ValueError,
         "unknown option 'foo'"),
        ("nesterov", lambda: gdfast.SGD(ok(), nesterov=True), ValueError, "nesterov"),
        ("eps", lambda: gdfast.RMSprop(ok(), eps=-1), ValueError, "eps"),
        ("lr", lambda: gdfast.SGD(ok(), lr="0.1"), TypeError, r"\['lr'\] must be a number"),
        ("init", lambda: gdfast.Adagrad(ok(), initial_accumulator_value=-1), ValueError,
         "initial_accumulator_value"),
    ]


@pytest.mark.parametrize("what,make,exc,match", _bad_input_cases(),
                         ids=[c[0] + str(i) for i, c in enumerate(_bad_input_cases())])
def test_bad_construction_is_refused(what, make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_read_only_and_aliased_params_are_refused():
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        gdfast.SGD([ro])
    a = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        gdfast.SGD([a, a])
    with pytest.raises(ValueError, match="share memory"):
        gdfast.SGD([a[:6], a[4:]])
    p = gdfast.Params({"w": 3, "b": 2})
    with pytest.raises(ValueError, match="each tensor belongs to one group"):
        gdfast.SGD(p, groups=[{"params": ["w"]}, {"params": ["w", "b"]}])
    with pytest.raises(ValueError, match="not in the arena"):
        gdfast.SGD(p, groups=[{"params": ["x"]}])


def test_bad_step_input_leaves_state_untouched():
    rng = np.random.default_rng(8)
    params = _arrays(rng, [6, 4])
    opt = gdfast.Adam(params, lr=0.1)
    opt.step(_arrays(rng, [6, 4]))
    snap = (opt.state_dict(), [p.copy() for p in params])
    g_ok = _arrays(rng, [6, 4])
    bad = [
        ([g_ok[0]], ValueError, "expected 2"),
        ([g_ok[0].astype(np.float64), g_ok[1]], TypeError, r"grads\[0\] must have dtype float32"),
        ([g_ok[0], np.zeros(5, np.float32)], ValueError, r"grads\[1\] has shape"),
        ([g_ok[0], np.zeros((4, 2), np.float32)[:, 0]], ValueError, "C-contiguous"),
        ([g_ok[0], params[1]], ValueError, "shares memory with a parameter"),
        ([g_ok[0], params[0][:4]], ValueError, "shares memory with a parameter"),
        ([g_ok[0], [1.0, 2, 3, 4]], TypeError, "numpy.ndarray"),
        (None, TypeError, "grads is required"),
        (g_ok[0], TypeError, "list of float32 arrays"),
    ]
    for grads, exc, match in bad:
        with pytest.raises(exc, match=match):
            opt.step(grads)
    with pytest.raises(ValueError, match="max_grad_norm"):
        opt.step(g_ok, max_grad_norm=-1.0)
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match="'lr'] must be >= 0"):
        opt.step(g_ok)
    opt.param_groups[0]["lr"] = 0.1
    sd = opt.state_dict()
    assert sd["step"] == snap[0]["step"] == 1
    for key in sd["state"]:
        for name in sd["state"][key]:
            np.testing.assert_array_equal(sd["state"][key][name], snap[0]["state"][key][name])
    for p, q in zip(params, snap[1]):
        np.testing.assert_array_equal(p, q)
    arena = gdfast.Params({"w": 4})
    with pytest.raises(TypeError, match="grads must be omitted"):
        gdfast.SGD(arena).step([np.zeros(4, np.float32)])


def test_structural_option_change_is_refused():
    opt = gdfast.SGD([np.zeros(3, np.float32)], lr=0.1)
    opt.param_groups[0]["momentum"] = 0.9
    with pytest.raises(ValueError, match="did not allocate"):
        opt.step([np.zeros(3, np.float32)])


def test_clip_grad_norm_and_value(simd_threads):
    rng = np.random.default_rng(9)
    grads = _arrays(rng, [1000, 0, 33])
    twin = [g.copy() for g in grads]
    norm = gdfast.clip_grad_norm(grads, 1.0)
    want = ref.clip_grad_norm(twin, 1.0)
    assert norm == pytest.approx(want, rel=1e-12)
    _assert_close(grads, twin)
    assert ref.grad_norm(grads) == pytest.approx(1.0, rel=1e-5)
    # no clipping when below max_norm
    again = [g.copy() for g in grads]
    gdfast.clip_grad_norm(again, 10.0)
    for g, h in zip(again, grads):
        np.testing.assert_array_equal(g, h)
    gdfast.clip_grad_value(grads, 0.01)
    ref.clip_grad_value(twin, 0.01)
    for g, h in zip(grads, twin):
        np.testing.assert_array_equal(g, h)
    with pytest.raises(ValueError, match="share memory"):
        gdfast.clip_grad_norm([grads[0], grads[0]], 1.0)
    ro = np.ones(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        gdfast.clip_grad_value([ro], 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        gdfast.clip_grad_norm(grads, 0.0)
    # the norm of a large buffer is bitwise the same for 1 and 2 threads
    big = rng.standard_normal(3_000_001).astype(np.float32)
    norms = []
    for threads in (1, 2):
        simd_threads(SIMD[-1], threads)
        norms.append(gdfast._kernels.grad_norm([big]))
    assert norms[0] == norms[1] == pytest.approx(ref.grad_norm([big]), rel=1e-12)


def test_fused_clip_leaves_grads_unchanged_and_nan_propagates():
    p = [np.ones(8, np.float32)]
    g = [np.full(8, 10.0, np.float32)]
    opt = gdfast.SGD(p, lr=1.0)
    norm = opt.step(g, max_grad_norm=1.0)
    assert norm == pytest.approx(np.sqrt(800.0))
    np.testing.assert_array_equal(g[0], 10.0)
    np.testing.assert_allclose(p[0], 1.0 - 1.0 / np.sqrt(8), rtol=1e-5)
    g[0][3] = np.nan
    opt.step(g)
    assert np.isnan(p[0][3]) and np.isfinite(p[0][[0, 1, 2, 4]]).all()


def test_bandwidth_probes_report_positive_rates():
    assert gdfast._kernels.bandwidth_rmw(100_000, 3, 1, 2) > 1e8
    assert gdfast._kernels.bandwidth_triad(100_000, 2) > 1e8
    with pytest.raises(ValueError):
        gdfast._kernels.bandwidth_rmw(0)


@pytest.mark.parametrize("cls,kw", [CONFIGS[3], CONFIGS[14]], ids=["SGD", "AdamW"])
def test_segments_across_thread_boundaries_bitwise(cls, kw, simd_threads):
    # three segments (groups alternate), thread split falls inside the first
    shapes = {"w1": (600_001,), "b": (7,), "w2": (500_001,)}
    rng = np.random.default_rng(10)
    init = rng.standard_normal(1_100_009).astype(np.float32)
    groups = [{"params": ["b"], "weight_decay": 0.0, "lr": 0.02}]
    runs = []
    for threads in (1, 2):
        simd_threads(SIMD[-1], threads)
        p = gdfast.Params(shapes)
        p.data[...] = init
        opt = getattr(gdfast, cls)(p, lr=0.01, groups=groups, **kw)
        g_rng = np.random.default_rng(11)
        for _ in range(5):
            p.grad[...] = g_rng.standard_normal(p.size, dtype=np.float32)
            opt.step(max_grad_norm=500.0)
        runs.append(p.data.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    # the reference, one optimizer per group
    w1, b, w2 = init[:600_001].copy(), init[600_001:600_008].copy(), init[600_008:].copy()
    big = getattr(ref, cls)([w1, w2], lr=0.01, **kw)
    small = getattr(ref, cls)([b], lr=0.02, **{**kw, "weight_decay": 0.0})
    g_rng = np.random.default_rng(11)
    for _ in range(5):
        g = g_rng.standard_normal(1_100_009, dtype=np.float32)
        gs = [g[:600_001], g[600_001:600_008], g[600_008:]]
        _, hi, lo = ref.clip_coef(gs, 500.0)
        gs = [x * hi * lo for x in gs]
        big.step([gs[0], gs[2]])
        small.step([gs[1]])
    _assert_close([runs[0][:600_001], runs[0][600_001:600_008], runs[0][600_008:]], [w1, b, w2])
