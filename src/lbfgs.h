/* L-BFGS vector kernels: the two-loop recursion and the dot products,
 * updates and norms around it, over flat float32 vectors of n floats.
 *
 * Dot products accumulate in double, each block of GD_LB_BLOCK floats in 8
 * interleaved partial sums, then the block sums in index order: the same
 * bits for any thread count and any SIMD path (gdfast/reference/lbfgs.py
 * does the same sums in NumPy). Elementwise updates round every operation
 * (-ffp-contract=off). Scalars (step t, coefficients) are doubles rounded to
 * float once per pass. Every function returns 0, or -1 when out of memory.
 */
#ifndef GDFAST_LBFGS_H
#define GDFAST_LBFGS_H

#include "gdfast.h"

#define GD_LB_BLOCK 4096

/* One instruction set's kernels (lbfgs_scalar.c, lbfgs_avx2.c, lbfgs_avx512.c). */
typedef struct {
    double (*dot)(const float *a, const float *b, gd_index n);
    /* x = x + a * y; returns x . z (0 when z is NULL) */
    double (*axpy_dot)(float *x, float a, const float *y, const float *z, gd_index n);
    /* x = c * src (src may be x); returns x . z (0 when z is NULL) */
    double (*scale_dot)(float *x, const float *src, float c, const float *z, gd_index n);
    /* y = g - gp, s = t * d; out = y . s, y . y, s . s */
    void (*pair)(float *y, float *s, const float *g, const float *gp, const float *d, float t,
                 gd_index n, double out[3]);
    double (*abssum)(const float *x, gd_index n);
    double (*maxabs)(const float *x, gd_index n); /* NaN when any x is NaN */
    void (*xpay)(float *out, const float *x0, float t, const float *d, gd_index n); /* out = x0 + t d */
} gd_lbfgs_kernels;

extern const gd_lbfgs_kernels gd_lbfgs_kernels_scalar;
#if defined(GDFAST_BUILD_AVX2)
extern const gd_lbfgs_kernels gd_lbfgs_kernels_avx2;
#endif
#if defined(GDFAST_BUILD_AVX512)
extern const gd_lbfgs_kernels gd_lbfgs_kernels_avx512;
#endif

/* Driver (lbfgs.c): threaded over whole blocks, results independent of the
 * thread count. */
int gdfast_lbfgs_dot(const float *a, const float *b, gd_index n, double *out);
int gdfast_lbfgs_abssum(const float *x, gd_index n, double *out);
int gdfast_lbfgs_maxabs(const float *x, gd_index n, double *out);
int gdfast_lbfgs_xpay(float *out, const float *x0, double t, const float *d, gd_index n);
/* The new curvature pair: y = g - gp, s = t d; out = y . s, y . y, s . s. */
int gdfast_lbfgs_pair(float *y, float *s, const float *g, const float *gp, const float *d,
                      double t, gd_index n, double out[3]);
/* d = -H g by the two-loop recursion over the k pairs S[i], Y[i], rho[i] =
 * 1 / (y_i . s_i), oldest first, with initial scaling h: one parallel region,
 * one pass over d per pair and loop (each update fused with the next dot). */
int gdfast_lbfgs_two_loop(const float *g, float *d, gd_index n, const float *const *S,
                          const float *const *Y, const double *rho, int k, double h);

#endif
