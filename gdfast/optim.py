"""Optimizers with PyTorch's names, defaults and math, updating in place.

Every optimizer takes its parameters as

* a ``gdfast.Params`` arena: one kernel call per step updates every tensor,
  reading the gradients from ``params.grad``; ``step()`` takes no grads.
  ``groups=[{"params": [names], "weight_decay": 0.0}, ...]`` gives tensors
  their own hyperparameters; tensors not named in any group form a last
  group with the optimizer's defaults;
* a list of C-contiguous, writeable float32 arrays, or a list of PyTorch-style
  group dicts ``{"params": [arrays], "lr": ...}``; ``step(grads)`` then takes
  a list of gradients aligned with the parameters.

``opt.param_groups`` is a list of dicts; a change such as
``opt.param_groups[0]["lr"] = 1e-4`` takes effect at the next step.

NaN/Inf policy: like PyTorch, nothing is checked per step; a NaN or Inf in a
gradient propagates into the moments and the parameters.
"""
import json
import threading

import numpy as np

from . import _kernels
from .checkpoint import CheckpointError, read_npz, write_npz
from .params import Params, _aligned_empty

_FORMAT = "gdfast.optim/1"
_AIDS = ("agc", "agc_eps", "ema")
# the step count lives in a C long long: far below its 2**63 limit, so the
# next step's t + 1 cannot overflow
_MAX_STEP = 2**62


