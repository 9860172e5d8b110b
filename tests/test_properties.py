"""Property-based tests (hypothesis) of the optimizer kernels, gdfast.matmul and the MLP.

Every call either matches the NumPy reference (gdfast/reference/), with NaN
exactly where the reference has NaN, or raises a clear Python exception
naming the argument; after an exception nothing has changed (parameters,
state buffers, step count, gradients, `out`).

Inputs: random sizes and shapes, every SIMD path, 1 or 2 threads, values
drawn from all of float32 (NaN, +-Inf, subnormals, +-0, the largest and
smallest normals), wrong dtypes (float64, float16, integers), non-contiguous
views, read-only arrays and every aliasing the kernels must refuse.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gdfast
from gdfast.reference import mlp as ref_mlp
from gdfast.reference import optim as ref_optim

# The NumPy reference divides by the zeros, NaNs and infinities the examples
# feed it; its warnings say nothing the assertions do not check.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:gdfast.reference")

SIMD = gdfast.build_info()["simd_available"]
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

F32 = np.float32
# Exactly representable in float32 (hypothesis refuses elements that round).
SPECIALS = [float(F32(v)) for v in (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40,
                                    1.1754944e-38, 3.4028235e38, -3.4028235e38, 1e30, 1e-30,
                                    1.0, -1.0)]
BAD_DTYPES = [np.float64, np.float16, np.int32, np.int64, np.uint8]


@pytest.fixture(autouse=True)
def ieee_and_restore_machine():
    """The reference does IEEE arithmetic and the draws include subnormals, so
    gdfast's flush-to-zero (on by default) is turned off for these tests."""
    before = (gdfast.build_info()["simd"], gdfast.get_num_threads(), gdfast.get_flush_denormal())
    gdfast.set_flush_denormal(False)
    yield
    gdfast.set_simd(before[0])
    gdfast.set_num_threads(before[1])
    gdfast.set_flush_denormal(before[2])


def machine(data):
    """Run the example on a drawn SIMD path and thread count."""
    gdfast.set_simd(data.draw(st.sampled_from(SIMD), label="simd"))
    gdfast.set_num_threads(data.draw(st.sampled_from([1, 2]), label="threads"))


def f32_array(shape, specials=True, scale=1.0):
    """Any float32 values (specials mixed in), or moderate ones in [-scale, scale]."""
    if specials:
        elements = st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True,
                                       allow_subnormal=True),
                             st.sampled_from(SPECIALS))
    else:
        elements = st.floats(-scale, scale, width=32, allow_subnormal=True)
    return hnp.arrays(F32, shape, elements=elements)


def assert_same(got, want, what=""):
    """Same NaN positions, same infinities, finite values equal to float32 rounding."""
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN pattern")
    finite = np.isfinite(want) & np.isfinite(got)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)],
                                  err_msg=f"{what}: infinities")
    np.testing.assert_allclose(got[finite], want[finite], rtol=4e-6, atol=0, err_msg=what)


# ---- optimizers ---------------------------------------------------------------

