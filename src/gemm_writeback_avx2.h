/* The AVX2 write-back of the GEMM tiles: alpha, beta and the fused epilogue
 * (bias, activation, activation derivative, column sums) on 8-lane registers.
 * Shared by gemm_avx2.c and gemm_avx512.c, so both paths round every element
 * of C the same way, with the few definitions their tiles have in common.
 * Include only from files built with AVX2 + FMA. */
#ifndef GDFAST_GEMM_WRITEBACK_AVX2_H
#define GDFAST_GEMM_WRITEBACK_AVX2_H

#include <immintrin.h>
#include "gemm.h"

#if defined(__GNUC__)
#define GD_INLINE static inline __attribute__((always_inline))
#define GD_NOINLINE __attribute__((noinline))
/* Unrolls a tile's k loop by 4, the order of the sums unchanged: a copy of
 * the AVX2 6x16 loop on data in L1 went from 75-80% to 91-95% of the FMA
 * peak on a Zen 3 (4 of every 25 instructions of a step were the loop's own). */
#define GD_UNROLL4 _Pragma("GCC unroll 4")
#else
#define GD_UNROLL4
#define GD_INLINE static __forceinline
#define GD_NOINLINE __declspec(noinline)
#endif

/* What a tile's k loop does with its sums: hand them back for the
 * write-back, or for a full-width tile with alpha = 1 and no epilogue, store
 * them (beta = 0) or add them to C (beta = 1) straight from the registers. */
enum { GD_RETURN = 0, GD_STORE = 1, GD_ADD = 2 };

/* exp(x) for x in float range: 2^n * p(r), r = x - n ln2, |r| <= ln2/2.
 * Degree-6 minimax polynomial (Cephes expf coefficients), ~1 ulp. */
GD_INLINE __m256 exp256(__m256 x) {
    /* max/min return their second operand when either is NaN: x goes second
     * so a NaN input gives a NaN result instead of being clamped to a number */
    x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(_mm256_set1_ps(-87.3f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

GD_INLINE __m256 sigmoid256(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* tanh: an odd polynomial near 0 (Cephes tanhf) where 1 - 2/(e^2x + 1)
 * would cancel, that formula elsewhere; the sign is restored at the end. */
GD_INLINE __m256 tanh256(__m256 x) {
    __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f),
                     _mm256_add_ps(exp256(_mm256_add_ps(ax, ax)), one)));
    __m256 z = _mm256_mul_ps(ax, ax);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), ax, ax);
    __m256 y = _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
    return _mm256_or_ps(y, sign);
}

GD_INLINE __m256 act256(int act, __m256 v) {
    switch (act) {
    case GD_ACT_RELU: return _mm256_max_ps(_mm256_setzero_ps(), v); /* NaN stays NaN */
    case GD_ACT_SIGMOID: return sigmoid256(v);
    case GD_ACT_TANH: return tanh256(v);
    default: return v;
    }
}

/* v * act'(y) from the activation's output y. */
GD_INLINE __m256 dact256(int act, __m256 v, __m256 y) {
    __m256 one = _mm256_set1_ps(1.0f);
    switch (act) {
    case GD_ACT_RELU: return _mm256_and_ps(v, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ));
    case GD_ACT_SIGMOID: return _mm256_mul_ps(v, _mm256_mul_ps(y, _mm256_sub_ps(one, y)));
    case GD_ACT_TANH: return _mm256_mul_ps(v, _mm256_fnmadd_ps(y, y, one));
    default: return v;
    }
}

/* Mask selecting the first `n` (0..8) lanes. */
GD_INLINE __m256i lane_mask(int n) {
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

GD_INLINE __m256 load_part(const float *p, int full, __m256i m) {
    return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}

GD_INLINE void store_part(float *p, int full, __m256i m, __m256 v) {
    if (full) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, m, v);
}

/* The dropout multipliers (0 or scale) of elements (i, j .. j+7). */
GD_INLINE __m256 drop_mask256(const gd_dropout *d, gd_index i, gd_index j) {
    __m256i e = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)((d->row0 + i) * d->ld + j)),
                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i x = _mm256_xor_si256(e, _mm256_set1_epi32((int)d->k0));
    for (int round = 0; round < 2; round++) {
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
        x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x7feb352dU));
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
        x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bU));
        x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
        if (round == 0) x = _mm256_add_epi32(x, _mm256_set1_epi32((int)d->k1));
    }
    __m256i dropped = _mm256_cmpgt_epi32(_mm256_set1_epi32(d->thresh), _mm256_srli_epi32(x, 8));
    return _mm256_andnot_ps(_mm256_castsi256_ps(dropped), _mm256_set1_ps(d->scale));
}

/* sq[l] += w[l]^2 in float64 for the 8 lanes (0 in masked-off lanes adds 0),
 * j % 8 = l: gd_optim_k.sumsq's sums, in its order when a row's groups come
 * in ascending order. */
GD_INLINE void add_squares(double *sq, __m256 w) {
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(w));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
    _mm256_storeu_pd(sq, _mm256_add_pd(_mm256_loadu_pd(sq), _mm256_mul_pd(lo, lo)));
    _mm256_storeu_pd(sq + 4, _mm256_add_pd(_mm256_loadu_pd(sq + 4), _mm256_mul_pd(hi, hi)));
}

