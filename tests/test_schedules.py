"""Schedules against closed forms and the formulas PyTorch documents."""
import math

import pytest

from gdfast import schedules as S


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def test_constant_step_multistep_exponential():
    assert [S.Constant(0.5)(t) for t in (0, 7, 10**6)] == [0.5] * 3
    step = S.StepDecay(1.0, step_size=3, gamma=0.5)
    assert [step(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    ms = S.MultiStep(0.1, milestones=[5, 2], gamma=0.1)
    assert [ms(t) for t in (0, 1, 2, 4, 5, 9)] == [approx(v) for v in (0.1, 0.1, 0.01, 0.01, 0.001, 0.001)]
    ex = S.Exponential(2.0, 0.9)
    assert ex(10) == approx(2.0 * 0.9 ** 10)
    per_epoch = S.PerEpoch(S.Exponential(2.0, 0.9), steps_per_epoch=4)
    assert [per_epoch(t) for t in (0, 3, 4, 8)] == [approx(v) for v in (2.0, 2.0, 1.8, 2.0 * 0.81)]


def test_cosine_matches_torch_closed_form_and_holds_at_the_end():
    lr, eta_min, T = 0.1, 0.001, 50
    sched = S.Cosine(lr, T, eta_min)
    for t in range(T + 1):
        expected = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / T)) / 2
        assert sched(t) == approx(expected)
    assert sched(0) == approx(lr) and sched(T) == approx(eta_min) and sched(3 * T) == approx(eta_min)


def torch_sgdr(t, lr, T_0, T_mult, eta_min):
    """CosineAnnealingWarmRestarts.step(epoch) as the PyTorch docs/code define T_cur, T_i."""
    if T_mult == 1:
        T_cur, T_i = t % T_0, T_0
    else:
        n = int(math.log(t / T_0 * (T_mult - 1) + 1, T_mult))
        T_cur, T_i = t - T_0 * (T_mult ** n - 1) / (T_mult - 1), T_0 * T_mult ** n
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2


@pytest.mark.parametrize("T_mult", [1, 2, 3])
def test_sgdr_restarts(T_mult):
    sched = S.CosineWarmRestarts(0.5, T_0=4, T_mult=T_mult, eta_min=0.01)
    for t in range(200):
        assert sched(t) == approx(torch_sgdr(t, 0.5, 4, T_mult, 0.01)), t
    # restarts land exactly on the peak: 4, 4+8=12, 12+16=28 for T_mult=2
    restarts = [4, 8, 12] if T_mult == 1 else [4, 4 + 4 * T_mult, 4 + 4 * T_mult + 4 * T_mult ** 2]
    for r in restarts:
        assert sched(r) == approx(0.5) and sched(r - 1) < 0.5


def torch_onecycle(t, max_lr, total, pct=0.3, div=25.0, final_div=1e4, three_phase=False, cos=True):
    """OneCycleLR.get_lr transcribed from its documented phase table."""
    initial, min_lr = max_lr / div, max_lr / div / final_div
    if three_phase:
        phases = [(pct * total - 1, initial, max_lr), (2 * pct * total - 2, max_lr, initial),
                  (total - 1, initial, min_lr)]
    else:
        phases = [(pct * total - 1, initial, max_lr), (total - 1, max_lr, min_lr)]
    start = 0
    for i, (end, a, b) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            p = (t - start) / (end - start)
            return b + (a - b) / 2 * (math.cos(math.pi * p) + 1) if cos else (b - a) * p + a
        start = end


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle(three_phase, anneal):
    total = 100
    sched = S.OneCycle(1.0, total, anneal=anneal, three_phase=three_phase)
    for t in range(total):
        assert sched(t) == approx(torch_onecycle(t, 1.0, total, three_phase=three_phase,
                                                 cos=anneal == "cos")), t
    assert sched(0) == approx(1.0 / 25) and sched(29) == approx(1.0)
    assert sched(total - 1) == approx(1.0 / 25 / 1e4)