OPTIMIZERS = {
    "SGD": st.fixed_dictionaries({"lr": st.sampled_from([0.0, 1e-3, 0.1, 1.0])}, optional={
        "momentum": st.sampled_from([0.0, 0.5, 0.9]), "dampening": st.sampled_from([0.0, 0.1]),
        "weight_decay": st.sampled_from([0.0, 1e-2]), "maximize": st.booleans()}),
    "RMSprop": st.fixed_dictionaries({"lr": st.sampled_from([1e-3, 1e-2])}, optional={
        "alpha": st.sampled_from([0.0, 0.9, 0.99]), "eps": st.sampled_from([0.0, 1e-8]),
        "weight_decay": st.sampled_from([0.0, 1e-2]), "momentum": st.sampled_from([0.0, 0.5]),
        "centered": st.booleans(), "maximize": st.booleans()}),
    "Adam": st.fixed_dictionaries({"lr": st.sampled_from([1e-3, 0.1])}, optional={
        "betas": st.sampled_from([(0.9, 0.999), (0.0, 0.0), (0.5, 0.9)]),
        "eps": st.sampled_from([0.0, 1e-8]), "weight_decay": st.sampled_from([0.0, 1e-2]),
        "amsgrad": st.booleans(), "maximize": st.booleans()}),
    "AdamW": st.fixed_dictionaries({"lr": st.sampled_from([1e-3, 0.1])}, optional={
        "weight_decay": st.sampled_from([0.0, 1e-2, 0.5]), "amsgrad": st.booleans(),
        "maximize": st.booleans()}),
    "Adagrad": st.fixed_dictionaries({"lr": st.sampled_from([1e-2, 1.0])}, optional={
        "lr_decay": st.sampled_from([0.0, 0.1]), "weight_decay": st.sampled_from([0.0, 1e-2]),
        "initial_accumulator_value": st.sampled_from([0.0, 0.5]), "eps": st.sampled_from([0.0, 1e-10]),
        "maximize": st.booleans()}),
}


@st.composite
def optimizer_case(draw, specials=True):
    name = draw(st.sampled_from(sorted(OPTIMIZERS)))
    kw = draw(OPTIMIZERS[name])
    if name == "SGD" and kw.get("momentum") and not kw.get("dampening") and draw(st.booleans()):
        kw["nesterov"] = True
    sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=4))
    params = [draw(f32_array(n, specials)) for n in sizes]
    steps = [[draw(f32_array(n, specials)) for n in sizes] for _ in range(draw(st.integers(1, 3)))]
    return name, kw, params, steps


def state_of(opt):
    sd = opt.state_dict()
    return sd["step"], {k: {n: a.copy() for n, a in b.items()} for k, b in sd["state"].items()}


def assert_state_equal(a, b):
    assert a[0] == b[0], "step count changed"
    for key in a[1]:
        for name in a[1][key]:
            np.testing.assert_array_equal(a[1][key][name], b[1][key][name],
                                          err_msg=f"state {key} {name} changed")


@SETTINGS
@given(case=optimizer_case(), arena=st.booleans(), data=st.data())
def test_optimizer_step_matches_reference_on_any_values(case, arena, data):
    """List mode, or a Params arena (one fused pass over merged segments)."""
    name, kw, params, steps = case
    machine(data)
    theirs = [p.copy() for p in params]
    if arena:
        store = gdfast.Params({f"t{i}": p.size for i, p in enumerate(params)})
        mine = [store[f"t{i}"] for i in range(len(params))]
        for m, p in zip(mine, params):
            m[...] = p
        opt = getattr(gdfast, name)(store, **kw)
    else:
        mine = [p.copy() for p in params]
        opt = getattr(gdfast, name)(mine, **kw)
    ref = getattr(ref_optim, name)(theirs, **kw)
    with np.errstate(all="ignore"):
        for t, grads in enumerate(steps):
            if arena:
                for i, g in enumerate(grads):
                    store.grad_of(f"t{i}")[...] = g
                assert opt.step() is None
            else:
                assert opt.step([g.copy() for g in grads]) is None
            ref.step([g.copy() for g in grads])
            for i, (p, q) in enumerate(zip(mine, theirs)):
                assert_same(p, q, f"{name}{kw} step {t + 1} params[{i}]")
    assert opt.state_dict()["step"] == len(steps)


@SETTINGS
@given(case=optimizer_case(specials=False), max_norm=st.sampled_from([1e-3, 1.0, 1e6]),
       poison=st.sampled_from([None, np.nan, np.inf]), data=st.data())
