import math

import numpy as np
import pytest

import gdfast
from conftest import assert_same_state
from gdfast.reference.mlp import MLP as RefMLP

ACTS = ["identity", "relu", "sigmoid", "tanh"]
LOSSES = ["cross_entropy", "mse"]


def reference_of(net, dtype=np.float64):
    params = {name: net.params[name] for name in net.params}
    return RefMLP(net.sizes, net.activation, net.loss, net.output_activation, params, dtype)


def batch(rng, n, sizes, targets=False):
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    if targets:
        t = rng.random((n, sizes[-1])).astype(np.float32)
        return x, t / t.sum(axis=1, keepdims=True)
    return x, rng.integers(0, sizes[-1], n).astype(np.int32)


def assert_matches_reference(net, x, y):
    """Forward, loss and every gradient of the C MLP against its NumPy twin."""
    ref = reference_of(net)
    np.testing.assert_allclose(net.forward(x), ref.forward(x), rtol=1e-4, atol=1e-6)
    loss_c = net.loss_and_grad(x, y)
    loss_r, grads = ref.loss_and_grad(x, y)
    assert loss_c == pytest.approx(loss_r, rel=1e-5)
    for name in net.params:
        scale = np.abs(grads[name]).max() + 1e-12
        np.testing.assert_allclose(net.params.grad_of(name) / scale, grads[name] / scale,
                                   atol=1e-5, err_msg=name)


@pytest.mark.parametrize("targets", [False, True])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS + [["tanh", "sigmoid"], ["sigmoid", "identity", "tanh"],
                                        ["relu", "tanh", "identity", "sigmoid"]], ids=str)
def test_reference_gradients_match_finite_differences(act, loss, targets):
    rng = np.random.default_rng(0)
    sizes = [5, 4, 3, 3] if isinstance(act, str) else [5] + [4] * len(act) + [3]
    ref = RefMLP(sizes, act, loss)
    for name, p in ref.params.items():
        p[...] = rng.standard_normal(p.shape)
    x, y = batch(rng, 6, sizes, targets)
    x = x.astype(np.float64) + 0.1  # keep ReLU inputs away from the kink
    _, grads = ref.loss_and_grad(x, y)
    h = 1e-6
    for name, p in ref.params.items():
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up, _ = ref.loss_and_grad(x, y)
            p[idx] = old - h
            down, _ = ref.loss_and_grad(x, y)
            p[idx] = old
            numeric[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("n", [1, 2, 37])  # 1 and 2 take GEMM's dot-product and outer-product paths
@pytest.mark.parametrize("targets", [False, True])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS)
def test_c_mlp_matches_reference(simd, act, loss, targets, n):
    rng = np.random.default_rng(1)
    net = gdfast.MLP([30, 23, 17, 7], activation=act, loss=loss, init="xavier", seed=2)
    x, y = batch(rng, n, net.sizes, targets)
    assert_matches_reference(net, x, y)


def test_mnist_sized_network_matches_reference():
    rng = np.random.default_rng(3)
    net = gdfast.MLP([784, 256, 128, 10], seed=4)
    ref = reference_of(net)
    x = rng.random((130, 784)).astype(np.float32)
    y = rng.integers(0, 10, 130)
    loss_c = net.loss_and_grad(x, y)
    loss_r, grads = ref.loss_and_grad(x, y)
    assert loss_c == pytest.approx(loss_r, rel=1e-5)
    for name in net.params:
        scale = np.abs(grads[name]).max()
        np.testing.assert_allclose(net.params.grad_of(name) / scale, grads[name] / scale,
                                   atol=1e-5, err_msg=name)


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_wide_network_matches_reference(simd, act):
    # 1024-wide layers: the GEMMs take the packed path with every epilogue
    rng = np.random.default_rng(8)
    net = gdfast.MLP([300, 1024, 1024, 10], activation=act, seed=9)
    assert_matches_reference(net, *batch(rng, 40, net.sizes))


