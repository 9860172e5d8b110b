"""L-BFGS with PyTorch's semantics (torch.optim.LBFGS), over gdfast's C kernels.

The two-loop recursion, the curvature pairs and every dot product and norm
run in C (src/lbfgs.c) without the GIL, over flat float32 vectors, with
float64 sums in a fixed order (the same bits for any thread count and SIMD
path). The history is preallocated: 2 (history_size + 1) vectors of the
parameters' size, plus 6 work vectors. The line search is scalar control
flow in Python; each of its evaluations is one call of the closure.
"""
import math

import numpy as np

from . import _kernels
from .checkpoint import write_npz
from .optim import _flatten, _unflatten
from .params import Params, _aligned_empty

__all__ = ["LBFGS"]

_LINE_SEARCHES = (None, "strong_wolfe")
_EPS32 = float(np.finfo(np.float32).eps)


def _bad(name, value, expected):
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def _is_int(v):
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _is_num(v):
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))


def _check_group(g, where="", history_cap=None):
    """The hyperparameters of a param group (or the constructor's)."""
    if not (_is_num(g["lr"]) and 0 <= g["lr"] < math.inf):
        _bad(f"{where}lr", g["lr"], "a finite number >= 0")
    if not (_is_int(g["max_iter"]) and g["max_iter"] >= 1):
        _bad(f"{where}max_iter", g["max_iter"], "an integer >= 1")
    if not (_is_int(g["max_eval"]) and g["max_eval"] >= 1):
        _bad(f"{where}max_eval", g["max_eval"], "an integer >= 1 (or None: max_iter * 5 // 4)")
    for key in ("tolerance_grad", "tolerance_change"):
        if not (_is_num(g[key]) and 0 <= g[key] < math.inf):
            _bad(f"{where}{key}", g[key], "a finite number >= 0")
    h = g["history_size"]
    if not (_is_int(h) and h >= 1):
        _bad(f"{where}history_size", h, "an integer >= 1")
    if history_cap is not None and h > history_cap:
        _bad(f"{where}history_size", h, f"at most {history_cap}, the history allocated at "
             f"construction")
    if g["line_search_fn"] not in _LINE_SEARCHES:
        _bad(f"{where}line_search_fn", g["line_search_fn"], "None or 'strong_wolfe'")