def test_fused_clipping_matches_reference(case, max_norm, poison, data):
    name, kw, params, steps = case
    machine(data)
    if poison is not None and steps[0][0].size:
        steps[0][0][data.draw(st.integers(0, steps[0][0].size - 1))] = poison
    mine, theirs = [p.copy() for p in params], [p.copy() for p in params]
    opt = getattr(gdfast, name)(mine, **kw)
    ref = getattr(ref_optim, name)(theirs, **kw)
    with np.errstate(all="ignore"):
        for grads in steps:
            before = [g.copy() for g in grads]
            norm = opt.step(grads, max_grad_norm=max_norm)
            want = ref.step([g.copy() for g in grads], max_grad_norm=max_norm)
            for g, b in zip(grads, before):  # the fused clip never writes the gradients
                np.testing.assert_array_equal(g, b)
            if np.isnan(want):
                assert np.isnan(norm)
            else:
                assert norm == pytest.approx(want, rel=1e-12)
            for p, q in zip(mine, theirs):
                # the clip factor is rounded from a norm summed in another order
                np.testing.assert_array_equal(np.isnan(p), np.isnan(q))
                ok = ~np.isnan(q)
                np.testing.assert_allclose(p[ok], q[ok], rtol=1e-5, atol=1e-6)


def bad_grads(draw, params):
    """(grads, exception, message pattern) for a step that must be refused."""
    n = len(params)
    kind = draw(st.sampled_from(["dtype", "strided", "shape", "count", "alias", "overlap",
                                 "type", "none"]))
    good = [np.zeros_like(p) for p in params]
    i = draw(st.integers(0, n - 1))
    if kind == "dtype":
        good[i] = good[i].astype(draw(st.sampled_from(BAD_DTYPES)))
        return good, TypeError, rf"grads\[{i}\] must have dtype float32"
    if kind == "strided":
        assume(params[i].size > 1)
        good[i] = np.zeros(2 * params[i].size, F32)[::2]
        return good, ValueError, rf"grads\[{i}\] must be C-contiguous"
    if kind == "shape":
        good[i] = np.zeros(params[i].size + 1, F32)
        return good, ValueError, rf"grads\[{i}\] has shape"
    if kind == "count":
        return good + [np.zeros(1, F32)], ValueError, "expected"
    if kind == "alias":
        assume(params[i].size > 0)
        good[i] = params[i]
        return good, ValueError, rf"grads\[{i}\] shares memory with a parameter"
    if kind == "overlap":
        j = draw(st.integers(0, n - 1))
        assume(params[i].size > 0 and params[j].size >= params[i].size)
        good[i] = params[j][:params[i].size]
        return good, ValueError, rf"grads\[{i}\] shares memory with a parameter"
    if kind == "type":
        good[i] = good[i].tolist()
        return good, TypeError, rf"grads\[{i}\] must be a numpy.ndarray"
    return None, TypeError, "grads is required"


@SETTINGS
@given(case=optimizer_case(specials=False), data=st.data())
def test_bad_steps_are_refused_and_change_nothing(case, data):
    name, kw, params, steps = case
    machine(data)
    # the parameters as slices of one buffer, so overlapping views are possible
    flat = np.concatenate([np.zeros(0, F32)] + params)
    views, off = [], 0
    for p in params:
        views.append(flat[off:off + p.size])
        off += p.size
    opt = getattr(gdfast, name)(views, **kw)
    opt.step(steps[0])
    before_p, before_s = flat.copy(), state_of(opt)
    how = data.draw(st.sampled_from(["grads", "hyper", "max_norm"]))
    if how == "grads":
        grads, exc, pattern = bad_grads(data.draw, views)
        call = lambda: opt.step(grads)  # noqa: E731
    elif how == "hyper":
        key, value = data.draw(st.sampled_from(
            [("lr", -1.0), ("lr", float("nan")), ("weight_decay", -0.5)]
            + ([("eps", float("nan"))] if name != "SGD" else [])
            + ([("betas", (1.0, 0.9)), ("betas", (0.9, -0.1))] if "Adam" in name else [])
            + ([("momentum", -0.1)] if name in ("SGD", "RMSprop") else [])
            + ([("centered", True)] if name == "RMSprop" and not kw.get("centered") else [])))
        old = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        exc, pattern = ValueError, "param_groups\\[0\\]"
        call = lambda: opt.step(steps[0])  # noqa: E731
    else:
        bad = data.draw(st.sampled_from([0.0, -1.0, float("nan")]))
        exc, pattern = ValueError, "max_grad_norm must be > 0"
        call = lambda: opt.step(steps[0], max_grad_norm=bad)  # noqa: E731
    with pytest.raises(exc, match=pattern):
        call()
    np.testing.assert_array_equal(flat, before_p)
    assert_state_equal(state_of(opt), before_s)
    if how == "hyper":
        opt.param_groups[0][key] = old
    # and the optimizer still works, in step with a reference that never saw the bad call
    ref_params = [p.copy() for p in params]
    ref = getattr(ref_optim, name)(ref_params, **kw)
    ref.step(steps[0])
    grads = steps[-1] if len(steps) > 1 else steps[0]
    opt.step(grads)
    ref.step(grads)
    for v, q in zip(views, ref_params):
        assert_same(v, q, "after a refused step")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(BAD_DTYPES), name=st.sampled_from(sorted(OPTIMIZERS)),
       kind=st.sampled_from(["dtype", "strided", "readonly", "twice", "overlap", "2d-view"]))
