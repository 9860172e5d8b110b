"""NumPy twins of gdfast's optimizer kernels (src/optim_kernels.inc).

The same float32 operations in the same order, in place with preallocated
work arrays: the test oracle (it matches the C kernels to float32 rounding)
and the in-place NumPy baseline of the benchmarks. One hyperparameter set
per optimizer over a list of float32 arrays; step(grads, max_grad_norm).
"""
import math

import numpy as np

f32 = np.float32


def grad_norm(grads):
    """Global L2 norm, accumulated in float64."""
    return math.sqrt(sum(float(np.dot(g.ravel().astype(np.float64), g.ravel().astype(np.float64)))
                         for g in grads))


def clip_split(coef):
    """coef as float32 factors applied as (g * hi) * lo, like gdfast_clip_split:
    lo = 1 unless coef is below the smallest normal float32 (where it would
    flush to zero), then an exact power of two with half the exponent."""
    if not 0.0 < coef < np.finfo(f32).tiny:
        return f32(coef), f32(1.0)
    m, e = math.frexp(coef)
    half = -(-e // 2)  # C's e / 2, rounded toward zero
    return f32(math.ldexp(m, e - half)), f32(math.ldexp(1.0, half))


def clip_coef(grads, max_norm):
    """(norm, hi, lo): PyTorch's clip_grad_norm_ factor as clip_split's pair
    (1, 1 when not clipping)."""
    norm = grad_norm(grads)
    coef = max_norm / (norm + 1e-6)
    return (norm,) + clip_split(1.0 if coef >= 1.0 else coef)


def clip_grad_norm(grads, max_norm):
    norm, hi, lo = clip_coef(grads, max_norm)
    for g in grads:
        g *= hi
        if lo != 1:
            g *= lo
    return norm


def sumsq(x):
    """Sum of squares in float64 in the C kernel's order: 8 interleaved
    partial sums, then ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))."""
    x = x.ravel().astype(np.float64)
    lanes = np.zeros(-(-x.size // 8) * 8)
    lanes[:x.size] = x * x
    a = np.add.reduce(lanes.reshape(-1, 8), axis=0)  # row by row, in order
    return float(((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])))


AGC_ROWS = 256     # src/optim.h's GD_AGC_ROWS


def unit_sumsq(x):
    """AGC's per-unit sums of squares (float32): over every axis but the last
    for a tensor of 2 or more axes (its columns, in float32 as optax and timm:
    each block of AGC_ROWS rows added in row order, then the blocks' sums in
    block order), the whole of a vector (sumsq, rounded)."""
    if x.ndim < 2:
        return np.array([sumsq(x)], dtype=f32)
    sq = x.reshape(-1, x.shape[-1])
    sq = sq * sq
    total = np.add.reduce(sq[:AGC_ROWS], axis=0)
    for r in range(AGC_ROWS, len(sq), AGC_ROWS):
        total = total + np.add.reduce(sq[r:r + AGC_ROWS], axis=0)
    return total


def agc_scales(p, g, clip, eps):
    """Per-unit AGC factors (float32, broadcasting over g): 1 where
    ||g_i|| < clip * max(||p_i||, eps), else clip * max(||p_i||, eps) / max(||g_i||, 1e-6)."""
    pn = np.sqrt(unit_sumsq(p).astype(np.float64))
    gn = np.sqrt(unit_sumsq(g).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.maximum(pn, eps) * clip
        scale = np.where(gn < mx, 1.0, mx / np.maximum(gn, 1e-6)).astype(f32)
    return scale if g.ndim >= 2 else scale[0]


def adaptive_clip_grad(params, grads, clip_factor=0.01, eps=1e-3):
    for p, g in zip(params, grads):
        g *= agc_scales(p, g, clip_factor, eps)


def ema_update(ema, p, momentum):
    """ema = m * ema + (1 - m) * p in float32 (Keras's order)."""
    m = f32(momentum)
    ema *= m
    ema += p * (f32(1.0) - m)


def clip_grad_value(grads, clip_value):
    for g in grads:
        np.clip(g, -clip_value, clip_value, out=g)


class _Reference:
    """agc, agc_eps: adaptive gradient clipping of every tensor (scale of the
    gradients as given, then the max_grad_norm factor); ema: Keras's moving
    average of the weights after each update (the weights at step 1)."""

    def __init__(self, params, agc=0.0, agc_eps=1e-3, ema=None, **hyper):
        self.params = params
        self.hyper = hyper
        self.agc, self.agc_eps, self.ema_momentum = agc, agc_eps, ema
        self.ema = [p.copy() for p in params] if ema is not None else None
        self.t = 0
        self._tmp = [np.empty_like(p) for p in params]
        self._tmp2 = [np.empty_like(p) for p in params]

    def step(self, grads, max_grad_norm=None):
        self.t += 1
        gs, lo, norm = f32(1.0), f32(1.0), None
        if max_grad_norm is not None:
            norm, gs, lo = clip_coef(grads, max_grad_norm)
        if self.hyper.get("maximize"):
            gs = -gs
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if self.agc:
                gi = np.multiply(g, agc_scales(p, g, self.agc, self.agc_eps), out=self._tmp[i])
                gi *= gs
            else:
                gi = np.multiply(g, gs, out=self._tmp[i])
            if lo != 1:  # only for a coefficient below the smallest normal float32
                gi *= lo
            self._update(i, p, gi, self._tmp2[i])
            if self.ema is not None:
                ema_update(self.ema[i], p, 0.0 if self.t == 1 else self.ema_momentum)
        return norm

    def _decay(self, p, gi, tmp):
        wd = self.hyper.get("weight_decay", 0.0)
        if wd:
            np.multiply(p, f32(wd), out=tmp)
            gi += tmp


class SGD(_Reference):
    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False, **aids):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, **aids)
        self.buf = [None] * len(params)  # started at the first step with momentum (torch)

    def _update(self, i, p, gi, tmp):
        h = self.hyper
        self._decay(p, gi, tmp)
        d = gi
        if h["momentum"]:
            b = self.buf[i]
            if b is None:
                b = self.buf[i] = gi.copy()
            else:
                b *= f32(h["momentum"])
                np.multiply(gi, f32(1.0 - h["dampening"]), out=tmp)
                b += tmp
            if h["nesterov"]:
                np.multiply(b, f32(h["momentum"]), out=tmp)
                gi += tmp
            else:
                d = b
        np.multiply(d, f32(h["lr"]), out=tmp)
        p -= tmp


class RMSprop(_Reference):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False, **aids):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize, **aids)
        self.square_avg = [np.zeros_like(p) for p in params]
        self.momentum_buffer = [np.zeros_like(p) for p in params]
        self.grad_avg = [np.zeros_like(p) for p in params]
        self._avg = [np.empty_like(p) for p in params]

    def _update(self, i, p, gi, tmp):
        h = self.hyper
        a1m = f32(1.0 - h["alpha"])
        self._decay(p, gi, tmp)
        s = self.square_avg[i]
        s *= f32(h["alpha"])
        np.multiply(gi, gi, out=tmp)
        tmp *= a1m
        s += tmp
        avg = self._avg[i]
        if h["centered"]:
            m = self.grad_avg[i]
            np.subtract(gi, m, out=tmp)
            tmp *= a1m
            m += tmp
            np.multiply(m, m, out=tmp)
            np.subtract(s, tmp, out=avg)
            np.sqrt(avg, out=avg)
        else:
            np.sqrt(s, out=avg)
        avg += f32(h["eps"])
        np.divide(gi, avg, out=tmp)
        if h["momentum"] > 0:
            b = self.momentum_buffer[i]
            b *= f32(h["momentum"])
            b += tmp
            np.multiply(b, f32(h["lr"]), out=tmp)
        else:
            tmp *= f32(h["lr"])
        p -= tmp


