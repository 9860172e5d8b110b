"""Set NumPy's OpenBLAS thread count from inside the process (what
threadpoolctl does), so gdfast and numpy.matmul are compared at the same
thread count in one run. Returns False when no OpenBLAS is found."""
import ctypes
import glob
import os

import numpy as np


def _openblas():
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                return fn
    return None


_SET = _openblas()


def set_blas_threads(n):
    if _SET is None:
        return False
    _SET(n)
    return True