def _cubic_min(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimizer of the cubic through (x1, f1, g1), (x2, f2, g2), clamped to
    bounds (default: the interval). The midpoint when the cubic has none, or
    when a value is not finite (a NaN/Inf loss marks a step that is too long)."""
    lo, hi = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    if not all(math.isfinite(v) for v in (f1, g1, f2, g2)):
        return (lo + hi) / 2.0
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 * d1 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2.0
    d2 = math.sqrt(disc)
    if x1 <= x2:
        t = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        t = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    if not math.isfinite(t):
        return (lo + hi) / 2.0
    return min(max(t, lo), hi)


class LBFGS:
    """L-BFGS (Liu & Nocedal 1989) as torch.optim.LBFGS: ``step(closure)``
    runs up to max_iter iterations and returns the loss of the closure's
    first call.

    ``LBFGS(params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
    tolerance_change=1e-9, history_size=100, line_search_fn=None)``

    params: a ``gdfast.Params`` arena, whose closure returns the loss and
        leaves the gradients in ``params.grad`` (``model.loss_and_grad``
        does); or a list of C-contiguous writeable float32 arrays, whose
        closure returns ``(loss, grads)``, grads aligned with the arrays.
    lr: the step length (the first iteration ever: min(1, 1 / |g|_1) * lr);
        with line_search_fn="strong_wolfe", the first trial step of the
        line search (c1 = 1e-4, c2 = 0.9, as PyTorch).
    max_iter, max_eval: iterations and closure calls per step (max_eval
        defaults to max_iter * 5 // 4). tolerance_grad: stop when
        max |g| <= it. tolerance_change: stop when the loss or the step
        changes less. history_size: curvature pairs kept.

    Where it departs from PyTorch, on purpose:

    * a pair (s, y) is used only when y . s > 1e-10 (PyTorch's test) and
      y . s > eps_float32 * |y| |s| with every sum finite: nearly
      orthogonal, negative or overflowing curvature (noise, non-smooth
      losses) is skipped instead of blowing the direction up to NaN;
    * a NaN or Inf loss (or gradient) in the line search is a step that is
      too long: it bounds the bracket from above and the next trial bisects;
      PyTorch interpolates through the NaN and can return a wrong bracket;
    * a NaN/Inf loss or gradient at the closure's first call returns at
      once, changing nothing; after a fixed step (no line search) it ends
      the step;
    * dot products and norms accumulate in float64, in a fixed order.

    ``state_dict()``/``load_state_dict()`` (and ``save``/``load``, .npz)
    carry the history, the last direction and step and the counters, so a
    run resumes bit for bit. ``param_groups[0]`` may be changed between
    steps, as in PyTorch (history_size up to the constructed size).
    """

    _ops = _kernels  # the vector kernels: gdfast.reference.lbfgs has their NumPy twins

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None):
        if max_eval is None and _is_int(max_iter):
            max_eval = max_iter * 5 // 4
        self.defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                             tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                             history_size=history_size, line_search_fn=line_search_fn)
        _check_group(self.defaults)
        self._arena, arrays, self._keys = self._parse(params)
        if self._arena is not None:
            self._arena_data, self._arena_grad = self._arena.data, self._arena.grad
        self._segments = []
        offset = 0
        for a in arrays:
            self._segments.append((a.reshape(-1), offset))
            offset += a.size
        n = self._n = offset
        if n == 0:
            raise ValueError("params have no elements: L-BFGS needs at least one parameter")
        self._shapes = [a.shape for a in arrays]
        self.param_groups = [dict(self.defaults, params=list(self._keys) if self._arena is not None
                                  else list(arrays))]
        self._slots = history_size + 1   # one more than kept: the candidate pair's slot
        self._S = _aligned_empty(self._slots * n).reshape(self._slots, n)
        self._Y = _aligned_empty(self._slots * n).reshape(self._slots, n)
        self._g, self._gprev, self._d, self._x0 = (_aligned_empty(n) for _ in range(4))
        self._spare = [_aligned_empty(n) for _ in range(2)]   # line-search gradients
        self._reset()

    def _reset(self):
        self.func_evals = 0
        self.n_iter = 0
        self._t = math.nan
        self._h_diag = 1.0
        self._prev_loss = math.nan
        self._order = []   # slots of the kept pairs, oldest first
        self._rho = []     # 1 / (y . s) of each

    @staticmethod
    def _parse(params):
        """(arena or None, [arrays], keys)."""
        if isinstance(params, Params):
            _kernels.check_float32(params.data, "params.data", True)
            return params, [params.data], params.names
        if isinstance(params, np.ndarray) or not isinstance(params, (list, tuple)):
            raise TypeError("params must be a gdfast.Params or a list of float32 arrays, "
                            f"got {type(params).__name__}")
        if not params:
            raise ValueError("params is empty: give at least one parameter array")
        if any(isinstance(p, dict) for p in params):
            raise TypeError("LBFGS takes one parameter group (as PyTorch's): pass the "
                            "arrays, not group dicts")
        for i, a in enumerate(params):
            _kernels.check_float32(a, f"params[{i}]", True)
            for j in range(i):
                if a.size and params[j].size and np.may_share_memory(a, params[j]):
                    raise ValueError(f"params[{j}] and params[{i}] share memory; each "
                                     f"parameter must be passed once")
        return None, list(params), list(range(len(params)))

    # ---- parameters and the closure ----

    def _check_params(self):
        if self._arena is not None and (self._arena.data is not self._arena_data
                                        or self._arena.grad is not self._arena_grad):
            raise ValueError("the arena's data or grad buffer was replaced after the optimizer "
                             "was built; update values in place instead")
        for i, (x, _) in enumerate(self._segments):
            if not x.flags.writeable:
                name = "params.data" if self._arena is not None else f"params[{i}]"
                raise ValueError(f"{name} is read-only; the optimizer updates it in place")

    def _evaluate(self, closure, out):
        """Call the closure; its loss as a float, its gradient into `out`."""
        result = closure()
        if self._arena is not None:
            grads = [self._arena.grad]
            loss = result
        else:
            try:
                loss, grads = result
            except (TypeError, ValueError):
                raise TypeError("closure must return (loss, grads) for a list of parameter "
                                f"arrays, got {type(result).__name__}") from None
            if not isinstance(grads, (list, tuple)) or len(grads) != len(self._segments):
                raise ValueError(f"closure's grads must be a list of {len(self._segments)} "
                                 f"arrays aligned with params")
        try:
            loss = float(loss)
        except (TypeError, ValueError):
            raise TypeError(f"closure must return the loss as a number, "
                            f"got {type(loss).__name__}") from None
        for i, ((x, off), g) in enumerate(zip(self._segments, grads)):
            g = np.asarray(g)
            if g.size != x.size or (self._arena is None and g.shape != self._shapes[i]):
                raise ValueError(f"grads[{i}] has shape {g.shape}, expected {self._shapes[i]}")
            np.copyto(out[off:off + x.size], g.reshape(-1), casting="same_kind")
        return loss

    def _move(self, t, x0=None):
        """x = x0 + t d (the line search's trial points), or x += t d."""
        for x, off in self._segments:
            src = x if x0 is None else x0[off:off + x.size]
            self._ops.lbfgs_xpay(x, src, t, self._d[off:off + x.size])

    def _save_x(self):
        for x, off in self._segments:
            self._x0[off:off + x.size] = x

    # ---- the step ----

    def step(self, closure):
        """Up to max_iter L-BFGS iterations; returns the loss of the closure's first call."""
        if not callable(closure):
            raise TypeError(f"closure must be callable (it returns the loss), "
                            f"got {type(closure).__name__}")
        group = self.param_groups[0]
        _check_group(group, "param_groups[0]['", self._slots - 1)
        self._check_params()
        lr, max_iter, max_eval = float(group["lr"]), group["max_iter"], group["max_eval"]
        tol_grad, tol_change = float(group["tolerance_grad"]), float(group["tolerance_change"])
        ops, g, d = self._ops, self._g, self._d
        loss = orig_loss = self._evaluate(closure, g)
        evals = 1
        self.func_evals += 1
        gmax = ops.lbfgs_maxabs(g)
        if not (math.isfinite(loss) and math.isfinite(gmax)) or gmax <= tol_grad:
            return orig_loss
        del self._order[:max(0, len(self._order) - group["history_size"])]
        del self._rho[:max(0, len(self._rho) - group["history_size"])]
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            self.n_iter += 1
            if self.n_iter == 1:
                self._order, self._rho, self._h_diag = [], [], 1.0
            else:
                self._add_pair(group["history_size"])
            ops.lbfgs_two_loop(g, d, self._S, self._Y, self._order, self._rho, self._h_diag)
            self._gprev[...] = g
            self._prev_loss = loss
            t = min(1.0, 1.0 / ops.lbfgs_abssum(g)) * lr if self.n_iter == 1 else lr
            self._t = t
            gtd = ops.lbfgs_dot(g, d)
            if gtd > -tol_change:   # not a descent direction (any more)
                break
            ls_evals = 0
            if group["line_search_fn"] == "strong_wolfe":
                self._save_x()
                loss, t, ls_evals = self._strong_wolfe(closure, t, loss, gtd, max_eval - evals,
                                                       tol_change)
                self._move(t, self._x0)
                self._t = t
                gmax = ops.lbfgs_maxabs(g)
            else:
                self._move(t)
                if n_iter != max_iter:   # the last iteration's loss is not needed
                    loss = self._evaluate(closure, g)
                    ls_evals = 1
                    gmax = ops.lbfgs_maxabs(g)
            evals += ls_evals
            self.func_evals += ls_evals
            if not (math.isfinite(loss) and math.isfinite(gmax)):
                break   # a fixed step went too far: no direction from a NaN gradient
            if n_iter == max_iter or evals >= max_eval or gmax <= tol_grad:
                break
            if abs(t) * ops.lbfgs_maxabs(d) <= tol_change:   # the step no longer moves x
                break
            if abs(loss - self._prev_loss) < tol_change:
                break
        return orig_loss

    def _add_pair(self, history_size):
        """The pair of the last step, y = g - g_prev and s = t d, if its
        curvature is safely positive; then H_diag = y . s / y . y."""
        slot = next(i for i in range(self._slots) if i not in self._order)
        ys, yy, ss = self._ops.lbfgs_pair(self._Y[slot], self._S[slot], self._g, self._gprev,
                                          self._d, self._t)
        if not (math.isfinite(ys) and math.isfinite(yy) and math.isfinite(ss)):
            return
        if ys > 1e-10 and ys > _EPS32 * math.sqrt(yy * ss):
            if len(self._order) == history_size:
                del self._order[0], self._rho[0]
            self._order.append(slot)
            self._rho.append(1.0 / ys)
            self._h_diag = ys / yy

    def _strong_wolfe(self, closure, t, f, gtd, max_ls, tol_change, c1=1e-4, c2=0.9):
        """A line search for the strong Wolfe conditions along d from the
        current point x0 (PyTorch's, after minFunc): bracket, then zoom by
        cubic interpolation. The gradient at the chosen point ends in self._g;
        returns (loss, t, closure calls)."""
        ops, d = self._ops, self._d
        d_norm = ops.lbfgs_maxabs(d)
        # gradients of trial points go to any buffer the bracket does not
        # hold; the start's is g_prev's copy, never written here
        buffers = [self._g] + self._spare
        g0 = self._gprev

        def evaluate(step, keep):
            out = next(b for b in buffers if not any(b is k for k in keep))
            self._move(step, self._x0)
            f_new = self._evaluate(closure, out)
            gtd_new = ops.lbfgs_dot(out, d)
            if not (math.isfinite(f_new) and math.isfinite(gtd_new)):
                f_new, gtd_new = math.inf, math.nan   # too long a step
            return f_new, out, gtd_new

        f_new, g_new, gtd_new = evaluate(t, [])
        evals = 1
        # bracketing: [t_prev, t] with f, g, g . d at both ends
        t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g0, gtd
        done = False
        it = 0
        while it < max_ls:
            if f_new > f + c1 * t * gtd or (it > 1 and f_new >= f_prev):
                br = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
                break
            if abs(gtd_new) <= -c2 * gtd:
                br, done = [[t, f_new, g_new, gtd_new]], True
                break
            if gtd_new >= 0:
                br = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
                break
            t_next = _cubic_min(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                                bounds=(t + 0.01 * (t - t_prev), t * 10))
            t_prev, f_prev, g_prev, gtd_prev = t, f_new, g_new, gtd_new
            t = t_next
            f_new, g_new, gtd_new = evaluate(t, [g_prev])
            evals += 1
            it += 1
        if it == max_ls:
            br = [[0.0, f, g0, gtd], [t, f_new, g_new, gtd_new]]
        # zoom: shrink the bracket until a point meets the conditions
        insuf_progress = False
        low, high = (0, 1) if br[0][1] <= br[-1][1] else (1, 0)
        while not done and it < max_ls:
            if abs(br[1][0] - br[0][0]) * d_norm < tol_change:
                break
            t = _cubic_min(br[0][0], br[0][1], br[0][3], br[1][0], br[1][1], br[1][3])
            a, b = min(br[0][0], br[1][0]), max(br[0][0], br[1][0])
            eps = 0.1 * (b - a)
            if min(b - t, t - a) < eps:   # too close to an end: move in unless progressing
                if insuf_progress or t >= b or t <= a:
                    t = b - eps if abs(t - b) < abs(t - a) else a + eps
                    insuf_progress = False
                else:
                    insuf_progress = True
            else:
                insuf_progress = False
            f_new, g_new, gtd_new = evaluate(t, [br[0][2], br[1][2]])
            evals += 1
            it += 1
            if f_new > f + c1 * t * gtd or f_new >= br[low][1]:
                br[high] = [t, f_new, g_new, gtd_new]
                low, high = (0, 1) if br[0][1] <= br[1][1] else (1, 0)
            else:
                if abs(gtd_new) <= -c2 * gtd:
                    done = True
                elif gtd_new * (br[high][0] - br[low][0]) >= 0:
                    br[high] = list(br[low])
                br[low] = [t, f_new, g_new, gtd_new]
        t, f_new, g_new, _ = br[low]
        if g_new is not self._g:
            self._g[...] = g_new
        return f_new, t, evals

    # ---- state ----

    def state_dict(self):
        """The counters, the last direction, step and gradient, and the kept
        pairs (oldest first), all copied; as PyTorch, the global state sits
        under the first parameter's key."""
        k = len(self._order)
        state = {
            "func_evals": np.int64(self.func_evals), "n_iter": np.int64(self.n_iter),
            "t": np.float64(self._t), "H_diag": np.float64(self._h_diag),
            "prev_loss": np.float64(self._prev_loss),
            "d": self._d.copy(), "prev_flat_grad": self._gprev.copy(),
            "old_dirs": self._Y[self._order].copy() if k else np.zeros((0, self._n), np.float32),
            "old_stps": self._S[self._order].copy() if k else np.zeros((0, self._n), np.float32),
            "ro": np.array(self._rho, np.float64),
        }
        group = {key: v for key, v in self.param_groups[0].items() if key != "params"}
        group["params"] = list(self._keys)
        return {"step": int(self.n_iter), "state": {self._keys[0]: state}, "param_groups": [group]}

    def load_state_dict(self, state_dict):
        """Restore what state_dict() returned; checks everything before changing anything."""
        sd = state_dict
        if not isinstance(sd, dict) or set(sd) != {"step", "state", "param_groups"}:
            raise ValueError("state_dict must be a dict with keys 'step', 'state', 'param_groups'")
        if not isinstance(sd["state"], dict) or list(sd["state"]) != [self._keys[0]]:
            raise ValueError(f"state_dict['state'] must hold one entry, for {self._keys[0]!r} "
                             f"(L-BFGS keeps its state under the first parameter)")
        st = sd["state"][self._keys[0]]
        names = {"func_evals", "n_iter", "t", "H_diag", "prev_loss", "d", "prev_flat_grad",
                 "old_dirs", "old_stps", "ro"}
        if not isinstance(st, dict) or set(st) != names:
            raise ValueError(f"state_dict['state'][{self._keys[0]!r}] must have keys "
                             f"{sorted(names)}")
        groups = sd["param_groups"]
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 \
                or not isinstance(groups[0], dict):
            raise ValueError("state_dict['param_groups'] must be a list of one dict")
        g = dict(groups[0])
        if list(g.pop("params", None) or []) != list(self._keys):
            raise ValueError(f"state_dict's param group holds {groups[0].get('params')}, "
                             f"expected {list(self._keys)}")
        if set(g) != set(self.defaults):
            raise ValueError(f"state_dict's param group has options {sorted(g)}, "
                             f"expected {sorted(self.defaults)}")
        _check_group(g, "state_dict param_groups[0]['", self._slots - 1)
        n = self._n
        counters = {}
        for key in ("func_evals", "n_iter"):
            v = np.asarray(st[key])
            if v.shape != () or v.dtype.kind not in "iu" or int(v) < 0:
                _bad(f"state_dict['state'][...]['{key}']", st[key], "an integer >= 0")
            counters[key] = int(v)
        scalars = {}
        for key in ("t", "H_diag", "prev_loss"):
            v = np.asarray(st[key])
            if v.shape != () or v.dtype.kind != "f":
                _bad(f"state_dict['state'][...]['{key}']", st[key], "a float")
            scalars[key] = float(v)
        for key in ("d", "prev_flat_grad"):
            v = np.asarray(st[key])
            if v.dtype != np.float32 or v.shape != (n,):
                raise ValueError(f"state_dict['state'][...]['{key}'] must be float32 of shape "
                                 f"({n},), got {v.dtype} {v.shape}")
        dirs, stps, ro = (np.asarray(st[key]) for key in ("old_dirs", "old_stps", "ro"))
        k = len(ro) if ro.ndim == 1 else -1
        if not (0 <= k <= g["history_size"]) or ro.dtype != np.float64:
            raise ValueError(f"state_dict['state'][...]['ro'] must be float64 of shape (k,) "
                             f"with k <= history_size ({g['history_size']}), got {ro.dtype} "
                             f"{ro.shape}")
        for key, v in (("old_dirs", dirs), ("old_stps", stps)):
            if v.dtype != np.float32 or v.shape != (k, n):
                raise ValueError(f"state_dict['state'][...]['{key}'] must be float32 of shape "
                                 f"({k}, {n}), got {v.dtype} {v.shape}")
        self.param_groups[0].update(g)
        self.func_evals, self.n_iter = counters["func_evals"], counters["n_iter"]
        self._t, self._h_diag, self._prev_loss = scalars["t"], scalars["H_diag"], scalars["prev_loss"]
        self._d[...] = st["d"]
        self._gprev[...] = st["prev_flat_grad"]
        self._Y[:k] = dirs
        self._S[:k] = stps
        self._order, self._rho = list(range(k)), [float(r) for r in ro]

    def save(self, path):
        """Write state_dict() to an .npz file (no pickle), atomically."""
        write_npz(path, _flatten(self.state_dict(), type(self).__name__))

    def load(self, path):
        """Restore from a file written by save()."""
        self.load_state_dict(_unflatten(path, type(self).__name__))

    def zero_grad(self):
        if self._arena is None:
            raise TypeError("zero_grad needs a Params arena; zero your gradient arrays yourself")
        self._arena.zero_grad()

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"LBFGS({opts}; {self._n} parameters)"
