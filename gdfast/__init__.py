"""gdfast: fast gradient descent on the CPU.

Fused, in-place optimizer kernels and an MLP with its own SIMD GEMM, in C
behind one Cython module, with a small NumPy-first Python API.
"""
import os as _os

try:
    from . import _kernels
except ImportError as _e:
    # A source checkout before any build: Python's own message blames a circular import.
    import glob as _glob
    import importlib.machinery as _machinery
    _here = _os.path.dirname(__file__)
    if not any(_glob.glob(_os.path.join(_here, "_kernels*" + suffix))
               for suffix in _machinery.EXTENSION_SUFFIXES):
        raise ImportError(
            f"gdfast's C extension (gdfast._kernels) is not built in {_here}: install the package "
            "with `pip install .`, or build it in place with "
            "`python setup.py build_ext --inplace`") from _e
    raise
from ._version import __version__
from ._kernels import (get_flush_denormal, get_num_threads, matmul, set_flush_denormal,
                       set_num_threads, take_rows)
from .lbfgs import LBFGS
from .mlp import MLP
from .optim import (SGD, Adagrad, Adam, AdamW, Lion, Lookahead, RMSprop, adaptive_clip_grad,
                    clip_grad_norm, clip_grad_value)
from .params import Params
from . import datasets, schedules
from .train import Trainer, fit


def _init_simd():
    forced = _os.environ.get("GDFAST_SIMD", "").strip().lower()
    try:
        _kernels.set_simd(forced or _kernels.simd_best())
    except ValueError as e:
        raise ValueError(f"environment variable GDFAST_SIMD={forced!r}: {e}") from None


_init_simd()


def _init_flush_denormal():
    value = _os.environ.get("GDFAST_FLUSH_DENORMAL", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"environment variable GDFAST_FLUSH_DENORMAL={value!r}: "
                         f"expected 0 (keep subnormal floats) or 1 (flush them to zero)")
    if value:
        set_flush_denormal(value == "1")


_init_flush_denormal()


def build_info():
    """What this build of gdfast is and what it runs on right now."""
    return {
        "version": __version__,
        "compiler": _kernels.compiler(),
        "openmp": _kernels.has_openmp(),
        "simd": _kernels.simd_active(),
        "simd_available": _kernels.simd_paths(),
        "threads": get_num_threads(),
        "flush_denormal": get_flush_denormal(),
    }


def set_simd(name):
    """Force a SIMD path ('scalar', 'avx2', 'avx512'); GDFAST_SIMD does the same at import."""
    _kernels.set_simd(name)


__all__ = ["__version__", "build_info", "get_num_threads", "set_num_threads", "set_simd",
           "get_flush_denormal", "set_flush_denormal",
           "Params", "SGD", "RMSprop", "Adam", "AdamW", "Adagrad", "Lion", "Lookahead", "LBFGS",
           "adaptive_clip_grad", "clip_grad_norm", "clip_grad_value", "MLP", "matmul", "take_rows",
           "datasets", "schedules", "Trainer", "fit"]
