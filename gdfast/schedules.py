"""Learning-rate schedules: ``lr = schedule(step)``.

Every schedule is a callable of the optimizer step count (0 for the first
step) returning the learning rate, with the same formulas PyTorch documents
for its schedulers (``step`` plays the role of ``last_epoch``; wrap a
schedule in ``PerEpoch`` to make it change once per epoch). Schedules
compose: ``Warmup(Cosine(1e-3, 10_000), 500)`` warms up linearly and then
anneals. ``schedule.apply(optimizer, step)`` sets the rate of every
parameter group (times the group's optional ``"lr_scale"``), so any
optimizer with PyTorch-style ``param_groups`` can be driven.

``ReduceOnPlateau`` also takes the monitored metric: call
``schedule.step(metric)`` once per epoch.
"""
import math
import numbers

__all__ = ["Schedule", "Constant", "StepDecay", "MultiStep", "Exponential", "Cosine",
           "CosineWarmRestarts", "Warmup", "OneCycle", "ReduceOnPlateau", "PerEpoch",
           "Sequential", "make"]


# Step counts and periods are bounded like the optimizers' step count, so
# every float formula below stays finite and every loop short.
_MAX_COUNT = 2**62


def _count(name, value, minimum=1):
    """An integer in [minimum, 2**62] (bools and floats such as 0.5 refused)."""
    if type(value) is int and minimum <= value <= _MAX_COUNT:  # every step: keep it cheap
        return value
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if value > _MAX_COUNT:
        raise ValueError(f"{name} must be {what} of at most 2**62, got {value!r}")
    return int(value)


def _check_step(step):
    return _count("step", step, 0)


def _real(name, value, lo=-math.inf, hi=math.inf, open_lo=False):
    """A finite float in [lo, hi] ((lo, hi] with open_lo); NaN, Inf and bools refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not (math.isfinite(v) and (lo < v if open_lo else lo <= v) and v <= hi):
        bound = f"> {lo:g}" if open_lo else f">= {lo:g}"
        bound += f" and <= {hi:g}" if hi < math.inf else ""
        raise ValueError(f"{name} must be {bound} and finite, got {value!r}")
    return v


def _positive(name, value):
    return _real(name, value, 0.0, open_lo=True)


def _lr(value, name="lr"):
    return _real(name, value, 0.0)


def _scaled(lr, gamma, n):
    """lr * gamma ** n, refusing a rate that overflows."""
    try:
        return lr * gamma ** n
    except OverflowError:
        raise ValueError(f"lr * gamma ** {n} overflows (gamma={gamma!r})") from None


class Schedule:
    """Base class: subclasses define ``__call__(step) -> lr``."""

    def __call__(self, step):
        raise NotImplementedError

    def apply(self, optimizer, step):
        """Set every parameter group's lr for `step`; returns the lr."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    # stateless by default: the step count is the whole position
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    def __init__(self, lr):
        self.lr = _lr(lr)

    def __call__(self, step):
        _check_step(step)
        return self.lr


