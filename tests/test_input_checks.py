"""Inputs the C kernels would misread or that would be written behind the
user's back: refused with a clear error, before any state changes."""
import numpy as np
import pytest

import gdfast

BIG = np.dtype(">f4") if np.little_endian else np.dtype("<f4")


def swapped(a):
    return np.asarray(a, dtype=np.float32).astype(BIG)


def native_message(name):
    return rf"{name} must have native byte order \(dtype float32\), got {BIG.str}"


# ---- 1. non-native byte order ----

def test_step_refuses_byteswapped_gradients():
    p = np.ones(3, np.float32)
    opt = gdfast.SGD([p], lr=0.1)
    with pytest.raises(TypeError, match=native_message(r"grads\[0\]")):
        opt.step([swapped(np.ones(3))])
    assert (p == 1).all() and opt._step == 0


def test_optimizer_refuses_byteswapped_params():
    with pytest.raises(TypeError, match=native_message(r"params\[1\]")):
        gdfast.SGD([np.ones(3, np.float32), swapped(np.ones(3))], lr=0.1)


def test_matmul_refuses_byteswapped_operands():
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match=native_message("a")):
        gdfast.matmul(swapped(a), b)
    with pytest.raises(TypeError, match=native_message("b")):
        gdfast.matmul(a, swapped(b))
    out = swapped(np.zeros((2, 4)))
    with pytest.raises(TypeError, match=native_message("out")):
        gdfast.matmul(a, b, out=out)
    assert (out == 0).all()


def test_clipping_refuses_byteswapped_gradients():
    g = swapped(np.full(3, 10.0))
    with pytest.raises(TypeError, match=native_message(r"grads\[0\]")):
        gdfast.clip_grad_norm(g, 1.0)
    with pytest.raises(TypeError, match=native_message(r"grads\[1\]")):
        gdfast.clip_grad_value([np.ones(2, np.float32), g], 1.0)
    assert (g == 10).all()


def test_mlp_refuses_byteswapped_inputs_and_targets():
    model = gdfast.MLP([3, 4, 2], loss="mse")
    x = np.ones((5, 3), np.float32)
    before = model.params.data.copy()
    with pytest.raises(TypeError, match=native_message("x")):
        model.forward(swapped(x))
    with pytest.raises(TypeError, match=native_message("x")):
        model.loss_and_grad(swapped(x), np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError, match=native_message("y")):
        model.loss_and_grad(x, swapped(np.zeros((5, 2))))
    opt = gdfast.SGD(model.params, lr=0.1)
    with pytest.raises(TypeError, match=native_message("y")):
        model.train_step(x, swapped(np.zeros((5, 2))), opt)
    assert (model.params.data == before).all() and opt._step == 0


# ---- 2. parameters made read-only after construction ----