class Optimizer(_kernels._OptimCore):
    """Common machinery: parameter groups, state buffers, state_dict, save/load."""

    _kind = None        # "sgd", "rmsprop", "adam", "adagrad", "lion"
    _decoupled = False  # AdamW, Lion
    _slots = ()         # names of the state buffers s0, s1, s2 (PyTorch's keys)

    def __init__(self, params, defaults, groups=None):
        self._build(params, defaults, groups)

    def _build(self, params, defaults, groups=None):
        self.defaults = dict(defaults)
        arena, entries, param_groups = self._parse(params, groups)
        self._arena_ref = arena
        self._shapes = {key: p.shape for key, p, _, _ in entries}
        self.param_groups = param_groups
        needed = self._slots_needed(param_groups)
        total = sum(size for _, _, size, _ in entries)
        bufs = [_aligned_empty(total) if need else None for need in needed]
        self._init_state(bufs, entries, param_groups)
        # the weights' moving average starts as the weights (the first step overwrites it)
        ema = _aligned_empty(total) if any(g["ema"] is not None for g in param_groups) else None
        # state views per parameter key, in state-buffer order
        self._keys = []
        self._state = {}
        offset = 0
        for key, p, size, _ in entries:
            self._keys.append(key)
            self._state[key] = {self._slots[k]: bufs[k][offset:offset + size].reshape(p.shape)
                                for k in range(3) if bufs[k] is not None}
            if ema is not None:
                self._state[key]["ema"] = view = ema[offset:offset + size].reshape(p.shape)
                view[...] = p
            offset += size
        segments, self._seg_info, agc = self._segments(arena, entries, bufs + [ema])
        states = sum(1 << k for k in range(3) if bufs[k] is not None) | (8 if ema is not None else 0)
        self._bind(self._kind, self._decoupled, arena, segments, states, agc)
        self._check_hyper()

    # ---- construction ----

    def _parse(self, params, groups):
        """(arena or None, [(key, param view, size, group index)], param_groups)."""
        if isinstance(params, Params):
            return self._parse_arena(params, groups)
        if groups is not None:
            raise TypeError("groups= is for a Params arena; with arrays pass a list of "
                            "group dicts as params")
        if isinstance(params, np.ndarray) or not isinstance(params, (list, tuple)):
            raise TypeError("params must be a gdfast.Params, a list of float32 arrays or a "
                            f"list of param-group dicts, got {type(params).__name__}")
        if len(params) == 0:
            raise ValueError("params is empty: give at least one parameter array")
        if all(isinstance(g, dict) for g in params):
            raw = list(params)
        elif any(isinstance(g, dict) for g in params):
            raise TypeError("params mixes arrays and group dicts; use one or the other")
        else:
            raw = [{"params": list(params)}]
        entries, param_groups = [], []
        for gi, g in enumerate(raw):
            arrays = g.get("params")
            if isinstance(arrays, np.ndarray):
                arrays = [arrays]
            if not isinstance(arrays, (list, tuple)) or len(arrays) == 0:
                raise ValueError(f"param group {gi} must have a non-empty 'params' list")
            for a in arrays:
                _kernels.check_float32(a, f"params[{len(entries)}]", True)
                entries.append((len(entries), a, a.size, gi))
            param_groups.append(self._group(g, list(arrays), gi))
        return None, entries, param_groups

    def _parse_arena(self, arena, groups):
        owner = {}
        param_groups = []
        for gi, g in enumerate(groups or []):
            if not isinstance(g, dict):
                raise TypeError(f"groups[{gi}] must be a dict, got {type(g).__name__}")
            names = g.get("params")
            if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
                raise ValueError(f"groups[{gi}]['params'] must be a non-empty list of tensor names")
            for name in names:
                if name not in arena:
                    raise ValueError(f"groups[{gi}] names {name!r}, not in the arena "
                                     f"(have {arena.names})")
                if name in owner:
                    raise ValueError(f"tensor {name!r} is in groups {owner[name]} and {gi}; "
                                     f"each tensor belongs to one group")
                owner[name] = gi
            param_groups.append(self._group(g, list(names), gi))
        rest = [n for n in arena.names if n not in owner]
        if rest:
            for n in rest:
                owner[n] = len(param_groups)
            param_groups.append(self._group({}, rest, len(param_groups)))
        _kernels.check_float32(arena.data, "params.data", True)
        entries = [(n, arena[n], arena[n].size, owner[n]) for n in arena.names]
        return arena, entries, param_groups

    def _group(self, g, params, gi):
        unknown = sorted(set(g) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} in param group {gi}; "
                             f"{type(self).__name__} takes {sorted(self.defaults)}")
        group = {"params": params}
        for k, v in self.defaults.items():
            group[k] = g.get(k, v)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        return group

    def _slots_needed(self, groups):
        """Which of the state buffers s0, s1, s2 any group needs."""
        raise NotImplementedError

    def _init_state(self, bufs, entries, groups):
        """Initial state values (zeros unless the algorithm says otherwise)."""

    @staticmethod
    def _segments(arena, entries, bufs):
        """Plan segments (adjacent arena tensors of one group merge into one),
        their (param, offset) and the tensors AGC may clip: (segment, offset in
        it, size, units, group), a unit per column of the last axis (a
        (fan_in, fan_out) weight: per output unit), or the whole of a vector."""
        segments, info, agc = [], [], []
        offset = 0
        for key, p, size, gi in entries:
            if arena is not None and size == 0:
                continue
            start = arena.offset(key) if arena is not None else None
            if (arena is not None and segments and segments[-1][5] == gi
                    and info[-1][2] + info[-1][1] == start):
                last_off, last_n, last_start = info[-1]
                info[-1] = (last_off, last_n + size, last_start)
            else:
                info.append((offset, size, start))
                segments.append(None)
            seg_off, n, st = info[-1]
            if arena is not None:
                p_view, g_view = arena.data[st:st + n], arena.grad[st:st + n]
            else:
                p_view, g_view = p, None
            segments[-1] = (p_view, g_view) + tuple(
                b[seg_off:seg_off + n] if b is not None else None for b in bufs[:3]) + (
                gi, bufs[3][seg_off:seg_off + n] if bufs[3] is not None else None)
            if size:
                agc.append((len(segments) - 1, offset - seg_off, size,
                            p.shape[-1] if p.ndim >= 2 else 1, gi))
            offset += size
        return segments, [(seg[0], off) for seg, (off, _, _) in zip(segments, info)], agc

    def add_param_group(self, param_group):
        """Add {"params": [arrays], option: value, ...} as a new group (list mode).

        Validated like the constructor (changes nothing on error); missing
        options come from defaults; the new tensors get fresh state (zeros, or
        initial_accumulator_value for Adagrad), also a state buffer the
        optimizer did not need before; the old tensors keep theirs bit for bit.
        The step count is global: bias correction (Adam, AdamW) and lr_decay
        (Adagrad) of the new tensors use the optimizer's step count, not one
        restarted at the group's first step as PyTorch's per-tensor step does.
        An SGD group starts its momentum buffer at its own first step."""
        if self._arena_params() is not None:
            raise TypeError("add_param_group: an optimizer over a Params arena already has "
                            "every tensor of the arena in a group; its tensors are fixed at "
                            "construction (use groups=)")
        if getattr(self, "_lookahead", False):
            raise TypeError("add_param_group: this optimizer is wrapped by a Lookahead, whose "
                            "slow weights cover only the tensors it had; add groups before "
                            "wrapping it")
        if self._in_step:  # the running step still uses the plan a rebuild would free
            raise RuntimeError("add_param_group: the optimizer is stepping in another thread; "
                               "add groups between steps")
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        arrays = param_group.get("params")
        if isinstance(arrays, np.ndarray):
            arrays = [arrays]
        if not isinstance(arrays, (list, tuple)) or len(arrays) == 0:
            raise ValueError("param_group must have a non-empty 'params' list")
        old = self._all_params()
        for i, a in enumerate(arrays):
            _kernels.check_float32(a, f"param_group['params'][{i}]", True)
            for j, b in enumerate(old):
                if a is b:
                    raise ValueError(f"param_group['params'][{i}] is already in a param group "
                                     f"(params[{j}]); each parameter belongs to one group")
                if a.size and b.size and np.may_share_memory(a, b):
                    raise ValueError(f"param_group['params'][{i}] shares memory with "
                                     f"params[{j}]; each parameter must be passed once")
            for j, b in enumerate(arrays[:i]):
                if a.size and b.size and np.may_share_memory(a, b):
                    raise ValueError(f"param_group['params'][{j}] and [{i}] share memory; "
                                     f"each parameter must be passed once")
        raw = [dict(g) for g in self.param_groups] + [dict(param_group, params=list(arrays))]
        # a throwaway optimizer validates everything (options, hyperparameters)
        # before this one changes
        type(self).__new__(type(self))._build(raw, self.defaults)
        groups, step, started = self.param_groups, self._step, list(self._momentum_started)
        state = {key: {k: v.copy() for k, v in bufs.items()} for key, bufs in self._state.items()}
        defaults = self.defaults
        self._build(raw, defaults)
        self.defaults = defaults
        for key, bufs in state.items():
            for name, v in bufs.items():
                self._state[key][name][...] = v
        groups.append(self.param_groups[-1])  # keep the user's list and dicts
        self.param_groups = groups
        self._step = step
        self._momentum_started = started + [False]

    # ---- state ----

    def state_dict(self):
        """Step count, every state buffer (copies) and the hyperparameters.

        State is keyed by tensor name for an arena, by position for a list."""
        groups = []
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = self._group_keys(g)
            groups.append(d)
        return {"step": int(self._step),
                "state": {key: {k: v.copy() for k, v in bufs.items()}
                          for key, bufs in self._state.items()},
                "param_groups": groups}

    def ema_state(self):
        """{key: moving average of the weights} of the tensors in groups with ema
        (views: they change with every step; copy to keep)."""
        out = {}
        for g in self.param_groups:
            if g.get("ema") is not None:
                for key in self._group_keys(g):
                    out[key] = self._state[key]["ema"]
        return out

    def _group_keys(self, g):
        if self._arena_params() is not None:
            return list(g["params"])
        ids = {id(p): i for i, p in enumerate(self._all_params())}
        return [ids[id(p)] for p in g["params"]]

    def _arena_params(self):
        return getattr(self, "_arena_ref", None)

    def _all_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def load_state_dict(self, state_dict):
        """Restore what state_dict() returned; checks everything before changing anything."""
        sd = state_dict
        if not isinstance(sd, dict) or set(sd) != {"step", "state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'step', 'state', 'param_groups'")
        step = sd["step"]
        if (isinstance(step, bool) or not isinstance(step, (int, np.integer))
                or not 0 <= step < _MAX_STEP):
            raise ValueError(f"state_dict['step'] must be an integer in [0, {_MAX_STEP}), "
                             f"got {step!r}")
        state = sd["state"]
        if not isinstance(state, dict):
            raise ValueError(f"state_dict['state'] must be a dict, got {type(state).__name__}")
        if set(state) != set(self._state):
            raise ValueError(f"state_dict['state'] has keys {sorted(map(str, state))}, "
                             f"expected {sorted(map(str, self._state))}")
        for key, bufs in self._state.items():
            _check_arrays(state[key], bufs, f"state[{key!r}]", keys="buffers")
        groups = sd["param_groups"]
        if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
            raise ValueError("state_dict['param_groups'] must be a list of dicts")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, expected "
                             f"{len(self.param_groups)}")
        new_groups = []
        for gi, (mine, g) in enumerate(zip(self.param_groups, groups)):
            if list(g.get("params", [])) != self._group_keys(mine):
                raise ValueError(f"param group {gi} of state_dict holds {g.get('params')}, "
                                 f"expected {self._group_keys(mine)}")
            # files from before the training aids: their defaults (off)
            g = {**{k: self.defaults[k] for k in _AIDS if k in self.defaults}, **g}
            if set(g) - {"params"} != set(self.defaults):
                raise ValueError(f"param group {gi} of state_dict has options "
                                 f"{sorted(set(g) - {'params'})}, expected {sorted(self.defaults)}")
            new = dict(mine)
            new.update({k: (tuple(v) if k == "betas" else v) for k, v in g.items()
                        if k != "params"})
            new_groups.append(new)
        old_groups = self.param_groups
        self.param_groups = new_groups
        try:
            self._check_hyper()
        except OverflowError as e:  # a number too large for a C double
            raise ValueError(f"state_dict['param_groups']: {e}") from None
        finally:
            self.param_groups = old_groups
        for mine, new in zip(old_groups, new_groups):  # keep the user's dict objects
            mine.update(new)
        for key, bufs in self._state.items():
            for name, buf in bufs.items():
                buf[...] = state[key][name]
        self._step = int(step)

    def save(self, path):
        """Write state_dict() to an .npz file at exactly `path` (no pickle),
        atomically: an interrupted save leaves the previous file intact."""
        write_npz(path, _flatten(self.state_dict(), type(self).__name__))

    def load(self, path):
        """Restore from a file written by save()."""
        self.load_state_dict(_unflatten(path, type(self).__name__))

    def zero_grad(self):
        arena = self._arena_params()
        if arena is None:
            raise TypeError("zero_grad needs a Params arena; zero your gradient arrays yourself")
        arena.zero_grad()

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({opts}; {len(self.param_groups)} groups)"


