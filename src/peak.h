/* A measured FMA loop: the compute ceiling the GEMM benchmark compares to. */
#ifndef GDFAST_PEAK_H
#define GDFAST_PEAK_H
#include "gdfast.h"

/* Runs `iters` rounds of independent multiply-adds on every thread in use and
 * returns the number of floating-point operations done (2 per FMA lane). */
double gdfast_fma_peak(gd_index iters, int threads);

double gdfast_fma_loop_scalar(gd_index iters);
double gdfast_fma_loop_avx2(gd_index iters);
double gdfast_fma_loop_avx512(gd_index iters);
#endif
