/* AVX-512 register tiles for the GEMM. The main one: 6 rows x 32 columns (two packed
 * panels of B), 12 zmm accumulators, 2 loads of B and 6 broadcasts of A per
 * step of k: twice the AVX2 tile's work per instruction. Each element of C is
 * the same FMA chain over k as on the AVX2 path, and the write-back is the
 * AVX2 one on 8-lane parts, so both paths give C the same bits.
 * Specialised for each row count 1..6 and for one or two panels; masked
 * loads (which never fault on masked-off lanes) cover an unpacked B's last
 * columns. A wide tile of 1-2 rows serves the batch-1 forward (at the end). */
#include "gemm_writeback_avx2.h"

/* First n (may be <= 0 or >= 16) lanes of a 16-lane register. */
GD_INLINE __mmask16 lanes16(int n) {
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

#define GD_ROW512(r)                                                               \
    if (MR > r) {                                                                  \
        __m512 ar = _mm512_set1_ps(ap[r * rsa]);                                   \
        c##r##0 = _mm512_fmadd_ps(ar, b0, c##r##0);                                \
        if (NH == 2) c##r##1 = _mm512_fmadd_ps(ar, b1, c##r##1);                   \
    }

#define GD_OUT512(r)                                                               \
    if (MR > r) {                                                                  \
        float *cr = c + r * ldc;                                                   \
        if (mode == GD_STORE) {                                                    \
            _mm512_storeu_ps(cr, c##r##0);                                         \
            if (NH == 2) _mm512_storeu_ps(cr + 16, c##r##1);                       \
        } else if (mode == GD_ADD) {                                               \
            _mm512_storeu_ps(cr, _mm512_add_ps(c##r##0, _mm512_loadu_ps(cr)));     \
            if (NH == 2)                                                           \
                _mm512_storeu_ps(cr + 16, _mm512_add_ps(c##r##1, _mm512_loadu_ps(cr + 16))); \
        } else {                                                                   \
            acc[2 * r] = c##r##0;                                                  \
            acc[2 * r + 1] = c##r##1;                                              \
        }                                                                          \
    }

/* The k loop alone over NH panels (16 columns each); sums handed back
 * through memory, or stored / added to C straight from the registers. */
GD_INLINE void accumulate(const int MR, const int NH, const int MASKED, const int PACKED_A,
                          const int COPY, gd_index k, const float *a, gd_index rsa,
                          gd_index csa, const float *b, gd_index rsb, gd_index b_hi,
                          float *bcopy, int nr, __m512 *acc, int mode, float *c, gd_index ldc) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const __mmask16 m0 = lanes16(nr), m1 = lanes16(nr - 16);
    if (PACKED_A) { /* constant strides: the broadcasts use immediate offsets */
        rsa = 1;
        csa = GD_MR;
    }
    /* C's rows fetched while the k loop runs, and the loop unrolled by 4, as
     * on the AVX2 path: on a Zen 4 (AVX-512 on 256-bit units) the two took
     * 1024^3 from 25.3 to 21.9 ms and the bigger MLPs' steps 6-13% less time */
    for (int r = 0; r < MR; r++) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + NH * GD_NR - 1), _MM_HINT_T0);
    }
    const float *ap = a, *bh = NH == 2 ? b + b_hi : b;
    float *bcopy_hi = COPY && NH == 2 ? bcopy + k * GD_NR : NULL;
    GD_UNROLL4
    for (gd_index p = 0; p < k; p++) {
        __m512 b0, b1 = _mm512_setzero_ps();
        if (MASKED) {
            b0 = _mm512_maskz_loadu_ps(m0, b);
            if (NH == 2) b1 = _mm512_maskz_loadu_ps(m1, bh);
        } else {
            b0 = _mm512_loadu_ps(b);
            if (NH == 2) b1 = _mm512_loadu_ps(bh);
        }
        if (COPY) {
            _mm512_store_ps(bcopy, b0);
            bcopy += GD_NR;
            if (NH == 2) {
                _mm512_store_ps(bcopy_hi, b1);
                bcopy_hi += GD_NR;
            }
        }
        GD_ROW512(0) GD_ROW512(1) GD_ROW512(2) GD_ROW512(3) GD_ROW512(4) GD_ROW512(5)
        ap += csa;
        b += rsb;
        bh += rsb;
    }
    GD_OUT512(0) GD_OUT512(1) GD_OUT512(2) GD_OUT512(3) GD_OUT512(4) GD_OUT512(5)
}

typedef void (*accum_fn)(gd_index k, const float *a, gd_index rsa, gd_index csa,
                         const float *b, gd_index rsb, gd_index b_hi, float *bcopy, int nr,
                         __m512 *acc, int mode, float *c, gd_index ldc);

#define GD_ACCUM_ONE(NAME, R, NH, MASKED, PACKED_A, COPY)                          \
    static GD_NOINLINE void NAME##_##NH##_##R(gd_index k, const float *a, gd_index rsa, \
        gd_index csa, const float *b, gd_index rsb, gd_index b_hi, float *bcopy, int nr, \
        __m512 *acc, int mode, float *c, gd_index ldc) {                            \
        accumulate(R, NH, MASKED, PACKED_A, COPY, k, a, rsa, csa, b, rsb, b_hi, bcopy, nr, \
                   acc, mode, c, ldc);                                              \
    }
#define GD_ACCUM_NH(R, NH)                                                          \
    GD_ACCUM_ONE(accum_packed, R, NH, 0, 1, 0)                                      \
    GD_ACCUM_ONE(accum_strided, R, NH, 0, 0, 0)                                     \
    GD_ACCUM_ONE(accum_masked, R, NH, 1, 0, 0)                                      \
    GD_ACCUM_ONE(accum_copy, R, NH, 0, 0, 1)
#define GD_ACCUM(R) GD_ACCUM_NH(R, 1) GD_ACCUM_NH(R, 2)

GD_ACCUM(1) GD_ACCUM(2) GD_ACCUM(3) GD_ACCUM(4) GD_ACCUM(5) GD_ACCUM(6)

#define GD_TABLE(NAME)                                                              \
    static const accum_fn NAME[2][GD_MR + 1] = {                                    \
        {NULL, NAME##_1_1, NAME##_1_2, NAME##_1_3, NAME##_1_4, NAME##_1_5, NAME##_1_6}, \
        {NULL, NAME##_2_1, NAME##_2_2, NAME##_2_3, NAME##_2_4, NAME##_2_5, NAME##_2_6}};
GD_TABLE(accum_packed)
GD_TABLE(accum_strided)
GD_TABLE(accum_masked)
GD_TABLE(accum_copy)

/* add_squares (gemm_writeback_avx2.h) of 16 lanes: lanes 0-7, then 8-15,
 * the order of their columns. */
GD_INLINE void add_squares16(double *sq, __m512 w) {
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(w));
    __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(w, 1));
    __m512d a = _mm512_add_pd(_mm512_loadu_pd(sq), _mm512_mul_pd(lo, lo));
    _mm512_storeu_pd(sq, _mm512_add_pd(a, _mm512_mul_pd(hi, hi)));
}

/* Lanes 8h .. 8h+7 (h = 0, 1) of a 16-lane register. */
GD_INLINE __m256 lanes8(__m512 v, int h) {
    return h ? _mm512_extractf32x8_ps(v, 1) : _mm512_castps512_ps256(v);
}

/* The tile; with COPY, B is unpacked and full width, and copied to bcopy. */
GD_INLINE void tile(const int COPY, gd_index k, const float *a, gd_index rsa, gd_index csa,
                    const float *b, gd_index rsb, gd_index b_hi, float *bcopy, int b_full,
                    int mr, int nr, float alpha, float beta, float *c, gd_index ldc,
                    const gd_epilogue *ep, gd_index i0, gd_index j0, int last) {
    __m512 acc[2 * GD_MR];
    const int nh = nr > GD_NR ? 2 : 1;
    int mode = GD_RETURN;
    if (nr == nh * GD_NR && alpha == 1.0f && !(last && ep))
        mode = beta == 0.0f ? GD_STORE : beta == 1.0f ? GD_ADD : GD_RETURN;
    const accum_fn *table = COPY ? accum_copy[nh - 1]
                            : (!b_full && nr < nh * GD_NR) ? accum_masked[nh - 1]
                            : (rsa == 1 && csa == GD_MR) ? accum_packed[nh - 1]
                                                         : accum_strided[nh - 1];
    table[mr](k, a, rsa, csa, b, rsb, b_hi, bcopy, nr, acc, mode, c, ldc);
    if (mode != GD_RETURN) return;
    if (nr == nh * GD_NR && only_add(ep, alpha, beta, last)) {
        const __m512 s = _mm512_set1_ps(ep->add_scale);
        const float *w = ep->add + i0 * ep->ld_add + j0;
        for (int r = 0; r < mr; r++)
            for (int h = 0; h < nh; h++) {
                __m512 wv = _mm512_loadu_ps(w + r * ep->ld_add + 16 * h);
                if (ep->addsq) add_squares16(ep->addsq + 8 * (i0 + r), wv);
                _mm512_storeu_ps(c + r * ldc + 16 * h, _mm512_add_ps(acc[2 * r + h], _mm512_mul_ps(s, wv)));
            }
        return;
    }
    const __m256 valpha = _mm256_set1_ps(alpha);
#define GD_TILE_WB(F)                                                              \
    for (int q = 0; 8 * q < nr; q++) {                                             \
        const int full = nr >= 8 * (q + 1);                                        \
        const __m256i m = lane_mask(nr - 8 * q);                                   \
        for (int r = 0; r < mr; r++)                                               \
            write_back_parts(F, lanes8(acc[2 * r + q / 2], q & 1), c + r * ldc + 8 * q, full, \
                             m, valpha, beta, ep, i0 + r, j0 + 8 * q, last);       \
    }
    GD_EP_DISPATCH(ep_parts(ep, last), GD_TILE_WB)
#undef GD_TILE_WB
}

void gdfast_gemm_tile_avx512(gd_index k, const float *a, gd_index rsa, gd_index csa,
                             const float *b, gd_index rsb, gd_index b_hi, int b_full, int mr,
                             int nr, float alpha, float beta, float *c, gd_index ldc,
                             const gd_epilogue *ep, gd_index i0, gd_index j0, int last) {
    tile(0, k, a, rsa, csa, b, rsb, b_hi, NULL, b_full, mr, nr, alpha, beta, c, ldc, ep, i0, j0,
         last);
}

void gdfast_gemm_tile_copy_b_avx512(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                    const float *b, gd_index rsb, gd_index b_hi, float *bcopy,
                                    int b_full, int mr, int nr, float alpha, float beta, float *c,
                                    gd_index ldc, const gd_epilogue *ep, gd_index i0,
                                    gd_index j0, int last) {
    tile(1, k, a, rsa, csa, b, rsb, b_hi, bcopy, b_full, mr, nr, alpha, beta, c, ldc, ep, i0, j0,
         last);
}

#define GD_V __m512
#define GD_LANES 16
#define GD_ZERO() _mm512_setzero_ps()
#define GD_SET1(x) _mm512_set1_ps(x)
#define GD_LOADU(p) _mm512_loadu_ps(p)
#define GD_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define GD_LANES8(v, h) lanes8(v, h)
#define GD_WIDE_FN gdfast_gemm_wide_avx512
#include "gemm_wide.inc"