def _flatten(sd, cls):
    keys = list(sd["state"])
    arrays = {}
    for i, key in enumerate(keys):
        for name, a in sd["state"][key].items():
            arrays[f"state/{i}/{name}"] = a
    meta = {"format": _FORMAT, "class": cls, "step": sd["step"], "keys": keys,
            "param_groups": sd["param_groups"]}
    extra = {k: v for k, v in sd.items() if k not in ("step", "state", "param_groups")}
    if extra:
        meta["extra"] = {k: v for k, v in extra.items() if k != "slow"}
        for i, (key, a) in enumerate(extra.get("slow", {}).items()):
            arrays[f"slow/{i}"] = a
    arrays["__meta__"] = np.array(json.dumps(meta, default=float))
    return arrays




def _unflatten(path, cls):
    z = read_npz(path, "gdfast optimizer file")
    try:
        meta = json.loads(str(z["__meta__"]))
    except KeyError:
        raise CheckpointError(f"{path} is not a gdfast optimizer file (no __meta__)") from None
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise CheckpointError(f"{path}: damaged __meta__ entry ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("class") != cls:
        got = (meta.get("class"), meta.get("format")) if isinstance(meta, dict) else (None, None)
        raise CheckpointError(f"{path} holds {got[0]} state ({got[1]}), expected {cls} "
                              f"({_FORMAT})")
    try:
        keys = meta["keys"]
        state = {key: {} for key in keys}
        for f in z:
            if f.startswith("state/"):
                _, i, name = f.split("/", 2)
                state[keys[int(i)]][name] = z[f]
        sd = {"step": meta["step"], "state": state, "param_groups": meta["param_groups"]}
        if "extra" in meta:
            sd.update(meta["extra"])
            slow = sorted((int(f.split("/")[1]), z[f]) for f in z if f.startswith("slow/"))
            sd["slow"] = {keys[i]: a for i, a in slow}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: damaged optimizer file ({type(e).__name__}: {e})") from e
    return sd


def _check_arrays(given, expected, what, keys="keys"):
    """`given` has `expected`'s keys, each a float32 array of the same shape."""
    if set(given) != set(expected):
        raise ValueError(f"{what} has {keys} {sorted(map(str, given))}, "
                         f"expected {sorted(map(str, expected))}")
    for key, ref in expected.items():
        a = np.asarray(given[key])
        if a.dtype != np.float32 or a.shape != ref.shape:
            raise ValueError(f"{what}[{key!r}] must be float32 of shape {ref.shape}, "
                             f"got {a.dtype} {a.shape}")


def _aids(agc, agc_eps, ema):
    """The training aids every optimizer takes, per param group:

    agc: adaptive gradient clipping (Brock et al. 2021) with this clip factor
        (0 or None: off; the paper uses 0.01): each unit's gradient (a column
        of a (fan_in, fan_out) weight, a whole vector) is scaled to at most
        agc * max(||w_unit||, agc_eps), as optax.adaptive_grad_clip and timm's
        adaptive_clip_grad, inside the update (one read of p and g for the
        norms, no pass over the gradients). Applied before max_grad_norm's
        clip, whose norm is that of the gradients as given.
    ema: keep a moving average of the weights with this momentum (None: off),
        Keras's use_ema / ema_momentum: after the first step the average is the
        weights, then ema = m * ema + (1 - m) * w after every update (no
        warm-up or bias correction), updated in the update's own pass.
        Read it with ema_state() or in state_dict()["state"][key]["ema"]."""
    return {"agc": agc, "agc_eps": agc_eps, "ema": ema}


def _bad(name, value, expected):
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_k(k, name="k"):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        _bad(name, k, "an integer >= 1")


def _check_alpha(alpha, name="alpha"):
    if (isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating))
            or not 0.0 <= alpha <= 1.0):
        _bad(name, alpha, "a number in [0, 1]")


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    As torch.optim.SGD: g += weight_decay * p; b = g at the group's first step
    with momentum (also when momentum is switched on mid-run), else
    b = momentum * b + (1 - dampening) * g; d = g + momentum * b (nesterov) or
    b; p -= lr * d. Without momentum this is plain gradient descent.
    NaN/Inf in gradients propagate (no checks per step)."""

    _kind = "sgd"
    _slots = ("momentum_buffer", None, None)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, agc=0.0, agc_eps=1e-3, ema=None,
                 groups=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, **_aids(agc, agc_eps, ema)), groups)

    def _slots_needed(self, groups):
        return [any(g["momentum"] != 0 for g in groups), False, False]

    def state_dict(self):
        """As Optimizer.state_dict; like PyTorch, without momentum_buffer for
        tensors whose buffer has not been started."""
        sd = super().state_dict()
        for g, started in zip(self.param_groups, self._momentum_started):
            if not started:
                for key in self._group_keys(g):
                    sd["state"][key].pop("momentum_buffer", None)
        return sd

    def load_state_dict(self, state_dict):
        """As Optimizer.load_state_dict; a group's tensors carry momentum_buffer
        all (started) or none (not started yet)."""
        state = state_dict.get("state") if isinstance(state_dict, dict) else None
        if not isinstance(state, dict) or not any("momentum_buffer" in b
                                                  for b in self._state.values()):  # no buffer
            super().load_state_dict(state_dict)
            self._momentum_started = [False] * len(self.param_groups)
            return
        state, started = dict(state), []
        for gi, g in enumerate(self.param_groups):
            keys = [k for k in self._group_keys(g) if isinstance(state.get(k), dict)]
            has = [k for k in keys if "momentum_buffer" in state[k]]
            if has and len(has) != len(keys):
                raise ValueError(f"state_dict['state'] has a momentum_buffer for {has} of "
                                 f"param group {gi} but not for all its tensors")
            started.append(bool(has))
            if not has:  # not started: the buffer stays zero until its first step
                for k in keys:
                    state[k] = {**state[k], "momentum_buffer": np.zeros(self._shapes[k],
                                                                        np.float32)}
        super().load_state_dict({**state_dict, "state": state})
        self._momentum_started = started


class RMSprop(Optimizer):
    """RMSprop as torch.optim.RMSprop (alpha, eps, centered, momentum).

    s = alpha * s + (1 - alpha) * g^2; centered: a = a + (1 - alpha) * (g - a),
    avg = sqrt(s - a^2) + eps, else sqrt(s) + eps; with momentum
    b = momentum * b + g / avg, p -= lr * b, else p -= lr * g / avg.
    NaN/Inf in gradients propagate (no checks per step)."""

    _kind = "rmsprop"
    _slots = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, agc=0.0, agc_eps=1e-3, ema=None, groups=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize,
                                      **_aids(agc, agc_eps, ema)), groups)

    def _slots_needed(self, groups):
        return [True, any(g["momentum"] > 0 for g in groups), any(g["centered"] for g in groups)]


class Adam(Optimizer):
    """Adam (and AMSGrad) as torch.optim.Adam.

    g += weight_decay * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    (amsgrad: vmax = max(vmax, v), used for v); with t the step count,
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). The division
    by sqrt(1 - b2^t) is done as a multiplication by its reciprocal.
    NaN/Inf in gradients propagate (no checks per step)."""

    _kind = "adam"
    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, agc=0.0, agc_eps=1e-3, ema=None, groups=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, **_aids(agc, agc_eps, ema)), groups)

    def _slots_needed(self, groups):
        return [True, True, any(g["amsgrad"] for g in groups)]


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW: p *= 1 - lr * wd
    before the Adam update (which then has no weight decay of its own)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, agc=0.0, agc_eps=1e-3, ema=None, groups=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, agc=agc, agc_eps=agc_eps, ema=ema,
                         groups=groups)


class Adagrad(Optimizer):
    """Adagrad as torch.optim.Adagrad.

    g += weight_decay * p; clr = lr / (1 + (t - 1) * lr_decay); s += g^2;
    p -= clr * g / (sqrt(s) + eps); s starts at initial_accumulator_value.
    NaN/Inf in gradients propagate (no checks per step)."""

    _kind = "adagrad"
    _slots = ("sum", None, None)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, agc=0.0,
                 agc_eps=1e-3, ema=None, groups=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize, **_aids(agc, agc_eps, ema)),
                         groups)

    def _slots_needed(self, groups):
        for gi, g in enumerate(groups):
            v = g["initial_accumulator_value"]
            if not v >= 0:
                _bad(f"param_groups[{gi}]['initial_accumulator_value']", v, ">= 0")
        return [True, False, False]

    def _init_state(self, bufs, entries, groups):
        offset = 0
        for _, _, size, gi in entries:
            bufs[0][offset:offset + size] = groups[gi]["initial_accumulator_value"]
            offset += size


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization
    Algorithms") as in optax and Keras, with decoupled weight decay:

    c = b1 m + (1 - b1) g; p = p * (1 - lr * weight_decay) - lr * sign(c);
    m = b2 m + (1 - b2) g. sign(0) = 0; a NaN in c gives a NaN parameter
    rather than a step of lr, so divergence is not hidden. Every step moves
    each parameter by lr, so lr is typically 3-10x smaller than AdamW's."""

    _kind = "lion"
    _decoupled = True
    _slots = ("exp_avg", None, None)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False,
                 agc=0.0, agc_eps=1e-3, ema=None, groups=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      maximize=maximize, **_aids(agc, agc_eps, ema)), groups)

    def _slots_needed(self, groups):
        return [True, False, False]


