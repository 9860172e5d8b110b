"""Bad input refused with clear errors and no state change (optimizers, schedules,
checkpoints, params, datasets, evaluate)."""
import copy
import json

import numpy as np
import pytest

import gdfast
from gdfast import optim, schedules
from gdfast.datasets import _validation_count
from gdfast.params import Params


def test_params_total_size_overflow_is_refused():
    with pytest.raises(ValueError, match="'mid'"):
        Params({"a": (3,), "mid": (2**32 + 1, 2**32 - 1), "b": (3,)})
    with pytest.raises(ValueError, match="'c'"):
        Params({"a": (2**60,), "b": (2**60 - 2**10,), "c": (2**60,)})


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_validation_count_refuses_non_finite(bad):
    with pytest.raises(ValueError, match="validation"):
        _validation_count(bad, 100)


def _snapshot(opt):
    sd = opt.state_dict()
    return sd["step"], {k: {n: a.copy() for n, a in v.items()} for k, v in sd["state"].items()}, \
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


def _assert_same(opt, snap):
    step, state, groups = _snapshot(opt)
    assert step == snap[0] and groups == snap[2]
    for k in state:
        for n in state[k]:
            np.testing.assert_array_equal(state[k][n], snap[1][k][n])


def _adam_after_steps(n=3):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(5).astype(np.float32)
    opt = gdfast.Adam([w], lr=0.1)
    for _ in range(n):
        opt.step([rng.standard_normal(5).astype(np.float32)])
    return opt, w


@pytest.mark.parametrize("step", [2**63, 2**62, 1e30, 2.5, 3.0, -1, True, "3", None])
def test_optimizer_refuses_bad_step_without_changing_state(step):
    opt, _ = _adam_after_steps()
    other, _ = _adam_after_steps(5)
    sd = other.state_dict()
    sd["param_groups"][0]["lr"] = 0.5
    sd["step"] = step
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=r"state_dict\['step'\].*2\*\*62|state_dict\['step'\]"):
        opt.load_state_dict(sd)
    _assert_same(opt, snap)


def test_step_bound_is_named_and_largest_step_keeps_adam_finite():
    opt, w = _adam_after_steps()
    sd = opt.state_dict()
    sd["step"] = 2**62
    with pytest.raises(ValueError, match=str(2**62)):
        opt.load_state_dict(sd)
    sd["step"] = 2**62 - 2
    opt.load_state_dict(sd)
    m = sd["state"][0]["exp_avg"].copy()
    v = sd["state"][0]["exp_avg_sq"].copy()
    g = np.full(5, 0.5, np.float32)
    before = w.copy()
    opt.step([g])
    assert opt.state_dict()["step"] == 2**62 - 1
    # bias corrections are 1 at this step
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    np.testing.assert_allclose(w, before - 0.1 * m / (np.sqrt(v) + 1e-8), rtol=1e-5)


def test_optimizer_refuses_huge_hyperparameter_as_value_error():
    opt, _ = _adam_after_steps()
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 10**400
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match="param_groups"):
        opt.load_state_dict(sd)
    _assert_same(opt, snap)


def test_lookahead_k_is_validated_on_assignment():
    w = np.ones(3, np.float32)
    la = optim.Lookahead(gdfast.SGD([w], lr=0.1), k=2)
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            la.k = bad
    assert la.k == 2
    la.step([np.ones(3, np.float32)])
    np.testing.assert_allclose(w, 0.9)
    la.k = 1
    la.step([np.ones(3, np.float32)])


def test_lookahead_state_names_its_inner_optimizer():
    w1, w2 = np.ones(3, np.float32), np.ones(3, np.float32)
    a = optim.Lookahead(gdfast.Adam([w1]))
    b = optim.Lookahead(gdfast.AdamW([w2]))
    a.step([np.ones(3, np.float32)])
    before = b.state_dict()
    with pytest.raises(ValueError, match="'Adam'.*'AdamW'"):
        b.load_state_dict(a.state_dict())
    after = b.state_dict()
    assert after["step"] == before["step"] == 0
    np.testing.assert_array_equal(after["state"][0]["exp_avg"], 0.0)
    b2 = optim.Lookahead(gdfast.Adam([w2]))
    b2.load_state_dict(a.state_dict())
    assert b2.state_dict()["step"] == 1


