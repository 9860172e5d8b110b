"""opt.add_param_group: new tensors get state and are updated; old ones continue bit-exactly."""
import os

import numpy as np
import pytest

import gdfast
from gdfast import schedules
from gdfast.reference import optim as ref

# (optimizer, constructor options, options of the added group)
CASES = [
    ("SGD", {}, {"lr": 0.02}),
    ("SGD", {}, {"lr": 0.02, "momentum": 0.9, "nesterov": True}),  # buffer not allocated before
    ("SGD", {"momentum": 0.9}, {"lr": 0.02, "dampening": 0.1}),
    ("Adam", {}, {"lr": 0.02, "amsgrad": True}),  # max_exp_avg_sq not allocated before
    ("AdamW", {}, {"weight_decay": 0.1}),
    ("RMSprop", {}, {"lr": 0.02, "centered": True, "momentum": 0.5}),
    ("Adagrad", {"initial_accumulator_value": 0.1},
     {"lr": 0.02, "initial_accumulator_value": 0.3, "lr_decay": 0.01}),
    ("Lion", {}, {"lr": 0.001}),
]
IDS = [f"{c}-{'-'.join(map(str, n))}" for c, _, n in CASES]
K = 7  # steps before the group is added


def _arrays(rng, sizes):
    return [rng.standard_normal(n).astype(np.float32) for n in sizes]


def _bitwise(got, want):
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("cls,kw,new", CASES, ids=IDS)
def test_added_group_is_updated_and_old_state_is_kept(cls, kw, new):
    rng = np.random.default_rng(3)
    old = _arrays(rng, [5, 300])
    twin_old = [p.copy() for p in old]
    added = _arrays(rng, [1, 130])
    twin_added = [p.copy() for p in added]
    opt = getattr(gdfast, cls)(old, lr=0.01, **kw)
    plain = getattr(gdfast, cls)(twin_old, lr=0.01, **kw)  # never gets the group
    for _ in range(K):
        grads = _arrays(rng, [5, 300])
        opt.step(grads)
        plain.step(grads)
    opt.add_param_group({"params": added, **new})
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["params"][1] is added[1]
    assert {k: v for k, v in opt.param_groups[1].items() if k != "params"} == {
        **opt.defaults, **new, **({"betas": opt.defaults["betas"]} if "betas" in new else {})}
    # the step count is global: the new tensors' bias correction / lr_decay
    # continue from step K, as a reference optimizer started at t = K
    oracle = getattr(ref, cls)(twin_added, **{**opt.defaults, **new})
    oracle.t = K
    for _ in range(20):
        g_old, g_new = _arrays(rng, [5, 300]), _arrays(rng, [1, 130])
        opt.step(g_old + g_new)  # one call updates old and new tensors
        plain.step(g_old)
        oracle.step(g_new)
    _bitwise(old, twin_old)
    sd, sd_plain = opt.state_dict(), plain.state_dict()
    assert sd["step"] == sd_plain["step"] == K + 20
    for key in (0, 1):
        for name, v in sd_plain["state"][key].items():
            assert np.array_equal(sd["state"][key][name], v)
    for got, want in zip(added, twin_added):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_new_state_starts_fresh():
    rng = np.random.default_rng(0)
    opt = gdfast.Adagrad(_arrays(rng, [4]), initial_accumulator_value=0.5)
    opt.step(_arrays(rng, [4]))
    opt.add_param_group({"params": [np.ones(3, np.float32)], "initial_accumulator_value": 2.0})
    assert np.array_equal(opt.state_dict()["state"][1]["sum"], np.full(3, 2.0, np.float32))
    sgd = gdfast.SGD(_arrays(rng, [4]))
    sgd.add_param_group({"params": [np.ones(3, np.float32)], "momentum": 0.9})
    sd = sgd.state_dict()
    # like PyTorch: no momentum_buffer until the group's first step
    assert "momentum_buffer" not in sd["state"][1] and "momentum_buffer" not in sd["state"][0]
    sgd.step([np.zeros(4, np.float32), np.ones(3, np.float32)])
    assert np.array_equal(sgd.state_dict()["state"][1]["momentum_buffer"], np.ones(3))


