"""set_flush_denormal: kernels flush subnormals to zero (on by default on x86-64),
keep them when asked, and the mode never leaks into the caller's thread,
NumPy, or later gdfast calls."""
import platform
import subprocess
import sys

import numpy as np
import pytest

import gdfast
from gdfast.reference import optim as ref
from conftest import child_python

X86 = platform.machine().lower() in ("x86_64", "amd64")
TINY = np.finfo(np.float32).tiny  # smallest normal float32
needs_x86 = pytest.mark.skipif(not X86, reason="flush-to-zero is x86-only")


@pytest.fixture
def restore():
    before = (gdfast.get_flush_denormal(), gdfast.get_num_threads())
    yield
    gdfast.set_flush_denormal(before[0])
    gdfast.set_num_threads(before[1])


def subnormal(a):
    return (a != 0) & (np.abs(a) < TINY)


def numpy_makes_subnormals():
    return np.float32(1e-38) * np.float32(0.01) != 0


def decaying_adam(n, steps=40):
    """Adam where the odd entries see one tiny gradient and then zeros, so their
    exp_avg halves into the subnormal range; the even entries see normal gradients."""
    rng = np.random.default_rng(0)
    init = rng.standard_normal(n).astype(np.float32)
    p, twin = init.copy(), init.copy()
    hyper = {"lr": 0.01, "betas": (0.5, 0.5)}
    opt, oracle = gdfast.Adam([p], **hyper), ref.Adam([twin], **hyper)
    for t in range(steps):
        g = rng.standard_normal(n).astype(np.float32)
        g[1::2] = 1e-30 if t == 0 else 0.0
        opt.step([g])
        oracle.step([g])
    return p, opt.state_dict()["state"][0]["exp_avg"], twin, oracle.exp_avg[0]


def test_default_on_where_supported_and_round_trip(restore):
    assert gdfast.get_flush_denormal() is X86
    assert gdfast.build_info()["flush_denormal"] is X86
    assert gdfast.set_flush_denormal(False) is X86
    assert gdfast.get_flush_denormal() is False
    assert gdfast.set_flush_denormal(True) is X86
    assert gdfast.get_flush_denormal() is X86
    assert gdfast.build_info()["flush_denormal"] is X86
    assert gdfast.set_flush_denormal(False) is X86
    assert gdfast.get_flush_denormal() is False
    assert "set_flush_denormal" in gdfast.__all__ and "get_flush_denormal" in gdfast.__all__


@pytest.mark.parametrize("threads", [1, 2])
def test_off_keeps_subnormals_like_the_reference(restore, threads):
    gdfast.set_num_threads(threads)
    gdfast.set_flush_denormal(False)
    p, m, p_ref, m_ref = decaying_adam(20_001)
    assert subnormal(m_ref[1::2]).all()
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_allclose(p, p_ref, rtol=2e-6, atol=1e-7)


@needs_x86
@pytest.mark.parametrize("threads", [1, 2])
def test_on_flushes_subnormals_and_leaves_normal_values_alone(restore, threads):
    gdfast.set_num_threads(threads)
    gdfast.set_flush_denormal(True)
    p, m, p_ref, m_ref = decaying_adam(20_001)
    assert not subnormal(m).any() and not subnormal(p).any()
    assert (m[1::2] == 0).all()  # every thread flushed its share
    normal = ~subnormal(m_ref)
    np.testing.assert_array_equal(m[normal], m_ref[normal])
    np.testing.assert_allclose(p, p_ref, rtol=2e-6, atol=1e-7)
    assert numpy_makes_subnormals()  # the caller's thread got its mode back
    # the OpenMP workers too: with the flag off again, subnormals come back
    gdfast.set_flush_denormal(False)
    _, m, _, m_ref = decaying_adam(20_001)
    assert subnormal(m[1::2]).all()
    np.testing.assert_array_equal(m, m_ref)


@needs_x86
@pytest.mark.parametrize("threads", [1, 2])
def test_clip_and_norm_run_flushed_and_do_not_leak(restore, threads):
    gdfast.set_num_threads(threads)
    gdfast.set_flush_denormal(True)
    g = np.full(300_000, 1e-39, dtype=np.float32)  # subnormal gradients read as zero
    assert gdfast.clip_grad_norm([g], 1.0) == 0.0
    gdfast.set_flush_denormal(False)
    assert gdfast.clip_grad_norm([g], 1.0) > 0.0
    assert numpy_makes_subnormals()


@needs_x86
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_reads_subnormal_inputs_as_zero_only_when_on(restore, threads):
    gdfast.set_num_threads(threads)
    gdfast.set_flush_denormal(False)
    a = np.full((256, 300), 1e-39, dtype=np.float32)
    b = np.ones((300, 512), dtype=np.float32)
    assert (gdfast.matmul(a, b) > 0).all()
    gdfast.set_flush_denormal(True)
    assert (gdfast.matmul(a, b) == 0).all()
    assert numpy_makes_subnormals()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 300)).astype(np.float32)
    np.testing.assert_allclose(gdfast.matmul(x, b), x @ b, rtol=1e-4, atol=1e-4)


@needs_x86
@pytest.mark.parametrize("threads", [1, 2])
def test_mlp_with_flag_on_matches_flag_off_for_normal_inputs(restore, threads):
    gdfast.set_num_threads(threads)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    nets = []
    for flag in (False, True):
        gdfast.set_flush_denormal(flag)
        net = gdfast.MLP([784, 256, 128, 10], seed=3)
        opt = gdfast.Adam(net.params, lr=1e-3)
        losses = [net.train_step(x, y, opt) for _ in range(3)]
        nets.append((losses, net.params.data.copy(), net.forward(x)))
        assert numpy_makes_subnormals()
    (l0, p0, f0), (l1, p1, f1) = nets
    assert l0 == pytest.approx(l1, rel=1e-6)
    np.testing.assert_allclose(p1, p0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(f1, f0, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("value,expected", [("0", False), ("1", X86)])
def test_environment_variable_sets_the_mode_at_import(value, expected):
    code = "import gdfast; print(gdfast.get_flush_denormal())"
    env, cwd = child_python(GDFAST_FLUSH_DENORMAL=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)


def test_bad_environment_variable_fails_import_with_a_clear_message():
    env, cwd = child_python(GDFAST_FLUSH_DENORMAL="yes")
    out = subprocess.run([sys.executable, "-c", "import gdfast"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "GDFAST_FLUSH_DENORMAL='yes'" in out.stderr and "expected 0" in out.stderr, out.stderr