def test_lookahead_file_refuses_other_inner_optimizer(tmp_path):
    a = optim.Lookahead(gdfast.Adam([np.ones(3, np.float32)]))
    a.save(tmp_path / "la.npz")
    b = optim.Lookahead(gdfast.AdamW([np.ones(3, np.float32)]))
    with pytest.raises(ValueError, match="AdamW"):
        b.load(tmp_path / "la.npz")


@pytest.mark.parametrize("build", [
    lambda v: schedules.CosineWarmRestarts(0.1, T_0=v, T_mult=2),
    lambda v: schedules.CosineWarmRestarts(0.1, T_0=4, T_mult=v),
    lambda v: schedules.StepDecay(0.1, step_size=v),
    lambda v: schedules.Cosine(0.1, T_max=v),
    lambda v: schedules.PerEpoch(schedules.Constant(0.1), steps_per_epoch=v),
    lambda v: schedules.OneCycle(0.1, total_steps=v),
    lambda v: schedules.Sequential([(0.1, v)], 0.01),
    lambda v: schedules.make("step", 0.1, 100, steps_per_epoch=v),
    lambda v: schedules.make("sgdr", 0.1, 100, T_0=v),
    lambda v: schedules.make("cosine", 0.1, v),
])
@pytest.mark.parametrize("bad", [0.5, 0, -1, True, float("nan"), float("inf"), 2**70, "2"])
def test_schedule_counts_must_be_positive_integers(build, bad):
    with pytest.raises(ValueError, match="must be a positive integer"):
        build(bad)


def test_sgdr_fractional_period_message():
    with pytest.raises(ValueError, match="T_0 must be a positive integer, got 0.5"):
        schedules.CosineWarmRestarts(0.1, T_0=0.5, T_mult=2)


@pytest.mark.parametrize("build", [
    lambda: schedules.MultiStep(0.1, [2.5]),
    lambda: schedules.MultiStep(0.1, [-1]),
    lambda: schedules.Warmup(schedules.Constant(0.1), 2.5),
    lambda: schedules.Warmup(schedules.Constant(0.1), 5, start_factor=float("nan")),
    lambda: schedules.StepDecay(0.1, 5, gamma=float("nan")),
    lambda: schedules.MultiStep(0.1, [5], gamma=float("nan")),
    lambda: schedules.Exponential(0.1, float("nan")),
    lambda: schedules.Exponential(0.1, float("inf")),
    lambda: schedules.Constant(float("inf")),
    lambda: schedules.Constant(10**400),
    lambda: schedules.OneCycle(0.1, 100, div_factor=0),
    lambda: schedules.OneCycle(0.1, 100, pct_start=float("nan")),
    lambda: schedules.ReduceOnPlateau(0.1, patience=1.5),
    lambda: schedules.ReduceOnPlateau(0.1, cooldown=-1),
    lambda: schedules.ReduceOnPlateau(0.1, threshold=float("nan")),
    lambda: schedules.make("constant", 0.1, 100, warmup=-1),
])
def test_schedule_arguments_refused(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("step", [2.0, 0.5, float("nan"), float("inf"), -1, 2**63, 10**400, True])
def test_schedule_call_refuses_bad_steps(step):
    for s in (schedules.Constant(0.1), schedules.Exponential(0.1, 0.5),
              schedules.CosineWarmRestarts(0.1, 3, 2), schedules.Cosine(0.1, 10),
              schedules.PerEpoch(schedules.StepDecay(0.1, 2), 3), schedules.OneCycle(0.1, 10),
              schedules.Warmup(schedules.Cosine(0.1, 10), 3)):
        with pytest.raises(ValueError, match="step"):
            s(step)


def test_schedule_huge_valid_steps_do_not_overflow():
    assert schedules.CosineWarmRestarts(0.1, 1, 1)(2**62) == pytest.approx(0.1)
    assert schedules.CosineWarmRestarts(0.1, 3, 2)(2**62) <= 0.1
    assert schedules.Exponential(0.1, 0.5)(2**62) == 0.0
    with pytest.raises(ValueError, match="overflows"):
        schedules.Exponential(0.1, 2.0)(2**62)


@pytest.mark.parametrize("bad", [
    {"scale": 0.5}, None, [],
    {"scale": float("inf"), "best": 1.0, "num_bad_epochs": 0, "cooldown_counter": 0,
     "last_step": 0, "base": {}},
    {"scale": 0.5, "best": 1.0, "num_bad_epochs": float("inf"), "cooldown_counter": 0,
     "last_step": 0, "base": {}},
    {"scale": 0.5, "best": 1.0, "num_bad_epochs": 0, "cooldown_counter": 0,
     "last_step": 10**400, "base": {}},
    {"scale": 0.5, "best": 1.0, "num_bad_epochs": 0, "cooldown_counter": 0,
     "last_step": 0, "base": {"x": 1}},
])
def test_plateau_load_state_dict_refuses_without_change(bad):
    s = schedules.ReduceOnPlateau(0.1)
    before = s.state_dict()
    with pytest.raises(ValueError):
        s.load_state_dict(bad)
    assert s.state_dict() == before


def _far_off_net():
    net = gdfast.MLP([2, 3], init="xavier")
    net.params["w1"] = np.array([[100.0, 0.0, -200.0], [0.0, 0.0, 0.0]])
    net.params["b1"] = 0.0
    return net


def test_evaluate_cross_entropy_is_not_capped():
    net = _far_off_net()
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.0]], np.float32)
    y = np.array([2, 0, 1])
    exact = net.loss_and_grad(x, y)
    assert exact > 100
    loss, acc = net.evaluate(x, y, batch_size=2)
    assert loss == pytest.approx(exact, rel=1e-5)
    assert acc == pytest.approx(1 / 3)
    soft = np.eye(3, dtype=np.float32)[y]
    assert net.evaluate(x, soft)[0] == pytest.approx(exact, rel=1e-5)


