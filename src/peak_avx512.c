#include <immintrin.h>
#include "peak.h"

double gdfast_fma_loop_avx512(gd_index iters) {
    /* As the AVX2 loop, on 16-lane registers. */
    __m512 acc[10];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < 10; j++) acc[j] = _mm512_set1_ps((float)j);
    for (gd_index i = 0; i < iters; i++)
        for (int j = 0; j < 10; j++) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    __m512 s = acc[0];
    for (int j = 1; j < 10; j++) s = _mm512_add_ps(s, acc[j]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return 2.0 * 16.0 * 10.0 * (double)iters;
}

double gdfast_rootdiv_loop_avx512(gd_index iters) {
    /* As the AVX2 loop, on 16-lane registers, as the AVX-512 updates run. */
    __m512 x[10];
    const __m512 one = _mm512_set1_ps(1.0f), eps = _mm512_set1_ps(1e-8f);
    for (int j = 0; j < 10; j++) x[j] = _mm512_set1_ps((float)(j + 1));
    for (gd_index i = 0; i < iters; i++)
        for (int j = 0; j < 10; j++) x[j] = _mm512_div_ps(one, _mm512_add_ps(_mm512_sqrt_ps(x[j]), eps));
    __m512 s = x[0];
    for (int j = 1; j < 10; j++) s = _mm512_add_ps(s, x[j]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return 16.0 * 10.0 * (double)iters;
}
