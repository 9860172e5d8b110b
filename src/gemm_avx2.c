/* AVX2 + FMA register tile for the GEMM: 6 rows x 16 columns, 12 ymm
 * accumulators, 2 loads of B and 6 broadcasts of A per step of k. The tile is
 * specialised for each row count 1..6 so edge rows cost nothing, and for
 * masked loads of B when an unpacked B has fewer than 16 columns left.
 * The epilogue (bias, activation, activation derivative, column sums) runs on
 * the registers before they are stored. */
#include "gemm_writeback_avx2.h"

#define GD_ROW(r)                                                                  \
    if (MR > r) {                                                                  \
        __m256 ar = _mm256_broadcast_ss(ap + r * rsa);                             \
        c##r##0 = _mm256_fmadd_ps(ar, b0, c##r##0);                                \
        c##r##1 = _mm256_fmadd_ps(ar, b1, c##r##1);                                \
    }

#define GD_OUT(r)                                                                  \
    if (MR > r) {                                                                  \
        if (mode == GD_STORE) {                                                    \
            _mm256_storeu_ps(c + r * ldc, c##r##0);                                \
            _mm256_storeu_ps(c + r * ldc + 8, c##r##1);                            \
        } else if (mode == GD_ADD) {                                               \
            _mm256_storeu_ps(c + r * ldc, _mm256_add_ps(c##r##0, _mm256_loadu_ps(c + r * ldc))); \
            _mm256_storeu_ps(c + r * ldc + 8,                                      \
                             _mm256_add_ps(c##r##1, _mm256_loadu_ps(c + r * ldc + 8))); \
        } else {                                                                   \
            acc[2 * r] = c##r##0;                                                  \
            acc[2 * r + 1] = c##r##1;                                              \
        }                                                                          \
    }

/* The k loop alone, its 12 accumulators handed back through memory: kept
 * apart from the write-back so the compiler never spills an accumulator
 * (all 16 ymm registers: 12 accumulators, 2 rows of B, 1 broadcast of A). */
GD_INLINE void accumulate(const int MR, const int MASKED, const int PACKED_A, const int COPY,
                          gd_index k, const float *a, gd_index rsa, gd_index csa,
                          const float *b, gd_index rsb, float *bcopy, int nr, __m256 *acc,
                          int mode, float *c, gd_index ldc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m256i m0 = _mm256_setzero_si256(), m1 = m0;
    if (MASKED) {
        m0 = lane_mask(nr);
        m1 = lane_mask(nr - 8);
    }
    if (PACKED_A) { /* constant strides: the broadcasts use immediate offsets */
        rsa = 1;
        csa = GD_MR;
    }
    /* C's rows are far apart and seldom cached: fetching them now, while the
     * k loop runs, took the adds of a beta = 1 block off the critical path
     * (they were 13% of the tile's time on a 1024^3 GEMM, Zen 3). */
    for (int r = 0; r < MR; r++) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + GD_NR - 1), _MM_HINT_T0);
    }
    const float *ap = a;
    GD_UNROLL4
    for (gd_index p = 0; p < k; p++) {
        __m256 b0, b1;
        if (MASKED) {
            b0 = _mm256_maskload_ps(b, m0);
            b1 = _mm256_maskload_ps(b + 8, m1);
        } else {
            b0 = _mm256_loadu_ps(b);
            b1 = _mm256_loadu_ps(b + 8);
        }
        if (COPY) {
            _mm256_store_ps(bcopy, b0);
            _mm256_store_ps(bcopy + 8, b1);
            bcopy += GD_NR;
        }
        GD_ROW(0) GD_ROW(1) GD_ROW(2) GD_ROW(3) GD_ROW(4) GD_ROW(5)
        ap += csa;
        b += rsb;
    }
    GD_OUT(0) GD_OUT(1) GD_OUT(2) GD_OUT(3) GD_OUT(4) GD_OUT(5)
}

typedef void (*accum_fn)(gd_index k, const float *a, gd_index rsa, gd_index csa,
                         const float *b, gd_index rsb, float *bcopy, int nr, __m256 *acc,
                         int mode, float *c, gd_index ldc);

#define GD_ACCUM_ONE(NAME, R, MASKED, PACKED_A, COPY)                              \
    static GD_NOINLINE void NAME##_##R(gd_index k, const float *a, gd_index rsa,      \
        gd_index csa, const float *b, gd_index rsb, float *bcopy, int nr, __m256 *acc, \
        int mode, float *c, gd_index ldc) {                                         \
        accumulate(R, MASKED, PACKED_A, COPY, k, a, rsa, csa, b, rsb, bcopy, nr, acc,  \
                   mode, c, ldc);                                                   \
    }
#define GD_ACCUM(R)                                                                 \
    GD_ACCUM_ONE(accum_packed, R, 0, 1, 0)                                          \
    GD_ACCUM_ONE(accum_strided, R, 0, 0, 0)                                         \
    GD_ACCUM_ONE(accum_masked, R, 1, 0, 0)                                          \
    GD_ACCUM_ONE(accum_copy, R, 0, 0, 1)

GD_ACCUM(1) GD_ACCUM(2) GD_ACCUM(3) GD_ACCUM(4) GD_ACCUM(5) GD_ACCUM(6)

static const accum_fn accum_packed[GD_MR + 1] = {
    NULL, accum_packed_1, accum_packed_2, accum_packed_3, accum_packed_4, accum_packed_5,
    accum_packed_6};
static const accum_fn accum_strided[GD_MR + 1] = {
    NULL, accum_strided_1, accum_strided_2, accum_strided_3, accum_strided_4, accum_strided_5,
    accum_strided_6};
static const accum_fn accum_copy[GD_MR + 1] = {
    NULL, accum_copy_1, accum_copy_2, accum_copy_3, accum_copy_4, accum_copy_5, accum_copy_6};
static const accum_fn accum_masked[GD_MR + 1] = {
    NULL, accum_masked_1, accum_masked_2, accum_masked_3, accum_masked_4, accum_masked_5,
    accum_masked_6};

/* The tile; with COPY, B is unpacked and full width, and copied to bcopy. */
GD_INLINE void tile(const int COPY, gd_index k, const float *a, gd_index rsa, gd_index csa,
                    const float *b, gd_index rsb, float *bcopy, int b_full, int mr, int nr,
                    float alpha, float beta, float *c, gd_index ldc, const gd_epilogue *ep,
                    gd_index i0, gd_index j0, int last) {
    __m256 acc[2 * GD_MR];
    int mode = GD_RETURN;
    if (nr == GD_NR && alpha == 1.0f && !(last && ep))
        mode = beta == 0.0f ? GD_STORE : beta == 1.0f ? GD_ADD : GD_RETURN;
    if (COPY) accum_copy[mr](k, a, rsa, csa, b, rsb, bcopy, nr, acc, mode, c, ldc);
    else if (!b_full && nr < GD_NR) accum_masked[mr](k, a, rsa, csa, b, rsb, NULL, nr, acc, mode, c, ldc);
    else if (rsa == 1 && csa == GD_MR) accum_packed[mr](k, a, rsa, csa, b, rsb, NULL, nr, acc, mode, c, ldc);
    else accum_strided[mr](k, a, rsa, csa, b, rsb, NULL, nr, acc, mode, c, ldc);
    if (mode != GD_RETURN) return;
    if (nr == GD_NR && only_add(ep, alpha, beta, last)) {
        const __m256 s = _mm256_set1_ps(ep->add_scale);
        const float *w = ep->add + i0 * ep->ld_add + j0;
        for (int r = 0; r < 2 * mr; r++) {
            __m256 wv = _mm256_loadu_ps(w + r / 2 * ep->ld_add + 8 * (r & 1));
            if (ep->addsq) add_squares(ep->addsq + 8 * (i0 + r / 2), wv);
            _mm256_storeu_ps(c + r / 2 * ldc + 8 * (r & 1), _mm256_add_ps(acc[r], _mm256_mul_ps(s, wv)));
        }
        return;
    }
    __m256 valpha = _mm256_set1_ps(alpha);
    __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
    int full0 = nr >= 8, full1 = nr >= 16;
#define GD_TILE_WB(F)                                                              \
    for (int r = 0; r < mr; r++) {                                                 \
        write_back_parts(F, acc[2 * r], c + r * ldc, full0, m0, valpha, beta, ep, i0 + r, \
                         j0, last);                                                \
        if (nr > 8)                                                                \
            write_back_parts(F, acc[2 * r + 1], c + r * ldc + 8, full1, m1, valpha, beta, \
                             ep, i0 + r, j0 + 8, last);                            \
    }
    GD_EP_DISPATCH(ep_parts(ep, last), GD_TILE_WB)
#undef GD_TILE_WB
}

/* nr <= GD_NR: b_hi is never used. */
void gdfast_gemm_tile_avx2(gd_index k, const float *a, gd_index rsa, gd_index csa,
                           const float *b, gd_index rsb, gd_index b_hi, int b_full, int mr,
                           int nr, float alpha, float beta, float *c, gd_index ldc,
                           const gd_epilogue *ep, gd_index i0, gd_index j0, int last) {
    (void)b_hi;
    tile(0, k, a, rsa, csa, b, rsb, NULL, b_full, mr, nr, alpha, beta, c, ldc, ep, i0, j0, last);
}

void gdfast_gemm_tile_copy_b_avx2(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                  const float *b, gd_index rsb, gd_index b_hi, float *bcopy,
                                  int b_full, int mr, int nr, float alpha, float beta, float *c,
                                  gd_index ldc, const gd_epilogue *ep, gd_index i0, gd_index j0,
                                  int last) {
    (void)b_hi;
    tile(1, k, a, rsa, csa, b, rsb, bcopy, b_full, mr, nr, alpha, beta, c, ldc, ep, i0, j0, last);
}

#define GD_V __m256
#define GD_LANES 8
#define GD_ZERO() _mm256_setzero_ps()
#define GD_SET1(x) _mm256_set1_ps(x)
#define GD_LOADU(p) _mm256_loadu_ps(p)
#define GD_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define GD_LANES8(v, h) (v)
#define GD_WIDE_FN gdfast_gemm_wide_avx2
#include "gemm_wide.inc"

/* Sum of each of 8 vectors: lane q of the result is, for s[q],
 * ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)). */
GD_INLINE __m256 hsum8(const __m256 *s) {
    __m256 h01 = _mm256_hadd_ps(s[0], s[1]), h23 = _mm256_hadd_ps(s[2], s[3]);
    __m256 h45 = _mm256_hadd_ps(s[4], s[5]), h67 = _mm256_hadd_ps(s[6], s[7]);
    __m256 lo4 = _mm256_hadd_ps(h01, h23), hi4 = _mm256_hadd_ps(h45, h67);
    return _mm256_add_ps(_mm256_permute2f128_ps(lo4, hi4, 0x20),
                         _mm256_permute2f128_ps(lo4, hi4, 0x31));
}

/* 8 elements of a(p) from p, zero past `left` (a strided A: a(p) = a[p*csa]). */
GD_INLINE __m256 load_a(const float *a, gd_index csa, gd_index left, __m256i m) {
    if (csa == 1) return left >= 8 ? _mm256_loadu_ps(a) : _mm256_maskload_ps(a, m);
    float t[8];
    for (int q = 0; q < 8; q++) t[q] = q < left ? a[q * csa] : 0.0f;
    return _mm256_loadu_ps(t);
}

/* Dot products 8 columns at a time: per column one 8-lane FMA chain over k
 * (the tail masked to zero), then hsum8, which also puts the 8 results in one
 * vector for the vector write-back. Columns past nr repeat the last one and
 * are not stored, so a column's bits never depend on its neighbours. */
void gdfast_gemm_dot_avx2(gd_index k, const float *a, gd_index csa, const float *b,
                          gd_index ldb, gd_index nr, float alpha, float beta, float *c,
                          const gd_epilogue *ep, gd_index i, gd_index j0) {
    const __m256 valpha = _mm256_set1_ps(alpha);
    const __m256i tail = lane_mask((int)(k % 8));
    const gd_index kfull = k - k % 8;
    for (gd_index j = 0; j < nr; j += 8) {
        const float *rows[8];
        for (int q = 0; q < 8; q++) rows[q] = b + (j + q < nr ? j + q : nr - 1) * ldb;
        __m256 s[8];
        for (int q = 0; q < 8; q++) s[q] = _mm256_setzero_ps();
        for (gd_index p = 0; p < kfull; p += 8) {
            __m256 av = load_a(a + p * csa, csa, 8, tail);
            for (int q = 0; q < 8; q++) s[q] = _mm256_fmadd_ps(av, _mm256_loadu_ps(rows[q] + p), s[q]);
        }
        if (kfull < k) {
            __m256 av = load_a(a + kfull * csa, csa, k - kfull, tail);
            for (int q = 0; q < 8; q++)
                s[q] = _mm256_fmadd_ps(av, _mm256_maskload_ps(rows[q] + kfull, tail), s[q]);
        }
        int w = nr - j < 8 ? (int)(nr - j) : 8;
        write_back(hsum8(s), c + j, w == 8, lane_mask(w), valpha, beta, ep, i, j0 + j, 1);
    }
}

/* out[l] lane q = r[q] lane l, for q, l < 8. */
GD_INLINE void transpose8_regs(const __m256 *r, __m256 *out) {
    __m256 t[8], u[8];
    for (int q = 0; q < 8; q += 2) {
        t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
        t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
    }
    for (int q = 0; q < 8; q += 4) {
        u[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
        u[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xEE);
        u[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
        u[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
    }
    for (int l = 0; l < 4; l++) {
        out[l] = _mm256_permute2f128_ps(u[l], u[l + 4], 0x20);
        out[l + 4] = _mm256_permute2f128_ps(u[l], u[l + 4], 0x31);
    }
}

/* b[q*ldb + l] for q, l < 8 stored transposed at dst[l*GD_NR + q]. */
GD_INLINE void transpose8(const float *b, gd_index ldb, float *dst) {
    __m256 r[8], t[8];
    for (int q = 0; q < 8; q++) r[q] = _mm256_loadu_ps(b + q * ldb);
    transpose8_regs(r, t);
    for (int l = 0; l < 8; l++) _mm256_storeu_ps(dst + l * GD_NR, t[l]);
}

/* 8x8 blocks transposed in registers: one scalar store per element, each to
 * another cache line, cost more than the products at batch 32. */
void gdfast_gemm_pack_bt_avx2(gd_index kc, const float *b, gd_index ldb, int nr, float *dst) {
    if (nr < GD_NR) { /* the last panel, at most one per call */
        gdfast_gemm_pack_bt_scalar(kc, b, ldb, nr, dst);
        return;
    }
    gd_index p = 0;
    for (; p + 8 <= kc; p += 8) {
        transpose8(b + p, ldb, dst + p * GD_NR);
        transpose8(b + 8 * ldb + p, ldb, dst + p * GD_NR + 8);
    }
    for (; p < kc; p++)
        for (int j = 0; j < GD_NR; j++) dst[p * GD_NR + j] = b[j * ldb + p];
}

/* A panel with a vector per step of k: one element per store cost more than
 * the packing saved (512x1024 @ 1024x1024, 1 thread: 7% of the time). Each
 * step stores 8 lanes, the 2 past its GD_MR overwritten by the next step; the
 * last step stores only its GD_MR (masked), so nothing past the panel is
 * touched. Loads are masked to the mr rows that exist. */
GD_INLINE void store_step(float *dst, gd_index p, gd_index kc, __m256 v) {
    if (p + 1 < kc) _mm256_storeu_ps(dst + p * GD_MR, v);
    else _mm256_maskstore_ps(dst + p * GD_MR, lane_mask(GD_MR), v);
}

void gdfast_gemm_pack_a_avx2(gd_index kc, const float *a, gd_index rs, gd_index cs, int mr,
                             float *dst) {
    if (rs == 1) { /* op(A)'s columns are contiguous: one masked load per step */
        const __m256i rows = lane_mask(mr);
        for (gd_index p = 0; p < kc; p++) store_step(dst, p, kc, _mm256_maskload_ps(a + p * cs, rows));
        return;
    }
    gd_index p = 0;
    if (cs == 1) /* rows contiguous: 8 steps of the mr rows, transposed in registers */
        for (; p + 8 <= kc; p += 8) {
            __m256 r[8], t[8];
            for (int i = 0; i < 8; i++)
                r[i] = i < mr ? _mm256_loadu_ps(a + i * rs + p) : _mm256_setzero_ps();
            transpose8_regs(r, t);
            for (int l = 0; l < 8; l++) store_step(dst, p + l, kc, t[l]);
        }
    gdfast_gemm_pack_a_scalar(kc - p, a + p * cs, rs, cs, mr, dst + p * GD_MR);
}