def _bad_groups(base):
    a = np.zeros(6, np.float32)
    return [
        ("not a dict", [np.zeros(2, np.float32)], TypeError, "param_group must be a dict"),
        ("no params", {"lr": 0.1}, ValueError, "non-empty 'params'"),
        ("empty params", {"params": []}, ValueError, "non-empty 'params'"),
        ("float64", {"params": [np.zeros(3)]}, (TypeError, ValueError), "float32"),
        ("strided", {"params": [np.zeros(8, np.float32)[::2]]}, (TypeError, ValueError),
         "contiguous"),
        ("read-only", {"params": [np.zeros(3, np.float32)]}, ValueError, "writeable|read-only"),
        ("already in a group", {"params": [base[1]]}, ValueError, "already in a param group"),
        ("view of a parameter", {"params": [base[1][2:5]]}, ValueError, "shares memory"),
        ("overlap each other", {"params": [a[:4], a[2:]]}, ValueError, "share memory"),
        ("same array twice", {"params": [a, a]}, ValueError, "share memory"),
        ("unknown option", {"params": [a], "lrr": 0.1}, ValueError, "unknown option 'lrr'"),
        ("bad lr", {"params": [a], "lr": -1.0}, ValueError, "lr"),
        ("bad betas", {"params": [a], "betas": (1.5, 0.9)}, ValueError, "betas|beta"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_group_is_refused_and_changes_nothing(case):
    rng = np.random.default_rng(5)
    base = _arrays(rng, [3, 10])
    twin = [p.copy() for p in base]
    opt = gdfast.Adam(base, lr=0.01)
    plain = gdfast.Adam(twin, lr=0.01)
    grads = _arrays(rng, [3, 10])
    opt.step(grads)
    plain.step(grads)
    what, group, exc, match = _bad_groups(base)[case]
    if what == "read-only":
        group["params"][0].flags.writeable = False
    groups_before = opt.param_groups
    with pytest.raises(exc, match=match):
        opt.add_param_group(group)
    assert opt.param_groups is groups_before and len(opt.param_groups) == 1
    grads = _arrays(rng, [3, 10])
    opt.step(grads)  # still a two-tensor optimizer, in step with its twin
    plain.step(grads)
    _bitwise(base, twin)
    assert opt.state_dict()["step"] == 2


def test_arena_and_lookahead_refuse():
    arena = gdfast.Params({"w": (3, 2), "b": (2,)})
    opt = gdfast.Adam(arena)
    with pytest.raises(TypeError, match="fixed at construction.*groups="):
        opt.add_param_group({"params": [np.zeros(2, np.float32)]})
    assert len(opt.param_groups) == 1
    inner = gdfast.SGD([np.zeros(3, np.float32)], lr=0.1)
    la = gdfast.Lookahead(inner)
    for target in (la, inner):
        with pytest.raises(TypeError, match="Lookahead"):
            target.add_param_group({"params": [np.zeros(2, np.float32)]})
    assert len(inner.param_groups) == 1


@pytest.mark.parametrize("cls,kw,new", [CASES[2], CASES[3], CASES[6]], ids=[IDS[2], IDS[3], IDS[6]])
def test_state_dict_round_trip_after_add(cls, kw, new, tmp_path):
    rng = np.random.default_rng(8)
    params = _arrays(rng, [4, 50])
    extra = _arrays(rng, [20])
    opt = getattr(gdfast, cls)(params, lr=0.01, **kw)
    for _ in range(3):
        opt.step(_arrays(rng, [4, 50]))
    opt.add_param_group({"params": extra, **new})
    for _ in range(3):
        opt.step(_arrays(rng, [4, 50, 20]))
    path = tmp_path / "opt.npz"
    opt.save(path)
    copies = [p.copy() for p in params], [p.copy() for p in extra]
    resumed = getattr(gdfast, cls)(copies[0], lr=0.01, **kw)
    with pytest.raises(ValueError, match="param groups|keys"):  # no group added yet
        resumed.load_state_dict(opt.state_dict())
    resumed.add_param_group({"params": copies[1], **new})
    resumed.load(path)
    for _ in range(5):
        grads = _arrays(rng, [4, 50, 20])
        opt.step(grads)
        resumed.step(grads)
    _bitwise(params + extra, copies[0] + copies[1])


def test_schedule_sets_the_new_groups_lr():
    opt = gdfast.SGD([np.zeros(3, np.float32)], lr=0.5)
    opt.add_param_group({"params": [np.zeros(2, np.float32)], "lr": 0.01})
    schedules.Constant(0.1).apply(opt, 0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    p = opt.param_groups[1]["params"][0]
    opt.step([np.zeros(3, np.float32), np.ones(2, np.float32)])
    assert np.array_equal(p, np.full(2, np.float32(-0.1)))


def test_repeated_add_does_not_leak_the_span_tables():
    """Every add_param_group rebinds the C core; its malloc'd parameter spans
    (16 bytes per parameter) must be freed, else 40 adds over 4000 parameters
    leak about 2.5 MB."""
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    opt = gdfast.SGD([np.zeros(1, np.float32) for _ in range(4000)], lr=0.1)
    for _ in range(5):  # warm up the allocator
        opt.add_param_group({"params": [np.zeros(1, np.float32)]})
    before = rss()
    for _ in range(40):
        opt.add_param_group({"params": [np.zeros(1, np.float32)]})
    assert rss() - before < 1_000_000


def test_in_step_is_true_while_a_step_holds_the_plan():
    # add_param_group refuses to rebuild the plan while _in_step (a step in
    # another thread, or a fused MLP step between _begin_step and _end_step)
    arena = gdfast.Params({"w": (4,)})
    fused = gdfast.SGD(arena, lr=0.1)
    fused._begin_step(arena)
    try:
        assert fused._in_step
    finally:
        fused._end_step(False)
    assert not fused._in_step
