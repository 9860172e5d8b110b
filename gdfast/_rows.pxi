from libc.stdint cimport int64_t
import numpy as np

# gdfast.take_rows: a mini-batch gathered from a data set's rows (src/rows.c).

cdef extern from "rows.h" nogil:
    gd_index gdfast_take_rows(const void *src, gd_index rows, gd_index row_bytes,
                              const int64_t *idx, gd_index n, void *dst)


def take_rows(x, idx, out):
    """out[i] = x[idx[i]] for every i: np.take(x, idx, axis=0, out=out) on
    gdfast's threads, the GIL released.

    x and out: C-contiguous arrays of one dtype (no object arrays), out of
    shape (len(idx),) + x.shape[1:], writeable, not sharing memory with x.
    idx: a 1-D array of integers in [0, len(x)) (negative indices are not
    wrapped). Returns out."""
    if not isinstance(x, cnp.ndarray) or not isinstance(out, cnp.ndarray):
        bad = "x" if not isinstance(x, cnp.ndarray) else "out"
        raise TypeError(f"{bad} must be a numpy.ndarray, got "
                        f"{type(x if bad == 'x' else out).__name__}")
    cdef cnp.ndarray X = <cnp.ndarray>x, O = <cnp.ndarray>out
    if X.ndim < 1:
        raise ValueError("x must have at least one dimension (its rows)")
    if X.dtype.hasobject:
        raise TypeError(f"x must hold plain values, got dtype {X.dtype}")
    if O.dtype != X.dtype:
        raise TypeError(f"out must have x's dtype {X.dtype}, got {O.dtype}")
    for a, name in ((X, "x"), (O, "out")):
        if not cnp.PyArray_IS_C_CONTIGUOUS(a):
            raise ValueError(f"{name} must be C-contiguous; pass numpy.ascontiguousarray({name})")
    if not cnp.PyArray_ISWRITEABLE(O):
        raise ValueError("out must be writeable")
    if not isinstance(idx, cnp.ndarray) or idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise TypeError("idx must be a 1-D numpy array of integers, got "
                        + (f"{idx.dtype} with shape {idx.shape}" if isinstance(idx, cnp.ndarray)
                           else type(idx).__name__))
    cdef cnp.ndarray I = np.ascontiguousarray(idx, dtype=np.int64)  # indices, not data
    expect = (I.shape[0],) + tuple(x.shape[1:])
    if tuple(out.shape) != expect:
        raise ValueError(f"out must have shape {expect}, got {out.shape}")
    if overlaps(X, O):
        raise ValueError("out must not share memory with x")
    cdef gd_index rows = X.shape[0], n = I.shape[0]
    cdef gd_index row_bytes = cnp.PyArray_NBYTES(X) // rows if rows else 0
    cdef const void *px = cnp.PyArray_DATA(X)
    cdef void *po = cnp.PyArray_DATA(O)
    cdef const int64_t *pi = <const int64_t *>cnp.PyArray_DATA(I)
    cdef gd_index status
    with nogil:
        status = gdfast_take_rows(px, rows, row_bytes, pi, n, po)
    if status != 0:
        i = -1 - status
        raise IndexError(f"idx[{i}] = {int(I[i])} is out of range for x with {rows} rows")
    return out