def test_reference_evaluate_is_not_capped():
    from gdfast.reference.train import ReferenceMLP
    net = _far_off_net()
    ref = ReferenceMLP([2, 3], init_from=net.params)
    x = np.array([[1.0, 0.0]], np.float32)
    assert ref.evaluate(x, np.array([2]))[0] == pytest.approx(300.0, rel=1e-5)


@pytest.mark.parametrize("y, match", [
    (np.array([[0], [1], [2]]), "1-D"),
    (np.array([0, 1, 3]), r"\[0, 3\)"),
    (np.array([0, -1, 2]), r"\[0, 3\)"),
    (np.zeros((3, 2), np.float32), r"\(3, 3\)"),
    (np.zeros(3, np.float32), r"\(3, 3\)"),
])
def test_evaluate_refuses_bad_labels(y, match):
    net = _far_off_net()
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="y .*" + match):
        net.evaluate(x, y)


def test_evaluate_refuses_non_numeric_labels():
    with pytest.raises(TypeError, match="y must be"):
        _far_off_net().evaluate(np.ones((2, 2), np.float32), np.array(["a", "b"]))


def _blobs(n=64, d=6, classes=3):
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    x = np.eye(classes, d)[y] + 0.3 * rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.int64)


def _trainer(tmp, opt=lambda p: gdfast.Adam(p, lr=1e-2)):
    from gdfast.train import Trainer
    model = gdfast.MLP([6, 8, 3], seed=0)
    return Trainer(model, opt(model.params), _blobs(), batch_size=16, checkpoint_dir=tmp,
                   validation=_blobs(), early_stopping=5)


def _trainer_snapshot(t):
    sd = t.optimizer.state_dict()
    return (t.params.data.copy(), t.step, t.epoch, len(t.history), sd["step"], t.best_params)


@pytest.mark.parametrize("best", [np.zeros(3, np.float32), np.zeros(1, np.float32),
                                  "x", 1.0])
def test_trainer_refuses_best_params_of_wrong_size(tmp_path, best):
    t = _trainer(tmp_path)
    t.fit(1)
    state = t.state_dict()
    state["early_stopping"]["best_params"] = best
    fresh = _trainer(tmp_path)
    before = _trainer_snapshot(fresh)
    with pytest.raises(ValueError, match="best_params"):
        fresh.load_state_dict(state)
    after = _trainer_snapshot(fresh)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1:] == before[1:]


def test_trainer_refuses_lookahead_with_other_inner_optimizer(tmp_path):
    t = _trainer(tmp_path, lambda p: optim.Lookahead(gdfast.Adam(p, lr=1e-2)))
    t.fit(1)
    path = t.save_checkpoint(tmp_path / "la.npz")
    other = _trainer(tmp_path, lambda p: optim.Lookahead(gdfast.AdamW(p, lr=1e-2)))
    before = other.params.data.copy()
    with pytest.raises(ValueError, match=r"Lookahead\(Adam\).*Lookahead\(AdamW\)"):
        other.load_checkpoint(path)
    np.testing.assert_array_equal(other.params.data, before)
    same = _trainer(tmp_path, lambda p: optim.Lookahead(gdfast.Adam(p, lr=1e-2)))
    same.load_checkpoint(path)
    np.testing.assert_array_equal(same.params.data, t.params.data)