@pytest.mark.parametrize("act", ["relu", ["relu", "tanh"]], ids=str)
def test_one_and_two_threads_agree_bitwise(act):
    rng = np.random.default_rng(5)
    net = gdfast.MLP([784, 256, 128, 10], activation=act, seed=6)
    x, y = batch(rng, 96, net.sizes)
    before = gdfast.get_num_threads()
    try:
        gdfast.set_num_threads(1)
        l1, g1 = net.loss_and_grad(x, y), net.params.grad.copy()
        gdfast.set_num_threads(2)
        l2, g2 = net.loss_and_grad(x, y), net.params.grad.copy()
    finally:
        gdfast.set_num_threads(before)
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.skipif("avx512" not in gdfast.build_info()["simd_available"],
                    reason="this CPU has no AVX-512")
@pytest.mark.parametrize("act,loss", [("relu", "cross_entropy"), ("sigmoid", "mse"),
                                      ("tanh", "cross_entropy")])
@pytest.mark.parametrize("n", [1, 32])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_avx512_trains_to_the_avx2_bits(act, loss, n, alpha):
    # GEMM and optimizer kernels give every path's bits on AVX-512 (the same
    # FMA chains and write-back as AVX2, the same separately rounded updates),
    # the L2 term's write-back of full and part tiles too.
    rng = np.random.default_rng(7)
    sizes = [784, 100, 37, 10]
    data = [batch(rng, n, sizes, targets=loss == "mse") for _ in range(4)]
    before = gdfast.build_info()["simd"]
    nets = []
    try:
        for name in ("avx2", "avx512"):
            gdfast.set_simd(name)
            net = gdfast.MLP(sizes, activation=act, loss=loss, seed=2, alpha=alpha)
            opt = gdfast.Adam(net.params, lr=1e-2)
            losses = [net.train_step(x, y, opt) for x, y in data]
            nets.append((losses, net.params.data.copy(), net.forward(data[0][0])))
    finally:
        gdfast.set_simd(before)
    (l0, p0, f0), (l1, p1, f1) = nets
    assert l0 == l1
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(f0, f1)


@pytest.mark.parametrize("act,loss,opt", [("relu", "cross_entropy", "Adam"),
                                            ("sigmoid", "mse", "SGD"),
                                            ("tanh", "cross_entropy", "AdamW")])
