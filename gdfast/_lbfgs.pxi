# L-BFGS vector kernels (src/lbfgs.c) for gdfast/lbfgs.py: flat float32
# vectors of one length, dot products accumulated in double in a fixed
# order, each call one GIL-free C call.

cdef extern from "lbfgs.h" nogil:
    int gdfast_lbfgs_dot(const float *a, const float *b, gd_index n, double *out)
    int gdfast_lbfgs_abssum(const float *x, gd_index n, double *out)
    int gdfast_lbfgs_maxabs(const float *x, gd_index n, double *out)
    int gdfast_lbfgs_xpay(float *out, const float *x0, double t, const float *d, gd_index n)
    int gdfast_lbfgs_pair(float *y, float *s, const float *g, const float *gp, const float *d,
                          double t, gd_index n, double *out)
    int gdfast_lbfgs_two_loop(const float *g, float *d, gd_index n, const float **S,
                              const float **Y, const double *rho, int k, double h)


cdef float *_lb_vec(object a, str name, gd_index n, bint writeable=False) except NULL:
    """a as float32 C-contiguous of n floats (any shape), checked."""
    cdef cnp.ndarray arr = check_f32(a, name, writeable)
    if cnp.PyArray_SIZE(arr) != n:
        raise ValueError(f"{name} has {cnp.PyArray_SIZE(arr)} floats, expected {n}")
    return <float *>cnp.PyArray_DATA(arr)


cdef inline int _lb_ok(int rc) except -1:
    if rc != 0:
        raise MemoryError()
    return 0


def lbfgs_dot(a, b):
    """a . b in double (fixed order: the same bits for any thread count)."""
    cdef gd_index n = cnp.PyArray_SIZE(check_f32(a, "a"))
    cdef const float *pa = _lb_vec(a, "a", n)
    cdef const float *pb = _lb_vec(b, "b", n)
    cdef double out = 0.0
    cdef int rc
    with nogil:
        rc = gdfast_lbfgs_dot(pa, pb, n, &out)
    _lb_ok(rc)
    return out


def lbfgs_abssum(x):
    """sum |x| in double (fixed order)."""
    cdef gd_index n = cnp.PyArray_SIZE(check_f32(x, "x"))
    cdef const float *px = _lb_vec(x, "x", n)
    cdef double out = 0.0
    cdef int rc
    with nogil:
        rc = gdfast_lbfgs_abssum(px, n, &out)
    _lb_ok(rc)
    return out


def lbfgs_maxabs(x):
    """max |x| (NaN if any entry is NaN; 0 for no entries)."""
    cdef gd_index n = cnp.PyArray_SIZE(check_f32(x, "x"))
    cdef const float *px = _lb_vec(x, "x", n)
    cdef double out = 0.0
    cdef int rc
    with nogil:
        rc = gdfast_lbfgs_maxabs(px, n, &out)
    _lb_ok(rc)
    return out


def lbfgs_xpay(out, x0, double t, d):
    """out = x0 + float32(t) * d, in float32 (out may be x0)."""
    cdef gd_index n = cnp.PyArray_SIZE(check_f32(out, "out", True))
    cdef float *po = _lb_vec(out, "out", n, True)
    cdef const float *px = _lb_vec(x0, "x0", n)
    cdef const float *pd = _lb_vec(d, "d", n)
    cdef int rc
    with nogil:
        rc = gdfast_lbfgs_xpay(po, px, t, pd, n)
    _lb_ok(rc)


def lbfgs_pair(y, s, g, gp, d, double t):
    """y = g - gp, s = float32(t) * d; returns (y . s, y . y, s . s) in double."""
    cdef gd_index n = cnp.PyArray_SIZE(check_f32(g, "g"))
    cdef float *py = _lb_vec(y, "y", n, True)
    cdef float *ps = _lb_vec(s, "s", n, True)
    cdef const float *pg = _lb_vec(g, "g", n)
    cdef const float *pgp = _lb_vec(gp, "gp", n)
    cdef const float *pd = _lb_vec(d, "d", n)
    cdef double out[3]
    cdef int rc
    with nogil:
        rc = gdfast_lbfgs_pair(py, ps, pg, pgp, pd, t, n, out)
    _lb_ok(rc)
    return out[0], out[1], out[2]


def lbfgs_two_loop(g, d, S, Y, order, rho, double h):
    """d = -H g by the two-loop recursion: the pairs are rows order[i] of the
    2-D float32 arrays S and Y (oldest first) with rho[i] = 1 / (y_i . s_i),
    the initial inverse Hessian h I. g and d must not overlap."""
    cdef gd_index n = cnp.PyArray_SIZE(check_f32(g, "g"))
    cdef const float *pg = _lb_vec(g, "g", n)
    cdef float *pd = _lb_vec(d, "d", n, True)
    cdef cnp.ndarray s_arr = check_f32(S, "S"), y_arr = check_f32(Y, "Y")
    if cnp.PyArray_NDIM(s_arr) != 2 or cnp.PyArray_NDIM(y_arr) != 2 or S.shape != Y.shape \
            or S.shape[1] != n:
        raise ValueError(f"S and Y must both have shape (slots, {n}), got {S.shape} and {Y.shape}")
    if overlaps(<cnp.ndarray>g, <cnp.ndarray>d):
        raise ValueError("g and d must not overlap")
    cdef int i, k = len(order)
    if len(rho) != k:
        raise ValueError(f"rho has {len(rho)} values for {k} pairs")
    cdef gd_index slots = S.shape[0]
    cdef const float **ps = <const float **>malloc(max(k, 1) * sizeof(float *))
    cdef const float **py = <const float **>malloc(max(k, 1) * sizeof(float *))
    cdef double *pr = <double *>malloc(max(k, 1) * sizeof(double))
    cdef int rc
    try:
        if ps == NULL or py == NULL or pr == NULL:
            raise MemoryError()
        for i in range(k):
            row = order[i]
            if not 0 <= row < slots:
                raise ValueError(f"order[{i}] = {row} is not a row of S (0 to {slots - 1})")
            ps[i] = <const float *>cnp.PyArray_DATA(s_arr) + <gd_index>row * n
            py[i] = <const float *>cnp.PyArray_DATA(y_arr) + <gd_index>row * n
            pr[i] = rho[i]
        with nogil:
            rc = gdfast_lbfgs_two_loop(pg, pd, n, ps, py, pr, k, h)
        _lb_ok(rc)
    finally:
        free(ps)
        free(py)
        free(pr)