class Adam(_Reference):
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False, **aids):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, **aids)
        self.exp_avg = [np.zeros_like(p) for p in params]
        self.exp_avg_sq = [np.zeros_like(p) for p in params]
        self.max_exp_avg_sq = [np.zeros_like(p) for p in params]

    def _update(self, i, p, gi, tmp):
        h = self.hyper
        b1, b2 = h["betas"]
        lr, wd = h["lr"], h["weight_decay"]
        if self.decoupled:
            if wd:
                p *= f32(1.0 - lr * wd)
        else:
            self._decay(p, gi, tmp)
        m, v = self.exp_avg[i], self.exp_avg_sq[i]
        m *= f32(b1)
        np.multiply(gi, f32(1.0 - b1), out=tmp)
        m += tmp
        v *= f32(b2)
        np.multiply(gi, gi, out=tmp)
        tmp *= f32(1.0 - b2)
        v += tmp
        if h["amsgrad"]:
            np.maximum(self.max_exp_avg_sq[i], v, out=self.max_exp_avg_sq[i])
            v = self.max_exp_avg_sq[i]
        step_size = lr / (1.0 - b1 ** self.t)
        inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - b2 ** self.t)
        np.sqrt(v, out=tmp)
        tmp *= f32(inv_bc2_sqrt)
        tmp += f32(h["eps"])
        np.divide(m, tmp, out=tmp)
        tmp *= f32(step_size)
        p -= tmp


class AdamW(Adam):
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False, **aids):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, **aids)


class Adagrad(_Reference):
    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False, **aids):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                         maximize=maximize, **aids)
        self.sum = [np.full_like(p, initial_accumulator_value) for p in params]

    def _update(self, i, p, gi, tmp):
        h = self.hyper
        clr = h["lr"] / (1.0 + (self.t - 1) * h["lr_decay"])
        self._decay(p, gi, tmp)
        s = self.sum[i]
        np.multiply(gi, gi, out=tmp)
        s += tmp
        np.sqrt(s, out=tmp)
        tmp += f32(h["eps"])
        np.divide(gi, tmp, out=tmp)
        tmp *= f32(clr)
        p -= tmp


class Lion(_Reference):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False,
                 **aids):
        super().__init__(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                         maximize=maximize, **aids)
        self.exp_avg = [np.zeros_like(p) for p in params]

    def _update(self, i, p, gi, tmp):
        h = self.hyper
        b1, b2 = h["betas"]
        lr, wd = h["lr"], h["weight_decay"]
        if wd:
            p *= f32(1.0 - lr * wd)
        m = self.exp_avg[i]
        np.multiply(m, f32(b1), out=tmp)
        c = np.multiply(gi, f32(1.0 - b1))
        tmp += c
        np.sign(tmp, out=tmp)  # sign(0) = 0, NaN stays NaN
        tmp *= f32(lr)
        p -= tmp
        m *= f32(b2)
        np.multiply(gi, f32(1.0 - b2), out=gi)  # gi is the step's scratch copy
        m += gi


class Lookahead:
    def __init__(self, optimizer, k=5, alpha=0.5):
        self.optimizer, self.k, self.alpha, self.count = optimizer, k, alpha, 0
        self.slow = [p.copy() for p in optimizer.params]

    def step(self, grads, max_grad_norm=None):
        out = self.optimizer.step(grads, max_grad_norm)
        self.count += 1
        if self.count % self.k == 0:
            for p, s in zip(self.optimizer.params, self.slow):
                tmp = p - s
                tmp *= f32(self.alpha)
                s += tmp
                p[...] = s
        return out