def test_train_step_equals_reference_mlp_and_optimizer(act, loss, opt):
    from gdfast.reference import optim as ref_optim
    rng = np.random.default_rng(7)
    net = gdfast.MLP([20, 16, 8, 4], activation=act, loss=loss, seed=8)
    ref = reference_of(net, np.float32)
    hyper = {"lr": 0.01} if opt != "SGD" else {"lr": 0.5, "momentum": 0.9}
    optimizer = getattr(gdfast, opt)(net.params, **hyper)
    names = list(net.params)
    ref_opt = getattr(ref_optim, opt)([ref.params[k] for k in names], **hyper)
    for step in range(5):
        x, y = batch(rng, 1 + 9 * step, net.sizes, targets=step == 3)
        loss_c = net.train_step(x, y, optimizer)
        loss_r, grads = ref.loss_and_grad(x, y)
        ref_opt.step([grads[k].astype(np.float32) for k in names])
        assert loss_c == pytest.approx(loss_r, rel=1e-4)
    for name in names:
        np.testing.assert_allclose(net.params[name], ref.params[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


FUSED_OPTIMIZERS = [
    ("Adam", {"lr": 1e-2}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("RMSprop", {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    ("Adagrad", {"lr": 0.1}),
]


def make_optimizer(name, hyper, params):
    groups = [{"params": ["w2", "b1"], "lr": hyper["lr"] * 3, "maximize": True}]
    if name == "Lookahead":
        return gdfast.Lookahead(gdfast.SGD(params, lr=0.1), k=2, alpha=0.5)
    return getattr(gdfast, name)(params, groups=groups, **hyper)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 40])
@pytest.mark.parametrize("name,hyper", FUSED_OPTIMIZERS + [("Lookahead", {"lr": 0.1})])
def test_fused_train_step_equals_loss_and_grad_then_step(simd, name, hyper, n, threads):
    """train_step (for one example: dW formed inside the update kernels, never
    stored) gives the parameters and optimizer state, bit for bit, of
    loss_and_grad followed by step(), with param groups, for odd layer widths
    and any thread count."""
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(threads)
    try:
        rng = np.random.default_rng(n)
        sizes = [450, 70, 33, 10]  # 34k params: 2 threads for every optimizer and ISA
        fused, split = gdfast.MLP(sizes, seed=3), gdfast.MLP(sizes, seed=3)
        opt_f = make_optimizer(name, hyper, fused.params)
        opt_s = make_optimizer(name, hyper, split.params)
        for _ in range(3):
            x, y = batch(rng, n, sizes)
            loss_f = fused.train_step(x, y, opt_f)
            loss_s = split.loss_and_grad(x, y)
            opt_s.step()
            assert loss_f == loss_s
        np.testing.assert_array_equal(fused.params.data, split.params.data)
        assert_same_state(opt_f, opt_s)
    finally:
        gdfast.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("max_norm", [math.inf, 0.05])
def test_train_step_clips_and_measures_the_norm_like_step(simd, n, max_norm):
    # batch 1 with an infinite max_norm stays fused (norm from the outer
    # products' factors); a finite one stores the gradients, as n = 7 does
    rng = np.random.default_rng(9)
    sizes = [150, 70, 33, 10]
    fused, split = gdfast.MLP(sizes, seed=3), gdfast.MLP(sizes, seed=3)
    opt_f, opt_s = gdfast.Adam(fused.params, lr=1e-2), gdfast.Adam(split.params, lr=1e-2)
    for _ in range(3):
        x, y = batch(rng, n, sizes)
        loss_f, norm_f = fused.train_step(x, y, opt_f, max_grad_norm=max_norm)
        loss_s = split.loss_and_grad(x, y)
        norm_s = opt_s.step(max_grad_norm=max_norm)
        assert loss_f == loss_s
        assert norm_f == pytest.approx(norm_s, rel=1e-6)  # dW rounded to float32 or not
        if max_norm < 1:
            assert norm_s > max_norm  # the clip really scaled the step
    np.testing.assert_array_equal(fused.params.data, split.params.data)
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        fused.train_step(x, y, opt_f, max_grad_norm=0.0)


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("opt_name", ["Adam", "Lookahead"])
def test_train_step_skips_an_update_on_a_nonfinite_loss(n, opt_name):
    rng = np.random.default_rng(10)
    sizes = [30, 20, 5]
    nets, opts = [], []
    for _ in range(2):
        net = gdfast.MLP(sizes, seed=1)
        opt = (gdfast.Lookahead(gdfast.SGD(net.params, lr=0.1, momentum=0.9), k=2)
               if opt_name == "Lookahead" else gdfast.Adam(net.params, lr=1e-2))
        nets.append(net)
        opts.append(opt)
    good = [batch(rng, n, sizes) for _ in range(3)]
    bad_x = good[0][0].copy()
    bad_x[0, 4] = np.nan
    # the first model also meets a batch with NaN in it, which must change nothing
    for i, (x, y) in enumerate(good):
        if i == 1:
            before = nets[0].params.data.copy()
            loss, norm = nets[0].train_step(bad_x, y, opts[0], max_grad_norm=math.inf,
                                            skip_nonfinite=True)
            assert math.isnan(loss) and math.isnan(norm)
            np.testing.assert_array_equal(nets[0].params.data, before)
        for net, opt in zip(nets, opts):
            net.train_step(x, y, opt, skip_nonfinite=True)
    np.testing.assert_array_equal(nets[0].params.data, nets[1].params.data)
    a, b = opts[0].state_dict(), opts[1].state_dict()
    assert a["step"] == b["step"] == 3
    if opt_name == "Lookahead":  # its count and slow weights too
        assert a["lookahead"] == b["lookahead"]
        for key, value in b["slow"].items():
            np.testing.assert_array_equal(a["slow"][key], value)
    for key, slots in b["state"].items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(a["state"][key][slot], value)
    # without skip_nonfinite the NaN goes into the parameters, as in PyTorch
    nets[1].train_step(bad_x, good[0][1], opts[1])
    assert np.isnan(nets[1].params.data).any()


def test_train_step_refuses_bad_input_before_touching_the_optimizer():
    net = gdfast.MLP([4, 3, 2], seed=0)
    opt = gdfast.Adam(net.params, lr=0.1)
    before = net.params.data.copy()
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"y\[1\] = 5 is not a class label"):
        net.train_step(x, np.array([0, 5, 1]), opt)
    with pytest.raises(TypeError, match="optimizer must be a gdfast optimizer"):
        net.train_step(x, np.array([0, 1, 1]), object())
    other = gdfast.MLP([4, 3, 2], seed=1)
    with pytest.raises((ValueError, TypeError)):
        net.train_step(x, np.array([0, 1, 1]), gdfast.Adam(other.params))
    np.testing.assert_array_equal(net.params.data, before)
    net.train_step(x, np.array([0, 1, 1]), opt)  # the optimizer still works afterwards
    assert not np.array_equal(net.params.data, before)


def test_buffers_grow_and_smaller_batches_still_work():
    rng = np.random.default_rng(9)
    net = gdfast.MLP([12, 9, 5], seed=10)
    ref = reference_of(net)
    for n in (3, 200, 1, 50):
        x, y = batch(rng, n, net.sizes)
        assert net.loss_and_grad(x, y) == pytest.approx(ref.loss_and_grad(x, y)[0], rel=1e-5)
    big = rng.standard_normal((2500, 12)).astype(np.float32)  # forward works in chunks
    np.testing.assert_allclose(net.forward(big), ref.forward(big), rtol=1e-4, atol=1e-6)


def test_arena_views_predict_and_evaluate():
    net = gdfast.MLP([6, 5, 3], seed=0)
    assert net.params.names == ["w1", "b1", "w2", "b2"]
    assert net.params["w1"].shape == (6, 5) and net.params["b2"].shape == (3,)
    net.params["w1"][...] = 0.0
    net.params["w2"][...] = 0.0
    net.params["b2"][...] = [0.0, 5.0, 0.0]
    x = np.ones((4, 6), np.float32)
    pred = net.predict(x)
    assert pred.dtype == np.int64
    np.testing.assert_array_equal(pred, 1)
    loss, acc = net.evaluate(x, np.array([1, 1, 0, 2]), batch_size=3)
    assert acc == 0.5
    p = np.exp([0.0, 5.0, 0.0]) / np.exp([0.0, 5.0, 0.0]).sum()
    assert loss == pytest.approx(-(2 * np.log(p[1]) + 2 * np.log(p[0])) / 4, rel=1e-5)


def test_inits_follow_their_conventions():
    he = gdfast.MLP([400, 300, 10], init="he", seed=1)
    assert np.std(he.params["w1"]) == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert not he.params["b1"].any()
    xa = gdfast.MLP([400, 300, 10], init="glorot", seed=1)
    assert np.abs(xa.params["w1"]).max() <= np.sqrt(6 / 700)
    nl = gdfast.MLP([400, 300, 10], init="normal", seed=1)
    assert np.std(nl.params["w1"]) == pytest.approx(1 / 20, rel=0.02)
    assert np.std(nl.params["b1"]) == pytest.approx(1.0, rel=0.2)
    again = gdfast.MLP([400, 300, 10], init="he", seed=1)
    np.testing.assert_array_equal(again.params.data, he.params.data)


def test_bad_input_is_refused():
    net = gdfast.MLP([4, 3, 2], seed=0)
    x = np.ones((5, 4), np.float32)
    y = np.zeros(5, np.int64)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        net.loss_and_grad(x.astype(np.float64), y)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        net.forward(np.ones((4, 5), np.float32).T)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 4\)"):
        net.forward(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"labels y must have shape \(5,\)"):
        net.loss_and_grad(x, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"targets y must have shape \(5, 2\)"):
        net.loss_and_grad(x, np.zeros((5, 3), np.float32))
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        net.loss_and_grad(x, np.zeros(5, np.float64))
    with pytest.raises(ValueError, match="at least one row"):
        net.loss_and_grad(np.ones((0, 4), np.float32), np.zeros(0, np.int64))
    net.params.grad[...] = 7.0
    with pytest.raises(ValueError, match=r"y\[3\] = 2 is not a class label in \[0, 2\)"):
        net.loss_and_grad(x, np.array([0, 1, 0, 2, 1]))
    np.testing.assert_array_equal(net.params.grad, 7.0)  # nothing written
    with pytest.raises(ValueError, match="activation must be one of"):
        gdfast.MLP([4, 2], activation="gelu")
    with pytest.raises(ValueError, match="loss must be one of"):
        gdfast.MLP([4, 2], loss="hinge")
    with pytest.raises(ValueError, match="init must be one of"):
        gdfast.MLP([4, 2], init="orthogonal")
    with pytest.raises(ValueError, match="sizes must be"):
        gdfast.MLP([4])
    with pytest.raises(ValueError, match="output_activation applies to loss='mse'"):
        gdfast.MLP([4, 2], output_activation="sigmoid")


def test_train_step_reuses_its_buffers():
    import tracemalloc
    rng = np.random.default_rng(11)
    net = gdfast.MLP([784, 256, 128, 10], seed=0)
    opt = gdfast.Adam(net.params, lr=1e-3)
    x, y = batch(rng, 64, net.sizes)
    net.train_step(x, y, opt)  # warm-up: work buffers and packing buffers exist now
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            net.train_step(x, y, opt)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # the forward activations alone are 64 * 394 floats (~100 kB): none is allocated
    assert peak < 16_000, peak


def layer_slice(net, l):
    """Layer l's gradients (w_l then b_l) in the arena."""
    p = net.params
    return slice(p.offset(f"w{l}"), p.offset(f"b{l}") + net.sizes[l])


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 1e-3])
def test_on_layer_sees_each_layer_final_while_the_layers_below_are_not_done(accumulate, alpha):
    rng = np.random.default_rng(7)
    net = gdfast.MLP([9, 7, 6, 4], seed=2, alpha=alpha, activation=["relu", "tanh"])
    x, y = batch(rng, 17, net.sizes)
    grad = net.params.grad
    start = rng.standard_normal(grad.shape).astype(np.float32)
    grad[...] = start
    net.loss_and_grad(x, y, accumulate=accumulate, mean_over=40)
    plain = grad.copy()
    seen = []

    def on_layer(l):
        # layer l is final now, layers below it still hold what was there before
        seen.append((l, grad[layer_slice(net, l)].copy(), grad[:net.params.offset(f"w{l}")].copy()))

    grad[...] = start
    net.loss_and_grad(x, y, accumulate=accumulate, mean_over=40, on_layer=on_layer)
    assert [l for l, _, _ in seen] == [3, 2, 1]
    np.testing.assert_array_equal(grad, plain)       # the hook changes no bits
    for l, mine, below in seen:
        np.testing.assert_array_equal(mine, plain[layer_slice(net, l)])
        np.testing.assert_array_equal(below, start[:net.params.offset(f"w{l}")])


def test_an_error_in_on_layer_stops_backward_and_is_raised():
    rng = np.random.default_rng(8)
    net = gdfast.MLP([5, 4, 3], seed=1)
    x, y = batch(rng, 6, net.sizes)
    calls = []

    def fail(l):
        calls.append(l)
        raise KeyError("from the hook")
    with pytest.raises(KeyError, match="from the hook"):
        net.loss_and_grad(x, y, on_layer=fail)
    assert calls == [2]                 # stopped at the first layer it was told of
    with pytest.raises(TypeError, match="on_layer must be callable"):
        net.loss_and_grad(x, y, on_layer=3)
    loss = net.loss_and_grad(x, y)      # the model is still usable, the hook gone
    assert loss == pytest.approx(reference_of(net).loss_and_grad(x, y)[0], rel=1e-5)