/* The parts of an epilogue, for write-backs specialised at compile time:
 * a tile tests its epilogue once and runs the write-back made for it
 * (GD_EP_ANY: tests each part for every 8 lanes). */
enum {
    GD_EP_BIAS = 1, GD_EP_ACT = 2, GD_EP_DACT = 4, GD_EP_DROP = 8, GD_EP_ADD = 16,
    GD_EP_COLSUM = 32, GD_EP_ANY = 64
};

GD_INLINE int ep_parts(const gd_epilogue *ep, int last) {
    if (!last || !ep) return 0;
    return (ep->bias ? GD_EP_BIAS : 0) | (ep->act != GD_ACT_IDENTITY ? GD_EP_ACT : 0) |
           (ep->dact ? GD_EP_DACT : 0) | (ep->drop ? GD_EP_DROP : 0) |
           (ep->add ? GD_EP_ADD : 0) | (ep->colsum ? GD_EP_COLSUM : 0);
}

/* An epilogue that only adds add_scale * add (the L2 term of a weight
 * gradient) to alpha = 1, beta = 0 sums: the tiles then write it back in one
 * tight loop, the same operations as write_back below (v + s * w, each
 * rounded), without write_back's tests for every 8 lanes (the three weight
 * gradients of 784-256-128-10 at batch 128, 1 thread: the term cost 93 us
 * over the plain store, now 24). */
GD_INLINE int only_add(const gd_epilogue *ep, float alpha, float beta, int last) {
    return ep_parts(ep, last) == GD_EP_ADD && alpha == 1.0f && beta == 0.0f;
}

/* Write one 8-wide half-row of a finished tile back to C, with the epilogue
 * parts F (or GD_EP_ANY: the parts ep has when `last`). Every F runs the
 * same operations on the parts present, so all give the same bits. */
GD_INLINE void write_back_parts(const int F, __m256 acc, float *c, int full, __m256i m,
                                __m256 valpha, float beta, const gd_epilogue *ep, gd_index i,
                                gd_index j, int last) {
#define GD_HAS(part, test) (F == GD_EP_ANY ? (last && ep && (test)) : (F & (part)) != 0)
    __m256 v = _mm256_mul_ps(acc, valpha);
    if (beta == 1.0f) v = _mm256_add_ps(v, load_part(c, full, m));
    else if (beta != 0.0f) v = _mm256_fmadd_ps(_mm256_set1_ps(beta), load_part(c, full, m), v);
    if (GD_HAS(GD_EP_BIAS, ep->bias)) v = _mm256_add_ps(v, load_part(ep->bias + j, full, m));
    if (GD_HAS(GD_EP_ACT, ep->act != GD_ACT_IDENTITY)) v = act256(ep->act, v);
    const gd_dropout *d = GD_HAS(GD_EP_DROP, ep->drop) ? ep->drop : NULL;
    if (GD_HAS(GD_EP_DACT, ep->dact)) {
        __m256 y = load_part(ep->dact + i * ep->ld_dact + j, full, m);
        if (d) y = _mm256_mul_ps(y, _mm256_set1_ps(d->keep));
        v = dact256(ep->dact_kind, v, y);
    }
    if (d) v = _mm256_mul_ps(v, drop_mask256(d, i, j));
    if (GD_HAS(GD_EP_ADD, ep->add)) {
        __m256 w = load_part(ep->add + i * ep->ld_add + j, full, m);
        if (ep->addsq) add_squares(ep->addsq + 8 * i, w);
        v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(ep->add_scale), w));
    }
    if (GD_HAS(GD_EP_COLSUM, ep->colsum))
        store_part(ep->colsum + j, full, m, _mm256_add_ps(load_part(ep->colsum + j, full, m), v));
#undef GD_HAS
    store_part(c, full, m, v);
}

GD_INLINE void write_back(__m256 acc, float *c, int full, __m256i m, __m256 valpha, float beta,
                          const gd_epilogue *ep, gd_index i, gd_index j, int last) {
    write_back_parts(GD_EP_ANY, acc, c, full, m, valpha, beta, ep, i, j, last);
}

/* Calls BODY(F) with F a compile-time constant for the epilogues the MLP
 * uses (none; a hidden layer's bias + activation, with dropout; the output
 * layer's bias; the backward act' with the bias gradient's column sums, with
 * dropout; the L2 term), GD_EP_ANY for any other. */
#define GD_EP_DISPATCH(parts, BODY)                                                \
    switch (parts) {                                                               \
    case 0: BODY(0); break;                                                        \
    case GD_EP_BIAS: BODY(GD_EP_BIAS); break;                                      \
    case GD_EP_BIAS | GD_EP_ACT: BODY(GD_EP_BIAS | GD_EP_ACT); break;              \
    case GD_EP_BIAS | GD_EP_ACT | GD_EP_DROP: BODY(GD_EP_BIAS | GD_EP_ACT | GD_EP_DROP); break; \
    case GD_EP_DACT | GD_EP_COLSUM: BODY(GD_EP_DACT | GD_EP_COLSUM); break;         \
    case GD_EP_DACT | GD_EP_DROP | GD_EP_COLSUM:                                   \
        BODY(GD_EP_DACT | GD_EP_DROP | GD_EP_COLSUM); break;                       \
    case GD_EP_ADD: BODY(GD_EP_ADD); break;                                        \
    default: BODY(GD_EP_ANY); break;                                               \
    }

#endif