def test_bad_parameters_are_refused_at_construction(dtype, name, kind):
    cls = getattr(gdfast, name)
    base = np.zeros(64, F32)
    if kind == "dtype":
        params, exc, pattern = [np.zeros(8, dtype)], TypeError, r"params\[0\] must have dtype"
    elif kind == "strided":
        params, exc, pattern = [base[::2]], ValueError, "C-contiguous"
    elif kind == "readonly":
        base.flags.writeable = False
        params, exc, pattern = [base], ValueError, "writeable"
    elif kind == "twice":
        params, exc, pattern = [base, base], ValueError, "share memory"
    elif kind == "overlap":
        params, exc, pattern = [base[:40], base[30:]], ValueError, "share memory"
    else:
        params, exc, pattern = [base.reshape(8, 8)[:, :4]], ValueError, "C-contiguous"
    with pytest.raises(exc, match=pattern):
        cls(params)


@SETTINGS
@given(grads=st.lists(st.integers(0, 200), min_size=1, max_size=4).flatmap(
           lambda sizes: st.tuples(*[f32_array(n) for n in sizes])),
       max_norm=st.sampled_from([1e-30, 1e-3, 1.0, 1e30]), data=st.data())
def test_clip_grad_norm_and_value_match_reference(grads, max_norm, data):
    machine(data)
    mine, theirs = [g.copy() for g in grads], [g.copy() for g in grads]
    with np.errstate(all="ignore"):
        norm = gdfast.clip_grad_norm(mine, max_norm)
        want = ref_optim.clip_grad_norm(theirs, max_norm)
    if np.isnan(want):
        assert np.isnan(norm)
    else:
        assert norm == pytest.approx(want, rel=1e-12)
    for g, w in zip(mine, theirs):
        if np.isfinite(want):
            assert_same(g, w, "clip_grad_norm")
        else:  # the factor is 0 or NaN: only the NaN pattern is meaningful
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    mine, theirs = [g.copy() for g in grads], [g.copy() for g in grads]
    gdfast.clip_grad_value(mine, max_norm)
    ref_optim.clip_grad_value(theirs, max_norm)
    for g, w in zip(mine, theirs):
        np.testing.assert_array_equal(g, w)