def test_warmup_then_cosine_is_continuous_and_composes():
    sched = S.Warmup(S.Cosine(0.1, 90), warmup_steps=10, start_factor=0.0)
    assert sched(0) == 0.0
    assert sched(5) == approx(0.05)
    assert sched(10) == approx(0.1)          # first step of the cosine
    assert sched(100) == approx(0.0)
    assert all(sched(t) <= sched(t + 1) for t in range(10))
    assert all(sched(t) >= sched(t + 1) for t in range(10, 100))
    # torch LinearLR: start_factor + (1 - start_factor) * t / total_iters
    lin = S.Warmup(0.3, warmup_steps=4, start_factor=1 / 3)
    assert [lin(t) for t in range(6)] == [approx(0.3 * (1 / 3 + 2 / 3 * t / 4)) for t in range(4)] + [0.3, 0.3]
    seq = S.Sequential([(0.1, 3), (S.StepDecay(1.0, 2, 0.5), 4)], last=0.01)
    assert [seq(t) for t in range(9)] == [0.1, 0.1, 0.1, 1.0, 1.0, 0.5, 0.5, 0.01, 0.01]


def test_reduce_on_plateau_follows_torch_rules():
    sched = S.ReduceOnPlateau(1.0, mode="min", factor=0.5, patience=2, cooldown=1, min_lr=0.2)
    metrics = [10, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    lrs = []
    for m in metrics:
        sched.step(m)
        lrs.append(sched(0))
    # best=9 after epoch 1; bad epochs 2,3,4 -> reduce at the 3rd bad one (> patience);
    # cooldown 1 swallows the next bad epoch, then 3 more bad -> reduce; then min_lr clamps
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    for _ in range(10):
        sched.step(9)
    assert sched(0) == 0.2
    # threshold: a relative improvement smaller than 1e-4 does not count
    s2 = S.ReduceOnPlateau(1.0, patience=0)
    s2.step(1.0)
    assert s2.step(1.0 - 1e-6) is True and s2(0) == approx(0.1)
    mx = S.ReduceOnPlateau(1.0, mode="max", patience=0, factor=0.1)
    mx.step(0.5)
    assert mx.step(0.6) is False and mx.step(0.6) is True


def test_plateau_state_round_trips():
    a = S.ReduceOnPlateau(S.Cosine(1.0, 10), patience=1)
    for m in (3, 3, 3, 2):
        a.step(m)
    b = S.ReduceOnPlateau(S.Cosine(1.0, 10), patience=1)
    b.load_state_dict(a.state_dict())
    for m in (2, 2, 2):
        assert a.step(m) == b.step(m)
        assert a(4) == b(4)


class _Opt:
    def __init__(self):
        self.param_groups = [{"lr": 0.0}, {"lr": 0.0, "lr_scale": 0.1}]


def test_apply_drives_param_groups():
    opt = _Opt()
    sched = S.Cosine(1.0, 10)
    assert sched.apply(opt, 5) == approx(0.5)
    assert opt.param_groups[0]["lr"] == approx(0.5) and opt.param_groups[1]["lr"] == approx(0.05)


def test_make_builds_every_named_schedule():
    for name in ("constant", "step", "multistep", "exponential", "cosine", "sgdr", "plateau"):
        s = S.make(name, 0.01, total_steps=100, warmup=10, steps_per_epoch=10)
        assert s(0) == approx(0.0001) and s(10) == approx(0.01), name
    one = S.make("onecycle", 0.01, total_steps=100)
    assert one(0) == approx(0.01 / 25)
    with pytest.raises(ValueError, match="schedule must be one of"):
        S.make("linear-ish", 0.1, 10)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="lr must be >= 0"):
        S.Constant(-1)
    with pytest.raises(ValueError, match="T_max must be a positive integer"):
        S.Cosine(0.1, 0)
    with pytest.raises(ValueError, match="T_mult"):
        S.CosineWarmRestarts(0.1, 5, T_mult=1.5)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        S.Cosine(0.1, 5)(-1)
    with pytest.raises(ValueError, match="factor"):
        S.ReduceOnPlateau(0.1, factor=1.5)
    with pytest.raises(ValueError, match="NaN"):
        S.ReduceOnPlateau(0.1).step(float("nan"))
