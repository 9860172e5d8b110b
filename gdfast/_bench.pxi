# Ceilings for the benchmark: a measured FMA loop (compute) on every thread.

cdef extern from "peak.h" nogil:
    double gdfast_fma_peak(gd_index iters, int threads)


def fma_loop(long long iters, int threads):
    """Run the FMA loop on `threads` threads; returns the flops it did."""
    if iters < 0 or threads < 1:
        raise ValueError(f"iters must be >= 0 and threads >= 1, got {iters}, {threads}")
    cdef double flops
    with nogil:
        flops = gdfast_fma_peak(iters, threads)
    return flops
