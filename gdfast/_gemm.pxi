import numpy as np

# gdfast.matmul: our own SGEMM (src/gemm.c) on NumPy arrays, GIL released.

cdef extern from "gemm.h" nogil:
    int GD_ACT_IDENTITY, GD_ACT_RELU, GD_ACT_SIGMOID, GD_ACT_TANH
    ctypedef struct gd_epilogue:
        const float *bias
        int act
        const float *dact
        gd_index ld_dact
        int dact_kind
        float *colsum
    int gdfast_sgemm(int trans_a, int trans_b, gd_index m, gd_index n, gd_index k,
                     float alpha, const float *a, gd_index lda, const float *b, gd_index ldb,
                     float beta, float *c, gd_index ldc, const gd_epilogue *ep)


cdef inline cnp.ndarray _check_matrix(object a, str name):
    cdef cnp.ndarray arr = check_f32(a, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {arr.ndim}-D with shape {a.shape}")
    return arr


def matmul(a, b, bint trans_a=False, bint trans_b=False, out=None,
           float alpha=1.0, float beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, float32, C-contiguous 2-D arrays.

    op(x) is x.T when the matching trans_* flag is set (no copy is made).
    Without `out` a new array is returned and beta must be 0. `out` must not
    share memory with a or b.
    """
    cdef cnp.ndarray A = _check_matrix(a, "a")
    cdef cnp.ndarray B = _check_matrix(b, "b")
    cdef gd_index m = A.shape[1] if trans_a else A.shape[0]
    cdef gd_index k = A.shape[0] if trans_a else A.shape[1]
    cdef gd_index kb = B.shape[1] if trans_b else B.shape[0]
    cdef gd_index n = B.shape[0] if trans_b else B.shape[1]
    if k != kb:
        raise ValueError(f"inner dimensions differ: op(a) is {m}x{k} but op(b) is {kb}x{n} "
                         f"(a.shape={a.shape}, trans_a={bool(trans_a)}, "
                         f"b.shape={b.shape}, trans_b={bool(trans_b)})")
    cdef cnp.ndarray C
    if out is None:
        if beta != 0.0:
            raise ValueError(f"beta={beta} needs an `out` array to scale; pass out= or beta=0")
        C = np.empty((m, n), dtype=np.float32)
    else:
        C = check_f32(out, "out", writeable=True)
        if C.ndim != 2 or C.shape[0] != m or C.shape[1] != n:
            raise ValueError(f"out must have shape ({m}, {n}), got {out.shape}")
        if overlaps(C, A) or overlaps(C, B):
            raise ValueError("out must not share memory with a or b")
    cdef const float *pa = <const float *>cnp.PyArray_DATA(A)
    cdef const float *pb = <const float *>cnp.PyArray_DATA(B)
    cdef float *pc = <float *>cnp.PyArray_DATA(C)
    cdef gd_index lda = A.shape[1], ldb = B.shape[1]
    cdef int status
    with nogil:
        status = gdfast_sgemm(trans_a, trans_b, m, n, k, alpha, pa, lda, pb, ldb,
                              beta, pc, n, NULL)
    if status != 0:
        raise MemoryError("matmul could not allocate its packing buffer")
    return C