@pytest.mark.parametrize("key, value", [("step", float("inf")), ("epoch", -1), ("step", 2.5),
                                        ("history", 3)])
def test_trainer_refuses_bad_counters(tmp_path, key, value):
    t = _trainer(tmp_path)
    state = t.state_dict()
    state[key] = value
    with pytest.raises(ValueError, match=key):
        _trainer(tmp_path).load_state_dict(state)


def _deep_meta_file(path, meta_prefix):
    deep = "[" * 100000 + "]" * 100000
    np.savez(path, __meta__=np.array(meta_prefix.replace("DEEP", deep)))
    return path


def test_deeply_nested_checkpoint_json_is_a_checkpoint_error(tmp_path):
    from gdfast import checkpoint
    p = _deep_meta_file(tmp_path / "c.npz",
                        '{"format": "gdfast-checkpoint", "version": 1, "tree": DEEP}')
    with pytest.raises(checkpoint.CheckpointError, match="c.npz"):
        checkpoint.load(p)
    with pytest.raises(checkpoint.CheckpointError):
        _trainer(tmp_path).load_checkpoint(p)


def test_deeply_nested_checkpoint_tree_is_a_checkpoint_error(tmp_path):
    from gdfast import checkpoint
    for depth in (10, 400, 900, 3000):  # deep ones: the JSON parser or the tree walk runs out of stack
        tree = '{"__list__": [' * depth + "]}" * depth
        np.savez(tmp_path / "t.npz", __meta__=np.array(
            '{"format": "gdfast-checkpoint", "version": 1, "tree": %s}' % tree))
        try:
            got = checkpoint.load(tmp_path / "t.npz")
        except checkpoint.CheckpointError as e:  # nothing else may escape
            assert "t.npz" in str(e) and depth > 10
        else:
            assert depth < 3000
            for _ in range(depth - 1):
                (got,) = got
            assert got == []


