# Input checks shared by every kernel wrapper: one message style everywhere,
# and nothing is copied behind the user's back.

cdef inline int check_native(cnp.ndarray arr, str name) except -1:
    """The C kernels read native floats: a byte-swapped float32 array would be misread."""
    if not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(f"{name} must have native byte order (dtype float32), got "
                        f"{arr.dtype.str}; use {name}.astype(np.float32)")
    return 0


cdef inline cnp.ndarray check_f32(object a, str name, bint writeable=False):
    """a as a C-contiguous float32 ndarray (writeable if asked), else a clear error."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of dtype float32, "
                        f"got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32:
        raise TypeError(f"{name} must have dtype float32, got {arr.dtype}")
    check_native(arr, name)
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous; "
                         f"pass numpy.ascontiguousarray({name})")
    if writeable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writeable (it is updated in place)")
    return arr


cdef inline bint overlaps(cnp.ndarray a, cnp.ndarray b):
    """True when the memory of two contiguous arrays overlaps."""
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef char *pb = <char *>cnp.PyArray_DATA(b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(a), nb = cnp.PyArray_NBYTES(b)
    if na == 0 or nb == 0:
        return False
    return pa < pb + nb and pb < pa + na


cdef double max_norm_arg(object max_grad_norm) except -1.0:
    """max_grad_norm as the plan's max_norm: 0 (no clipping) for None, else > 0."""
    if max_grad_norm is None:
        return 0.0
    cdef double mx = max_grad_norm
    if not mx > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
    return mx


def check_float32(a, str name, bint writeable=False):
    """check_f32 for the Python layer: the same checks and messages."""
    return check_f32(a, name, writeable)