class Lookahead:
    """Lookahead (Zhang et al. 2019) around any gdfast optimizer.

    The inner optimizer takes the fast steps; every k steps the slow weights
    move toward the fast ones, slow += alpha * (fast - slow), and the fast
    weights restart from them. The slow weights start as the parameters."""

    def __init__(self, optimizer, k=5, alpha=0.5):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a gdfast optimizer, got {type(optimizer).__name__}")
        _check_k(k)
        _check_alpha(alpha)
        self.optimizer = optimizer
        optimizer._lookahead = True  # its add_param_group would bypass the slow weights
        self._k = int(k)
        self._alpha = float(alpha)
        self._count = 0
        total = sum(p.size for p, _ in optimizer._seg_info)
        self._slow_buf = _aligned_empty(total)
        pairs = []
        for p, off in optimizer._seg_info:
            s = self._slow_buf[off:off + p.size]
            s[...] = p.reshape(-1)
            pairs.append((p.reshape(-1), s))
        self._pairs = pairs
        self._plan = _kernels._lookahead_plan(pairs, self._alpha)
        # the inner optimizer refuses concurrent steps itself; this also covers
        # the GIL-free slow-weight sync that follows its step
        self._stepping = threading.Lock()

    @property
    def alpha(self):
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        _check_alpha(value)
        self._alpha = float(value)
        self._plan = _kernels._lookahead_plan(self._pairs, self._alpha)

    @property
    def k(self):
        return self._k

    @k.setter
    def k(self, value):
        _check_k(value)
        self._k = int(value)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def add_param_group(self, param_group):
        """Refused: the slow weights are fixed at construction; add groups to the
        inner optimizer before wrapping it."""
        raise TypeError("Lookahead.add_param_group: the slow weights cover the tensors the "
                        "inner optimizer had when wrapped; add groups before wrapping it")

    def step(self, grads=None, max_grad_norm=None):
        if not self._stepping.acquire(blocking=False):
            raise RuntimeError("optimizer is already stepping in another thread; "
                               "use one optimizer per thread or a lock")
        try:
            out = self.optimizer.step(grads, max_grad_norm)
            self._after_step()
        finally:
            self._stepping.release()
        return out

    def _begin_step(self, params):
        return self.optimizer._begin_step(params)

    def _end_step(self, stepped=True):
        try:
            if stepped:
                self._after_step()  # while the inner optimizer still counts as stepping
        finally:
            self.optimizer._end_step(stepped)

    def _after_step(self):
        self._count += 1
        if self._count % self.k == 0:
            self._plan.execute()

    def _slow_views(self):
        views, offset = {}, 0
        for key in self.optimizer._keys:
            shape = self.optimizer._shapes[key]
            size = int(np.prod(shape, dtype=np.int64))
            views[key] = self._slow_buf[offset:offset + size].reshape(shape)
            offset += size
        return views

    def state_dict(self):
        sd = self.optimizer.state_dict()
        sd["lookahead"] = {"k": self.k, "alpha": self._alpha, "count": self._count,
                           "inner": type(self.optimizer).__name__}
        sd["slow"] = {key: v.copy() for key, v in self._slow_views().items()}
        return sd

    def load_state_dict(self, state_dict):
        sd = dict(state_dict)
        la, slow = sd.pop("lookahead", None), sd.pop("slow", None)
        if (not isinstance(la, dict) or set(la) != {"k", "alpha", "count", "inner"}
                or not isinstance(slow, dict)):
            raise ValueError("state_dict lacks the Lookahead entries 'lookahead' "
                             "(k, alpha, count, inner) and 'slow'")
        inner = type(self.optimizer).__name__
        if la["inner"] != inner:
            raise ValueError(f"state_dict is of a Lookahead around {la['inner']!r}, "
                             f"this one wraps {inner!r}")
        views = self._slow_views()
        _check_arrays(slow, views, "slow")
        k, alpha, count = la["k"], la["alpha"], la["count"]
        _check_k(k, "state_dict['lookahead']['k']")
        _check_alpha(alpha, "state_dict['lookahead']['alpha']")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            _bad("state_dict['lookahead']['count']", count, "an integer >= 0")
        self.optimizer.load_state_dict(sd)
        for key, v in views.items():
            v[...] = slow[key]
        self._k, self._count = int(k), int(count)
        self.alpha = alpha

    def save(self, path):
        write_npz(path, _flatten(self.state_dict(), "Lookahead"))

    def load(self, path):
        self.load_state_dict(_unflatten(path, "Lookahead"))

    def zero_grad(self):
        self.optimizer.zero_grad()

    def ema_state(self):
        return self.optimizer.ema_state()

    def __repr__(self):
        return f"Lookahead({self.optimizer!r}, k={self.k}, alpha={self._alpha})"