class StepDecay(Schedule):
    """lr * gamma ** (step // step_size)  (torch StepLR)."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr, self.step_size = _lr(lr), _count("step_size", step_size)
        self.gamma = _lr(gamma, "gamma")

    def __call__(self, step):
        return _scaled(self.lr, self.gamma, _check_step(step) // self.step_size)


class MultiStep(Schedule):
    """lr * gamma ** (number of milestones <= step)  (torch MultiStepLR)."""

    def __init__(self, lr, milestones, gamma=0.1):
        self.lr, self.gamma = _lr(lr), _lr(gamma, "gamma")
        self.milestones = sorted(_count(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones))

    def __call__(self, step):
        _check_step(step)
        return _scaled(self.lr, self.gamma, sum(m <= step for m in self.milestones))


class Exponential(Schedule):
    """lr * gamma ** step  (torch ExponentialLR); per epoch with ``PerEpoch``."""

    def __init__(self, lr, gamma):
        self.lr, self.gamma = _lr(lr), _positive("gamma", gamma)

    def __call__(self, step):
        return _scaled(self.lr, self.gamma, _check_step(step))


def _cosine(lr_max, lr_min, t, period):
    return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * t / period)) / 2


class Cosine(Schedule):
    """eta_min + (lr - eta_min) (1 + cos(pi t / T_max)) / 2  (torch CosineAnnealingLR).

    Stays at eta_min after T_max (torch's closed form would rise again).
    """

    def __init__(self, lr, T_max, eta_min=0.0):
        self.lr, self.T_max, self.eta_min = _lr(lr), _count("T_max", T_max), _lr(eta_min, "eta_min")

    def __call__(self, step):
        return _cosine(self.lr, self.eta_min, min(_check_step(step), self.T_max), self.T_max)


class CosineWarmRestarts(Schedule):
    """SGDR (Loshchilov & Hutter): cosine from lr to eta_min over T_0 steps, then
    restart, each period T_mult times longer  (torch CosineAnnealingWarmRestarts)."""

    def __init__(self, lr, T_0, T_mult=1, eta_min=0.0):
        self.lr, self.T_0, self.T_mult = _lr(lr), _count("T_0", T_0), _count("T_mult", T_mult)
        self.eta_min = _lr(eta_min, "eta_min")

    def __call__(self, step):
        t, period = _check_step(step), self.T_0
        while t >= period:          # at most log_{T_mult} iterations unless T_mult == 1
            if self.T_mult == 1:
                t %= period
                break
            t -= period
            period *= self.T_mult
        return _cosine(self.lr, self.eta_min, t, period)


class Warmup(Schedule):
    """Linear warmup for `warmup_steps` steps, then `after` (shifted to start at 0).

    The factor goes from start_factor to 1 (torch LinearLR followed by the
    other scheduler, as SequentialLR does), applied to ``after(0)``.
    """

    def __init__(self, after, warmup_steps, start_factor=0.01):
        if not callable(after):
            after = Constant(after)
        start_factor = _real("start_factor", start_factor, 0.0, 1.0)
        self.after, self.warmup_steps = after, _count("warmup_steps", warmup_steps, 0)
        self.start_factor = start_factor

    def __call__(self, step):
        if _check_step(step) < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.after(0) * (self.start_factor + (1 - self.start_factor) * frac)
        return self.after(step - self.warmup_steps)

    def state_dict(self):
        return self.after.state_dict()

    def load_state_dict(self, state):
        self.after.load_state_dict(state)


class Sequential(Schedule):
    """Run schedules one after another: ``Sequential([(s1, n1), (s2, n2)], last)``;
    each starts counting from 0 (torch SequentialLR)."""

    def __init__(self, phases, last):
        self.phases = [(s if callable(s) else Constant(s), _count(f"phases[{i}] length", n))
                       for i, (s, n) in enumerate(phases)]
        self.last = last if callable(last) else Constant(last)

    def __call__(self, step):
        t = _check_step(step)
        for schedule, length in self.phases:
            if t < length:
                return schedule(t)
            t -= length
        return self.last(t)


class PerEpoch(Schedule):
    """Drive `schedule` with the epoch number instead of the step:
    ``schedule(step // steps_per_epoch)``."""

    def __init__(self, schedule, steps_per_epoch):
        if not callable(schedule):
            raise TypeError(f"schedule must be a schedule, got {type(schedule).__name__}")
        self.schedule, self.steps_per_epoch = schedule, _count("steps_per_epoch", steps_per_epoch)

    def __call__(self, step):
        return self.schedule(_check_step(step) // self.steps_per_epoch)


class OneCycle(Schedule):
    """The 1cycle policy (Smith & Topin), as torch OneCycleLR (learning rate only).

    Rises from max_lr/div_factor to max_lr over pct_start of total_steps, then
    falls to max_lr/(div_factor*final_div_factor); three_phase goes back to
    the initial rate first, then annihilates.
    """

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal="cos", div_factor=25.0,
                 final_div_factor=1e4, three_phase=False):
        if anneal not in ("cos", "linear"):
            raise ValueError(f"anneal must be 'cos' or 'linear', got {anneal!r}")
        if not _real("pct_start", pct_start, 0.0, 1.0, open_lo=True) < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
        div_factor = _positive("div_factor", div_factor)
        final_div_factor = _positive("final_div_factor", final_div_factor)
        self.max_lr, self.total_steps = _lr(max_lr, "max_lr"), _count("total_steps", total_steps)
        self.pct_start, self.anneal, self.three_phase = pct_start, anneal, three_phase
        self.div_factor, self.final_div_factor = div_factor, final_div_factor
        initial = max_lr / div_factor
        final = initial / final_div_factor
        up = float(pct_start * total_steps) - 1
        if three_phase:
            self._phases = [(up, initial, max_lr), (2 * up, max_lr, initial),
                            (total_steps - 1, initial, final)]
        else:
            self._phases = [(up, initial, max_lr), (total_steps - 1, max_lr, final)]

    def __call__(self, step):
        t = min(_check_step(step), self.total_steps - 1)
        start = 0.0
        for i, (end, lr_from, lr_to) in enumerate(self._phases):
            if t <= end or i == len(self._phases) - 1:
                pct = (t - start) / (end - start) if end > start else 1.0
                if self.anneal == "cos":
                    return lr_to + (lr_from - lr_to) / 2 * (math.cos(math.pi * pct) + 1)
                return (lr_to - lr_from) * pct + lr_from
            start = end


class ReduceOnPlateau(Schedule):
    """Scale `lr` (a number or a schedule) by `factor` when the metric stops
    improving for `patience` epochs (torch ReduceLROnPlateau).

    Call ``step(metric)`` once per epoch; ``schedule(step)`` returns the
    current rate: ``max(base(step) * scale, min_lr)``.
    """

    def __init__(self, lr, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        if not _real("factor", factor, 0.0, 1.0, open_lo=True) < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        self.base = lr if callable(lr) else Constant(lr)
        self.mode, self.factor, self.patience = mode, factor, _count("patience", patience, 0)
        self.threshold, self.threshold_mode = _lr(threshold, "threshold"), threshold_mode
        self.cooldown, self.min_lr = _count("cooldown", cooldown, 0), _lr(min_lr, "min_lr")
        self.eps = _lr(eps, "eps")
        self.scale, self.best = 1.0, math.inf if mode == "min" else -math.inf
        self.num_bad_epochs, self.cooldown_counter, self._last_step = 0, 0, 0

    def _is_better(self, metric):
        if self.mode == "min":
            ref = self.best * (1 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return metric < ref
        ref = self.best * (1 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        return metric > ref

    def __call__(self, step):
        self._last_step = _check_step(step)
        return max(self.base(step) * self.scale, self.min_lr)

    def step(self, metric):
        """Record one epoch's metric; returns True when the rate was reduced."""
        try:
            metric = float(metric)
        except (OverflowError, TypeError, ValueError):
            raise TypeError(f"metric must be a number, got {metric!r}") from None
        if math.isnan(metric):
            raise ValueError("metric is NaN: cannot judge a plateau on it")
        if self._is_better(metric):
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.num_bad_epochs = 0
            self.cooldown_counter = self.cooldown
            old = self(self._last_step)
            new_scale = self.scale * self.factor
            if old - max(self.base(self._last_step) * new_scale, self.min_lr) > self.eps:
                self.scale = new_scale
                return True
        return False

    def state_dict(self):
        return {"scale": self.scale, "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "last_step": self._last_step,
                "base": self.base.state_dict()}

    def load_state_dict(self, state):
        """Restore what state_dict() returned; checks everything before changing anything."""
        keys = {"scale", "best", "num_bad_epochs", "cooldown_counter", "last_step", "base"}
        if not isinstance(state, dict) or not keys - {"base"} <= set(state) <= keys:
            raise ValueError(f"ReduceOnPlateau state must be a dict with keys {sorted(keys)}")
        scale = _real("state['scale']", state["scale"], 0.0, 1.0, open_lo=True)
        best = state["best"]
        if isinstance(best, bool) or not isinstance(best, numbers.Real) or math.isnan(best):
            raise ValueError(f"state['best'] must be a number, got {best!r}")
        counts = [_count(f"state[{k!r}]", state[k], 0)
                  for k in ("num_bad_epochs", "cooldown_counter", "last_step")]
        self.base.load_state_dict(state.get("base", {}))
        self.scale, self.best = scale, float(best)
        self.num_bad_epochs, self.cooldown_counter, self._last_step = counts


def make(name, lr, total_steps, *, warmup=0, steps_per_epoch=1, **kwargs):
    """Build a named schedule for `total_steps` optimizer steps (the CLI's helper).

    name: constant, step, multistep, exponential, cosine, sgdr, onecycle, plateau.
    warmup: linear warmup steps put in front (not for onecycle, which has its own).
    """
    total_steps = _count("total_steps", total_steps)
    warmup = _count("warmup", warmup, 0)
    steps_per_epoch = _count("steps_per_epoch", steps_per_epoch)
    n = max(total_steps - warmup, 1)
    epochs = max(total_steps // steps_per_epoch, 1)
    builders = {
        "constant": lambda: Constant(lr),
        "step": lambda: PerEpoch(StepDecay(lr, kwargs.get("step_size", max(epochs // 3, 1)),
                                           kwargs.get("gamma", 0.1)), steps_per_epoch),
        "multistep": lambda: PerEpoch(MultiStep(lr, kwargs.get("milestones", [epochs // 2, 3 * epochs // 4]),
                                                kwargs.get("gamma", 0.1)), steps_per_epoch),
        "exponential": lambda: PerEpoch(Exponential(lr, kwargs.get("gamma", 0.9)), steps_per_epoch),
        "cosine": lambda: Cosine(lr, n, kwargs.get("eta_min", 0.0)),
        "sgdr": lambda: CosineWarmRestarts(lr, kwargs.get("T_0", steps_per_epoch), kwargs.get("T_mult", 2),
                                           kwargs.get("eta_min", 0.0)),
        "onecycle": lambda: OneCycle(lr, total_steps),
        "plateau": lambda: ReduceOnPlateau(lr, factor=kwargs.get("factor", 0.1),
                                           patience=kwargs.get("patience", 2)),
    }
    if name not in builders:
        raise ValueError(f"schedule must be one of {sorted(builders)}, got {name!r}")
    schedule = builders[name]()
    if warmup and name == "onecycle":
        raise ValueError("onecycle has its own warmup phase; use warmup=0")
    if warmup and name == "plateau":
        return ReduceOnPlateau(Warmup(schedule.base, warmup), factor=schedule.factor,
                               patience=schedule.patience)
    return Warmup(schedule, warmup) if warmup else schedule
