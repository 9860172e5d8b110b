#include "peak.h"

double gdfast_fma_loop_scalar(gd_index iters) {
    /* Eight independent chains hide the add latency; the compiler may widen
     * them to SSE, which is what the portable path really gets. */
    float acc[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const float a = 0.999999f, b = 1e-7f;
    for (gd_index i = 0; i < iters; i++)
        for (int j = 0; j < 8; j++) acc[j] = acc[j] * a + b;
    volatile float sink = acc[0] + acc[7];
    (void)sink;
    return 2.0 * 8.0 * (double)iters;
}

double gdfast_fma_peak(gd_index iters, int threads) {
    double flops = 0.0;
    const int isa = gdfast_isa_active();
    if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) reduction(+ : flops) schedule(static, 1)
#endif
    for (int t = 0; t < threads; t++) {
#ifdef GDFAST_BUILD_AVX512
        if (isa == GDFAST_ISA_AVX512) { flops += gdfast_fma_loop_avx512(iters); continue; }
#endif
#ifdef GDFAST_BUILD_AVX2
        if (isa == GDFAST_ISA_AVX2) { flops += gdfast_fma_loop_avx2(iters); continue; }
#endif
        flops += gdfast_fma_loop_scalar(iters);
    }
    (void)isa;
    return flops;
}