def test_clip_functions_refuse_bad_input_and_keep_values():
    g = np.arange(10, dtype=F32)
    for bad, exc, pattern in [([g, g], ValueError, "share memory"),
                              ([g[::2]], ValueError, "C-contiguous"),
                              ([g.astype(np.float64)], TypeError, "dtype float32"),
                              ([g[2:], g[:5]], ValueError, "share memory")]:
        with pytest.raises(exc, match=pattern):
            gdfast.clip_grad_norm(bad, 1.0)
        with pytest.raises(exc, match=pattern):
            gdfast.clip_grad_value(bad, 1.0)
        np.testing.assert_array_equal(g, np.arange(10, dtype=F32))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="must be > 0"):
            gdfast.clip_grad_norm([g], bad)
    with pytest.raises(ValueError, match="must be >= 0"):
        gdfast.clip_grad_value([g], float("nan"))
    ro = np.ones(4, F32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        gdfast.clip_grad_norm([ro], 1.0)


# ---- matmul ---------------------------------------------------------------------

DIMS = st.one_of(st.integers(0, 20), st.integers(20, 140))


@st.composite
def matmul_case(draw):
    m, n, k = draw(DIMS), draw(DIMS), draw(DIMS)
    ta, tb = draw(st.booleans()), draw(st.booleans())
    a = draw(f32_array((k, m) if ta else (m, k), specials=False, scale=100.0))
    b = draw(f32_array((n, k) if tb else (k, n), specials=False, scale=100.0))
    # a few NaN/Inf planted: in float64 the reference then has NaN/Inf exactly where we must
    for arr in (a, b):
        for _ in range(draw(st.integers(0, 2))):
            if arr.size:
                arr.flat[draw(st.integers(0, arr.size - 1))] = draw(
                    st.sampled_from([np.nan, np.inf, -np.inf, 1e-42]))
    alpha = draw(st.sampled_from([1.0, -0.5, 0.0, 2.0]))
    beta = draw(st.sampled_from([0.0, 1.0, -1.0, 0.25]))
    return a, b, ta, tb, alpha, beta


@SETTINGS
@given(case=matmul_case(), data=st.data())
def test_matmul_matches_float64_reference(case, data):
    a, b, ta, tb, alpha, beta = case
    machine(data)
    opa = a.T.astype(np.float64) if ta else a.astype(np.float64)
    opb = b.T.astype(np.float64) if tb else b.astype(np.float64)
    m, n = opa.shape[0], opb.shape[1]
    c0 = data.draw(f32_array((m, n), specials=False, scale=10.0))
    out = np.full((m, n), np.nan, F32) if beta == 0 else c0.copy()
    with np.errstate(all="ignore"):
        want = alpha * (opa @ opb) + (beta * c0.astype(np.float64) if beta != 0 else 0.0)
        got = gdfast.matmul(a, b, trans_a=ta, trans_b=tb, out=out, alpha=alpha, beta=beta)
        bound = abs(alpha) * (np.abs(np.nan_to_num(opa, posinf=0, neginf=0))
                              @ np.abs(np.nan_to_num(opb, posinf=0, neginf=0))) \
            + abs(beta) * np.abs(c0)
    assert got is out and got.shape == (m, n)
    # beta == 0 never reads out (here all NaN): NaN only where the reference has one
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN pattern")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf].astype(F32), err_msg="infinities")
    fin = np.isfinite(want)
    err = np.abs(got[fin].astype(np.float64) - want[fin])
    assert np.all(err <= 2e-6 * (max(opa.shape[1], 1) + 2) * bound[fin] + 1e-37), err.max()
    if beta == 0 and data.draw(st.booleans(), label="no out"):
        fresh = gdfast.matmul(a, b, trans_a=ta, trans_b=tb, alpha=alpha)
        np.testing.assert_array_equal(fresh, got)


@SETTINGS
@given(kind=st.sampled_from(["dtype_a", "dtype_b", "dtype_out", "strided_a", "transposed_b",
                             "ndim", "inner", "out_shape", "out_is_a", "out_overlaps_b",
                             "out_readonly", "beta_no_out", "list"]),
       dtype=st.sampled_from(BAD_DTYPES), m=st.integers(2, 9), n=st.integers(2, 9),
       k=st.integers(2, 9))
def test_matmul_bad_input_is_refused_and_out_untouched(kind, dtype, m, n, k):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(F32)
    b = rng.standard_normal((k, n)).astype(F32)
    out = rng.standard_normal((m, n)).astype(F32)
    kw = {"out": out}
    if kind == "dtype_a":
        a, exc, pat = a.astype(dtype), TypeError, "a must have dtype float32"
    elif kind == "dtype_b":
        b, exc, pat = b.astype(dtype), TypeError, "b must have dtype float32"
    elif kind == "dtype_out":
        out = kw["out"] = out.astype(dtype)
        exc, pat = TypeError, "out must have dtype float32"
    elif kind == "strided_a":
        a, exc, pat = np.zeros((m, 2 * k), F32)[:, ::2], ValueError, "a must be C-contiguous"
    elif kind == "transposed_b":
        b, exc, pat = np.zeros((n, k), F32).T, ValueError, "b must be C-contiguous"
    elif kind == "ndim":
        a, exc, pat = a.reshape(-1), ValueError, "a must be 2-D"
    elif kind == "inner":
        b, exc, pat = np.zeros((k + 1, n), F32), ValueError, "inner dimensions differ"
    elif kind == "out_shape":
        out = kw["out"] = np.zeros((m, n + 1), F32)
        exc, pat = ValueError, "out must have shape"
    elif kind == "out_is_a":
        a = np.zeros((m, m), F32)
        b = np.zeros((m, m), F32)
        out = kw["out"] = a
        exc, pat = ValueError, "out must not share memory"
    elif kind == "out_overlaps_b":
        buf = np.zeros(k * n + m * n, F32)
        b = buf[:k * n].reshape(k, n)
        out = kw["out"] = buf[k * n - 1:k * n - 1 + m * n].reshape(m, n)
        exc, pat = ValueError, "out must not share memory"
    elif kind == "out_readonly":
        out.flags.writeable = False
        exc, pat = ValueError, "out must be writeable"
    elif kind == "beta_no_out":
        kw = {"beta": 1.0}
        exc, pat = ValueError, "needs an `out` array"
    else:
        a, exc, pat = a.tolist(), TypeError, "a must be a numpy.ndarray"
    before = np.array(out, copy=True)
    with pytest.raises(exc, match=pat):
        gdfast.matmul(a, b, **kw)
    np.testing.assert_array_equal(out, before)


# ---- MLP ------------------------------------------------------------------------

@st.composite
def mlp_case(draw):
    sizes = draw(st.lists(st.integers(1, 24), min_size=2, max_size=4))
    activation = draw(st.sampled_from(["relu", "tanh", "sigmoid", "identity"]))
    loss = draw(st.sampled_from(["cross_entropy", "mse"]))
    n = draw(st.integers(1, 40))
    x = draw(f32_array((n, sizes[0]), specials=False, scale=3.0))
    if draw(st.booleans()):
        y = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32, np.uint8])), n,
                            elements=st.integers(0, sizes[-1] - 1)))
    else:
        y = draw(f32_array((n, sizes[-1]), specials=False, scale=1.0))
    return sizes, activation, loss, x, y, draw(st.integers(0, 2**16))