def clip_grad_norm(grads, max_norm):
    """Scale gradients in place so their global L2 norm is at most max_norm.

    grads: a Params arena (its grad buffer), one float32 array or a list.
    Returns the norm before clipping, reduced deterministically (the same
    bits for any thread count). Scale max_norm / (norm + 1e-6) when below 1,
    as torch.nn.utils.clip_grad_norm_; a NaN/Inf norm propagates."""
    if isinstance(grads, Params):
        grads = grads.grad
    return _kernels.clip_grad_norm(grads, float(max_norm))


def adaptive_clip_grad(params, grads, clip_factor=0.01, eps=1e-3):
    """Adaptive gradient clipping (Brock et al. 2021) of grads in place, unit by
    unit, as timm's adaptive_clip_grad and optax's adaptive_grad_clip: for each
    unit i (a column of a (fan_in, fan_out) weight, i.e. an output unit, or a
    whole vector), when ||g_i|| >= clip_factor * max(||w_i||, eps), g_i is
    scaled by clip_factor * max(||w_i||, eps) / max(||g_i||, 1e-6). Norms are
    summed in float64 in a fixed order (the same bits for any thread count);
    a NaN norm gives NaN gradients.

    params, grads: a Params arena (its tensors and their grads), or aligned
    lists of float32 arrays (one array each is fine)."""
    if isinstance(params, Params):
        if grads is not None and grads is not params:
            raise TypeError("grads must be omitted (or the same arena) when params is a Params "
                            "arena: its gradients are params.grad")
        names = [n for n in params.names]
        params, grads = [params[n] for n in names], [params.grad_of(n) for n in names]
    if isinstance(params, np.ndarray):
        params = [params]
    if isinstance(grads, np.ndarray):
        grads = [grads]
    if not isinstance(params, (list, tuple)) or not isinstance(grads, (list, tuple)):
        raise TypeError("params and grads must be a Params arena or lists of float32 arrays")
    if len(params) != len(grads):
        raise ValueError(f"grads has {len(grads)} arrays, expected {len(params)} (one per "
                         f"parameter)")
    for i, (p, g) in enumerate(zip(params, grads)):
        _kernels.check_float32(p, f"params[{i}]", False)
        _kernels.check_float32(g, f"grads[{i}]", True)
        if p.shape != g.shape:
            raise ValueError(f"grads[{i}] has shape {g.shape}, expected {p.shape} like "
                             f"params[{i}]")
        if p.size and np.may_share_memory(p, g):
            raise ValueError(f"grads[{i}] shares memory with params[{i}]")
    _kernels.adaptive_clip_grad(list(params), list(grads), float(clip_factor), float(eps))


def clip_grad_value(grads, clip_value):
    """Clamp every gradient entry to [-clip_value, clip_value] in place; NaN stays NaN."""
    if isinstance(grads, Params):
        grads = grads.grad
    _kernels.clip_grad_value(grads, float(clip_value))
