# Ceilings for the benchmark: measured compute loops on every thread.

cdef extern from "peak.h" nogil:
    double gdfast_fma_peak(gd_index iters, int threads)
    double gdfast_rootdiv_peak(gd_index iters, int threads)


def _check_loop(iters, threads):
    if iters < 0 or threads < 1:
        raise ValueError(f"iters must be >= 0 and threads >= 1, got {iters}, {threads}")


def fma_loop(long long iters, int threads):
    """Run the FMA loop on `threads` threads; returns the flops it did."""
    _check_loop(iters, threads)
    cdef double flops
    with nogil:
        flops = gdfast_fma_peak(iters, threads)
    return flops


def rootdiv_loop(long long iters, int threads):
    """Run the square-root-and-divide loop on `threads` threads; returns the
    elements it did (one root and one division each)."""
    _check_loop(iters, threads)
    cdef double done
    with nogil:
        done = gdfast_rootdiv_peak(iters, threads)
    return done