def reference_of(net):
    return ref_mlp.MLP(net.sizes, net.activation, net.loss, net.output_activation,
                       params={k: v.astype(np.float64) for k, v in net.params.items()})


@SETTINGS
@given(case=mlp_case(), data=st.data())
def test_mlp_matches_reference_on_random_shapes(case, data):
    sizes, activation, loss, x, y, seed = case
    machine(data)
    net = gdfast.MLP(sizes, activation=activation, loss=loss, init="xavier", seed=seed)
    ref = reference_of(net)
    got = net.loss_and_grad(x, y)
    want, grads = ref.loss_and_grad(x, y)
    assert got == pytest.approx(want, rel=2e-4, abs=1e-5)
    for name, g in grads.items():
        scale = max(1.0, float(np.abs(g).max(initial=0.0)))
        np.testing.assert_allclose(net.params.grad_of(name) / scale, g / scale, atol=2e-5,
                                   err_msg=name)
    np.testing.assert_allclose(net.forward(x), ref.forward(x), rtol=1e-4, atol=2e-6)


def reference_loss(ref, x, y):
    """The reference loss with the kernels' convention 0 * log(0) = 0 (a class
    with target 0 and probability 0 adds nothing), NaN still propagating."""
    if ref.loss != "cross_entropy":
        return ref.loss_and_grad(x, y)[0]
    z = ref._forward(x)[-1]
    t = ref_mlp.targets_of(y, ref.sizes[-1], np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    terms = np.where((t != 0) | np.isnan(logp), t * logp, 0.0)
    return -terms.sum() / len(z)


@SETTINGS
@given(case=mlp_case(), poison=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_mlp_nan_and_inf_inputs_propagate_like_the_reference(case, poison, data):
    """A non-finite input never silently turns into a finite output or loss."""
    sizes, activation, loss, x, y, seed = case
    machine(data)
    row = data.draw(st.integers(0, x.shape[0] - 1))
    x[row, data.draw(st.integers(0, x.shape[1] - 1))] = poison
    net = gdfast.MLP(sizes, activation=activation, loss=loss, init="xavier", seed=seed)
    ref = reference_of(net)
    with np.errstate(all="ignore"):
        want = ref.forward(x)
        got = net.forward(x)
        want_loss = reference_loss(ref, x, y)
        got_loss = net.loss_and_grad(x, y)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN pattern")
    assert np.isnan(got_loss) == np.isnan(want_loss)
    if np.isfinite(want_loss):
        assert got_loss == pytest.approx(want_loss, rel=1e-3, abs=1e-4)
    else:
        assert not np.isfinite(got_loss)


@SETTINGS
@given(case=mlp_case(), kind=st.sampled_from(
           ["x_dtype", "x_strided", "x_width", "x_empty", "y_len", "y_label_high", "y_label_neg",
            "y_dtype", "y_targets_shape", "y_list"]), data=st.data())
def test_mlp_bad_input_is_refused_and_changes_nothing(case, kind, data):
    sizes, activation, loss, x, y, seed = case
    machine(data)
    net = gdfast.MLP(sizes, activation=activation, loss=loss, seed=seed)
    n, n_out = x.shape[0], sizes[-1]
    labels = np.zeros(n, np.int64)
    if kind == "x_dtype":
        x, y, exc, pat = x.astype(data.draw(st.sampled_from(BAD_DTYPES))), labels, TypeError, "x must have dtype"
    elif kind == "x_strided":
        x, y, exc, pat = np.zeros((n, 2 * sizes[0]), F32)[:, ::2], labels, ValueError, "C-contiguous"
        assume(sizes[0] > 1)
    elif kind == "x_width":
        x, y, exc, pat = np.zeros((n, sizes[0] + 1), F32), labels, ValueError, "x must have shape"
    elif kind == "x_empty":
        x, y, exc, pat = np.zeros((0, sizes[0]), F32), labels[:0], ValueError, "at least one row"
    elif kind == "y_len":
        y, exc, pat = np.zeros(n + 1, np.int64), ValueError, "must have shape"
    elif kind == "y_label_high":
        y = labels.copy()
        y[data.draw(st.integers(0, n - 1))] = n_out
        exc, pat = ValueError, "is not a class label"
    elif kind == "y_label_neg":
        y = labels.copy()
        y[-1] = -1
        exc, pat = ValueError, "is not a class label"
    elif kind == "y_dtype":
        y, exc, pat = np.zeros((n, n_out), np.float64), TypeError, "y must hold"
    elif kind == "y_targets_shape":
        y, exc, pat = np.zeros((n, n_out + 1), F32), ValueError, "targets y must have shape"
    else:
        y, exc, pat = labels.tolist(), TypeError, "y must be a numpy.ndarray"
    net.params.grad[...] = 7.0
    data_before = net.params.data.copy()
    with pytest.raises(exc, match=pat):
        net.loss_and_grad(x, y)
    np.testing.assert_array_equal(net.params.data, data_before)
    assert np.all(net.params.grad == 7.0), "gradients written by a refused call"
    if kind.startswith("x_") and kind != "x_empty":
        with pytest.raises(exc, match=pat):
            net.forward(x)