def test_step_refuses_a_parameter_made_read_only():
    ps = [np.ones(3, np.float32), np.ones(2, np.float32)]
    opt = gdfast.Adam(ps, lr=0.1)
    ps[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[1\] is read-only"):
        opt.step([np.ones(3, np.float32), np.ones(2, np.float32)])
    assert (ps[0] == 1).all() and (ps[1] == 1).all() and opt._step == 0
    ps[1].flags.writeable = True
    opt.step([np.ones(3, np.float32), np.ones(2, np.float32)])
    assert (ps[0] < 1).all() and opt._step == 1


def test_arena_step_refuses_read_only_data():
    params = gdfast.Params({"w": (4,)})
    params.grad[...] = 1.0
    opt = gdfast.SGD(params, lr=0.1)
    params.data.flags.writeable = False
    with pytest.raises(ValueError, match=r"params.data is read-only"):
        opt.step()
    assert (params.data == 0).all() and opt._step == 0


def test_mlp_refuses_read_only_arena_buffers():
    model = gdfast.MLP([3, 4, 2])
    x, y = np.ones((5, 3), np.float32), np.zeros(5, np.int64)
    opt = gdfast.SGD(model.params, lr=0.1)
    before = model.params.data.copy()
    model.params.data.flags.writeable = False
    with pytest.raises(ValueError, match=r"params.data is read-only"):
        model.train_step(x, y, opt)
    assert (model.params.data == before).all() and opt._step == 0
    model.forward(x)  # reading stays allowed
    model.params.data.flags.writeable = True
    model.params.grad.flags.writeable = False
    with pytest.raises(ValueError, match=r"params.grad is read-only"):
        model.loss_and_grad(x, y)
    assert (model.params.grad == 0).all()


# ---- 3. arena buffers replaced under the MLP ----

@pytest.mark.parametrize("which", ["data", "grad"])
def test_mlp_refuses_a_replaced_arena_buffer(which):
    model = gdfast.MLP([3, 4, 2])
    x, y = np.ones((5, 3), np.float32), np.zeros(5, np.int64)
    opt = gdfast.SGD(model.params, lr=0.1)
    setattr(model.params, which, getattr(model.params, which).copy())
    msg = "data or grad buffer was replaced after the MLP was built"
    with pytest.raises(ValueError, match=msg):
        model.forward(x)
    with pytest.raises(ValueError, match=msg):
        model.loss_and_grad(x, y)
    with pytest.raises(ValueError, match=msg):
        model.train_step(x, y, opt)
    assert opt._step == 0


# ---- 4. MLP inputs overlapping the arena ----

def test_mlp_refuses_inputs_overlapping_the_arena():
    model = gdfast.MLP([2, 3, 2], loss="mse")
    opt = gdfast.SGD(model.params, lr=0.1)
    n = 3
    xg = model.params.grad[:n * 2].reshape(n, 2)
    yg = model.params.grad[:n * 2].reshape(n, 2)
    x, y = np.ones((n, 2), np.float32), np.zeros((n, 2), np.float32)
    with pytest.raises(ValueError, match="x must not share memory with params.grad"):
        model.loss_and_grad(xg, y)
    with pytest.raises(ValueError, match="y must not share memory with params.grad"):
        model.loss_and_grad(x, yg)
    before = model.params.data.copy()
    xd = model.params.data[:n * 2].reshape(n, 2)
    model.loss_and_grad(xd, y)  # reads params.data only: allowed
    with pytest.raises(ValueError, match="x must not share memory with params.data"):
        model.train_step(xd, y, opt)
    with pytest.raises(ValueError, match="y must not share memory with params.data"):
        model.train_step(x, model.params.data[:n * 2].reshape(n, 2), opt)
    assert (model.params.data == before).all() and opt._step == 0


# ---- 5. clip coefficients below FLT_MIN under flush-to-zero ----

@pytest.mark.parametrize("max_norm", [1e-6, 1e-10, 1e-30])
def test_clip_grad_norm_with_a_tiny_coefficient(max_norm):
    gdfast.set_flush_denormal(True)
    g = np.full(4, 1e30, np.float32)
    assert gdfast.clip_grad_norm(g, max_norm) == pytest.approx(2e30, rel=1e-6)
    assert np.linalg.norm(g.astype(np.float64)) == pytest.approx(max_norm, rel=1e-5, abs=0)


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("max_norm", [1e-10, 1e-30])
def test_fused_clip_with_a_tiny_coefficient(max_norm, maximize):
    gdfast.set_flush_denormal(True)
    p = np.zeros(4, np.float32)
    opt = gdfast.SGD([p], lr=1.0, maximize=maximize)
    norm = opt.step([np.full(4, 1e30, np.float32)], max_grad_norm=max_norm)
    assert norm == pytest.approx(2e30, rel=1e-6)
    expected = np.full(4, (max_norm if maximize else -max_norm) / 2)
    np.testing.assert_allclose(p, expected, rtol=1e-5)


# ---- 6. set_num_threads ----

@pytest.mark.parametrize("n, error", [(2.9, TypeError), (True, TypeError), ("2", TypeError),
                                      (0, ValueError), (-1, ValueError),
                                      (2**31, ValueError), (4097, ValueError)])
def test_set_num_threads_refuses_bad_counts(n, error):
    saved = gdfast.get_num_threads()
    with pytest.raises(error, match="n must be"):
        gdfast.set_num_threads(n)
    assert gdfast.get_num_threads() == saved


def test_set_num_threads_takes_numpy_integers():
    saved = gdfast.get_num_threads()
    try:
        gdfast.set_num_threads(np.int64(1))
        assert gdfast.get_num_threads() == 1
    finally:
        gdfast.set_num_threads(saved)


# ---- 7. x of the wrong rank ----

@pytest.mark.parametrize("x", [np.ones((), np.float32), np.ones(3, np.float32)])
def test_forward_and_evaluate_name_the_expected_shape(x):
    model = gdfast.MLP([3, 4, 2])
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        model.forward(x)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        model.evaluate(x, np.zeros(1, np.int64))
