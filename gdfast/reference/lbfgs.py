"""NumPy twins of gdfast's L-BFGS kernels (src/lbfgs_kernels.inc, src/lbfgs.c).

The same float32 updates and the same float64 sums in the same order: each
block of 4096 floats summed in 8 interleaved lanes (combined pairwise),
then the block sums in index order. So the kernels match these bit for bit,
and ``LBFGS`` below (gdfast.LBFGS's algorithm over these functions) follows
the C path's iterates exactly. The functions take the arguments of their
``gdfast._kernels.lbfgs_*`` counterparts.
"""
import sys

import numpy as np

from .. import lbfgs as _lbfgs

BLOCK = 4096
f32 = np.float32


def _sum(terms):
    """float64 terms added as the C kernels add them."""
    total = 0.0
    for lo in range(0, terms.size, BLOCK):
        blk = terms[lo:lo + BLOCK]
        lanes = np.zeros(-(-blk.size // 8) * 8)
        lanes[:blk.size] = blk
        acc = lanes.reshape(-1, 8)
        s = np.zeros(8)
        for row in acc:          # each lane in index order, as the C loop
            s += row
        total += float(((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])))
    return total


def _f64(a):
    return np.asarray(a, np.float64).ravel()


def lbfgs_dot(a, b):
    return _sum(_f64(a) * _f64(b))


def lbfgs_abssum(x):
    return _sum(np.abs(_f64(x)))


def lbfgs_maxabs(x):
    return float(np.max(np.abs(x))) if x.size else 0.0


def lbfgs_xpay(out, x0, t, d):
    np.add(x0, f32(t) * d, out=out)


def lbfgs_pair(y, s, g, gp, d, t):
    np.subtract(g, gp, out=y)
    np.multiply(f32(t), d, out=s)
    return lbfgs_dot(y, s), lbfgs_dot(y, y), lbfgs_dot(s, s)


def lbfgs_two_loop(g, d, S, Y, order, rho, h):
    """d = -H g: q = -g; newest to oldest al_i = rho_i s_i . q, q -= al_i y_i;
    r = h q; oldest to newest be_i = rho_i y_i . r, r += (al_i - be_i) s_i."""
    k = len(order)
    al = [0.0] * k
    np.negative(g, out=d)
    for i in range(k - 1, -1, -1):
        al[i] = rho[i] * lbfgs_dot(S[order[i]], d)
        d += f32(-al[i]) * Y[order[i]]
    d *= f32(h)
    for i in range(k):
        be = rho[i] * lbfgs_dot(Y[order[i]], d)
        d += f32(al[i] - be) * S[order[i]]


class LBFGS(_lbfgs.LBFGS):
    """gdfast.LBFGS over the NumPy kernels above (same arguments, same iterates)."""

    _ops = sys.modules[__name__]