def test_deeply_nested_optimizer_file_is_a_checkpoint_error(tmp_path):
    from gdfast.checkpoint import CheckpointError
    p = _deep_meta_file(tmp_path / "o.npz", '{"format": "gdfast.optim/1", "x": DEEP}')
    opt = gdfast.Adam([np.ones(3, np.float32)])
    with pytest.raises(CheckpointError, match="o.npz"):
        opt.load(p)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(keys=[]),             # IndexError on state/0
    lambda m: m.update(step=1e400),          # inf step
    lambda m: m.update(step=2**63),
    lambda m: m["param_groups"][0].update(lr=10**400),
    lambda m: m.update(param_groups=5),
    lambda m: m.update(keys=5),
])
def test_damaged_optimizer_files_raise_value_errors(tmp_path, edit):
    opt = gdfast.Adam([np.ones(3, np.float32)])
    opt.step([np.ones(3, np.float32)])
    opt.save(tmp_path / "o.npz")
    z = dict(np.load(tmp_path / "o.npz"))
    meta = json.loads(str(z["__meta__"]))
    edit(meta)
    z["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "o.npz", **z)
    snap = _snapshot(opt)
    with pytest.raises(ValueError):
        opt.load(tmp_path / "o.npz")
    _assert_same(opt, snap)


def _torch_sgd_momentum(p, grads_by_step, lr, momentum_at, dampening):
    """torch.optim.SGD's formulas for one tensor, momentum(t) per step, in float64."""
    p, buf = p.astype(np.float64), None
    for t, g in enumerate(grads_by_step, 1):
        m = momentum_at(t)
        d = g.astype(np.float64)
        if m != 0:
            buf = d.copy() if buf is None else m * buf + (1 - dampening) * d
            d = buf
        p = p - lr * d
    return p, buf


@pytest.mark.parametrize("fused", [False, True])
def test_sgd_momentum_switched_on_mid_run_starts_buffer_as_grad(fused):
    rng = np.random.default_rng(1)
    params = Params({"a": (4,), "b": (3,)})
    params.data[...] = rng.standard_normal(7)
    start = params.data.copy()
    opt = gdfast.SGD(params, lr=0.1, groups=[
        {"params": ["a"], "momentum": 0.9, "dampening": 0.5},
        {"params": ["b"], "momentum": 0.0, "dampening": 0.5}])
    grads = [rng.standard_normal(7).astype(np.float32) for _ in range(8)]
    for t, g in enumerate(grads, 1):
        if t == 5:
            opt.param_groups[1]["momentum"] = 0.9
        params.grad[...] = g
        if fused:
            opt._begin_step(params).execute()
            opt._end_step()
        else:
            opt.step()
        if t == 5:
            np.testing.assert_array_equal(opt.state_dict()["state"]["b"]["momentum_buffer"],
                                          g[4:])
            assert opt.param_groups[1]["dampening"] == 0.5
    want_a, buf_a = _torch_sgd_momentum(start[:4], [g[:4] for g in grads], 0.1, lambda t: 0.9, 0.5)
    want_b, buf_b = _torch_sgd_momentum(start[4:], [g[4:] for g in grads], 0.1,
                                        lambda t: 0.9 if t >= 5 else 0.0, 0.5)
    np.testing.assert_allclose(params["a"], want_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["b"], want_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.state_dict()["state"]["b"]["momentum_buffer"], buf_b,
                               rtol=1e-5, atol=1e-6)


def test_sgd_reference_starts_buffer_when_momentum_switches_on():
    from gdfast.reference import optim as ref
    w = np.zeros(3, np.float32)
    r = ref.SGD([w], lr=0.1, momentum=0.0, dampening=0.5)
    r.step([np.ones(3, np.float32)])
    r.hyper["momentum"] = 0.9
    r.step([np.full(3, 2.0, np.float32)])
    np.testing.assert_allclose(r.buf[0], 2.0)


def test_sgd_unstarted_buffers_round_trip(tmp_path):
    def build(arrays):
        return gdfast.SGD([{"params": [arrays[0]], "momentum": 0.9, "dampening": 0.3},
                           {"params": [arrays[1]], "dampening": 0.3}], lr=0.1)
    a = [np.ones(2, np.float32), np.ones(2, np.float32)]
    opt = build(a)
    opt.step([np.ones(2, np.float32)] * 2)
    sd = opt.state_dict()
    assert "momentum_buffer" in sd["state"][0] and "momentum_buffer" not in sd["state"][1]
    opt.save(tmp_path / "s.npz")
    b = [np.ones(2, np.float32), np.ones(2, np.float32)]
    other = build(b)
    other.param_groups[1]["momentum"] = 0.9
    other.step([np.ones(2, np.float32)] * 2)   # starts group 1's buffer
    other.param_groups[1]["momentum"] = 0.0
    other.load(tmp_path / "s.npz")
    assert "momentum_buffer" not in other.state_dict()["state"][1]
    for o in (opt, other):
        o.param_groups[1]["momentum"] = 0.9
        o.step([np.ones(2, np.float32), np.full(2, 3.0, np.float32)])
        np.testing.assert_array_equal(o.state_dict()["state"][1]["momentum_buffer"], 3.0)
    two = gdfast.SGD([{"params": [np.ones(2, np.float32), np.ones(2, np.float32)],
                       "momentum": 0.9}])
    two.step([np.ones(2, np.float32)] * 2)
    sd2 = two.state_dict()
    del sd2["state"][1]["momentum_buffer"]
    with pytest.raises(ValueError, match="momentum_buffer"):
        two.load_state_dict(sd2)


def test_evaluate_reports_no_accuracy_for_regression_targets():
    rng = np.random.default_rng(0)
    model = gdfast.MLP([3, 4, 2], activation="tanh", loss="mse", output_activation="identity")
    x = rng.standard_normal((20, 3)).astype(np.float32)
    y = (5 * rng.standard_normal((20, 2))).astype(np.float32)       # regression values
    loss, acc = model.evaluate(x, y)
    assert acc is None and loss > 0
    onehot = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 20)]    # class targets
    assert model.evaluate(x, onehot)[1] is not None


def test_trainer_trains_regression_without_accuracy():
    rng = np.random.default_rng(1)
    model = gdfast.MLP([3, 8, 2], activation="tanh", loss="mse", output_activation="identity")
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x[:, :2] * 3.0).astype(np.float32)
    trainer = gdfast.Trainer(model, gdfast.Adam(model.params, lr=1e-2), (x, y), batch_size=16,
                             test=(x, y))
    history = trainer.fit(epochs=3)
    assert history[-1]["test_acc"] is None and history[-1]["train_acc"] is None
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    with pytest.raises(ValueError, match="regression"):
        gdfast.Trainer(model, gdfast.Adam(model.params), (x, y), test=(x, y),
                       monitor="test_acc").fit(epochs=1)
