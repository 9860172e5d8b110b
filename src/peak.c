#include <math.h>
#include "peak.h"

#define GD_SCALAR_CHAINS 40

double gdfast_fma_loop_scalar(gd_index iters) {
    /* 40 independent chains, which the compiler widens to 10 SSE registers
     * (what the portable path really gets): enough to hide the multiply's
     * and the add's latency. */
    float acc[GD_SCALAR_CHAINS];
    const float a = 0.999999f, b = 1e-7f;
    for (int j = 0; j < GD_SCALAR_CHAINS; j++) acc[j] = (float)j;
    for (gd_index i = 0; i < iters; i++)
        for (int j = 0; j < GD_SCALAR_CHAINS; j++) acc[j] = acc[j] * a + b;
    volatile float sink = 0.0f; /* every chain, or the compiler drops the unread ones */
    for (int j = 0; j < GD_SCALAR_CHAINS; j++) sink += acc[j];
    return 2.0 * GD_SCALAR_CHAINS * (double)iters;
}

double gdfast_rootdiv_loop_scalar(gd_index iters) {
    /* As the loop above; the chains settle at x = 1, normal floats all along. */
    float x[GD_SCALAR_CHAINS];
    const float eps = 1e-8f;
    for (int j = 0; j < GD_SCALAR_CHAINS; j++) x[j] = (float)(j + 1);
    for (gd_index i = 0; i < iters; i++)
        for (int j = 0; j < GD_SCALAR_CHAINS; j++) x[j] = 1.0f / (sqrtf(x[j]) + eps);
    volatile float sink = 0.0f;
    for (int j = 0; j < GD_SCALAR_CHAINS; j++) sink += x[j];
    return GD_SCALAR_CHAINS * (double)iters;
}

typedef double (*loop_fn)(gd_index iters);

/* loops[isa] on every thread; returns the sum of what they did. */
static double on_threads(const loop_fn loops[GDFAST_ISA_COUNT], gd_index iters, int threads) {
    double done = 0.0;
    const int isa = gdfast_isa_active(); /* -1 before the first selection */
    const loop_fn loop = loops[isa > 0 && isa < GDFAST_ISA_COUNT ? isa : GDFAST_ISA_SCALAR];
    if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) reduction(+ : done) schedule(static, 1)
#endif
    for (int t = 0; t < threads; t++) done += loop(iters);
    return done;
}

/* The loop of each instruction set, the portable one where it is not built
 * (gdfast_isa_active never names one that is not). */
#ifdef GDFAST_BUILD_AVX2
#define GD_AVX2(f) f##_avx2
#else
#define GD_AVX2(f) f##_scalar
#endif
#ifdef GDFAST_BUILD_AVX512
#define GD_AVX512(f) f##_avx512
#else
#define GD_AVX512(f) f##_scalar
#endif

double gdfast_fma_peak(gd_index iters, int threads) {
    static const loop_fn loops[GDFAST_ISA_COUNT] = {
        gdfast_fma_loop_scalar, GD_AVX2(gdfast_fma_loop), GD_AVX512(gdfast_fma_loop)};
    return on_threads(loops, iters, threads);
}

double gdfast_rootdiv_peak(gd_index iters, int threads) {
    static const loop_fn loops[GDFAST_ISA_COUNT] = {
        gdfast_rootdiv_loop_scalar, GD_AVX2(gdfast_rootdiv_loop), GD_AVX512(gdfast_rootdiv_loop)};
    return on_threads(loops, iters, threads);
}
