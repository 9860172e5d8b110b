#include <immintrin.h>
#include "peak.h"

double gdfast_fma_loop_avx2(gd_index iters) {
    /* Ten independent FMA chains: enough to keep two FMA pipes with a
     * four-cycle latency busy on current x86 cores. */
    __m256 acc[10];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < 10; j++) acc[j] = _mm256_set1_ps((float)j);
    for (gd_index i = 0; i < iters; i++)
        for (int j = 0; j < 10; j++) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    __m256 s = acc[0];
    for (int j = 1; j < 10; j++) s = _mm256_add_ps(s, acc[j]);
    volatile float sink = _mm256_cvtss_f32(s);
    (void)sink;
    return 2.0 * 8.0 * 10.0 * (double)iters;
}

double gdfast_rootdiv_loop_avx2(gd_index iters) {
    /* Ten chains of x = 1 / (sqrt(x) + eps) (they settle at 1): enough to
     * keep a pipelined divider busy through each chain's latency. */
    __m256 x[10];
    const __m256 one = _mm256_set1_ps(1.0f), eps = _mm256_set1_ps(1e-8f);
    for (int j = 0; j < 10; j++) x[j] = _mm256_set1_ps((float)(j + 1));
    for (gd_index i = 0; i < iters; i++)
        for (int j = 0; j < 10; j++) x[j] = _mm256_div_ps(one, _mm256_add_ps(_mm256_sqrt_ps(x[j]), eps));
    __m256 s = x[0];
    for (int j = 1; j < 10; j++) s = _mm256_add_ps(s, x[j]);
    volatile float sink = _mm256_cvtss_f32(s);
    (void)sink;
    return 8.0 * 10.0 * (double)iters;
}
