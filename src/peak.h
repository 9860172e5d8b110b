/* Measured compute loops: the ceilings the benchmarks compare to. */
#ifndef GDFAST_PEAK_H
#define GDFAST_PEAK_H
#include "gdfast.h"

/* Runs `iters` rounds of independent multiply-adds on every thread in use and
 * returns the number of floating-point operations done (2 per FMA lane). */
double gdfast_fma_peak(gd_index iters, int threads);

/* Runs `iters` rounds of independent x = 1 / (sqrt(x) + eps) on every thread
 * and returns the elements done: one square root and one division each, what
 * Adam, RMSprop and Adagrad take per parameter. Where the divider is slow
 * (on a Zen 4, no faster on 512-bit registers than on 256-bit ones) it, not
 * memory, bounds those updates. */
double gdfast_rootdiv_peak(gd_index iters, int threads);

double gdfast_fma_loop_scalar(gd_index iters);
double gdfast_fma_loop_avx2(gd_index iters);
double gdfast_fma_loop_avx512(gd_index iters);
double gdfast_rootdiv_loop_scalar(gd_index iters);
double gdfast_rootdiv_loop_avx2(gd_index iters);
double gdfast_rootdiv_loop_avx512(gd_index iters);
#endif
