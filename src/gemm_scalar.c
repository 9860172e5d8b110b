/* Portable register tile for the GEMM: plain C the compiler may vectorize
 * with whatever the baseline target offers (SSE2 on x86-64, NEON on arm64). */
#include <math.h>
#include "gemm.h"

float gdfast_act_scalar(int act, float z) {
    switch (act) {
    case GD_ACT_RELU: return z < 0.0f ? 0.0f : z; /* NaN stays NaN, like numpy.maximum */
    case GD_ACT_SIGMOID: return 1.0f / (1.0f + expf(-z));
    case GD_ACT_TANH: return tanhf(z);
    default: return z;
    }
}

float gdfast_dact_scalar(int act, float y) {
    switch (act) {
    case GD_ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
    case GD_ACT_SIGMOID: return y * (1.0f - y);
    case GD_ACT_TANH: return 1.0f - y * y;
    default: return 1.0f;
    }
}

/* acc[i][jh + j] for an 8-column half of the tile; MR is a constant in each
 * instance, so rows past mr cost nothing (batch 1 runs one row, not six). */
static inline void tile_half(const int MR, gd_index k, const float *a, gd_index rsa,
                             gd_index csa, const float *b, gd_index rsb, int jh, int w,
                             float acc[GD_MR][GD_NR]) {
    float blk[GD_MR][GD_NR / 2] = {{0.0f}};
    for (gd_index p = 0; p < k; p++) {
        float bp[GD_NR / 2] = {0.0f};
        const float *brow = b + p * rsb + jh;
        for (int j = 0; j < w; j++) bp[j] = brow[j];
        const float *ap = a + p * csa;
        for (int i = 0; i < MR; i++) {
            float ai = ap[i * rsa];
            for (int j = 0; j < GD_NR / 2; j++) blk[i][j] += ai * bp[j];
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < GD_NR / 2; j++) acc[i][jh + j] = blk[i][j];
}

/* nr <= GD_NR: b_hi is never used. */
void gdfast_gemm_tile_scalar(gd_index k, const float *a, gd_index rsa, gd_index csa,
                             const float *b, gd_index rsb, gd_index b_hi, int b_full, int mr,
                             int nr, float alpha, float beta, float *c, gd_index ldc,
                             const gd_epilogue *ep, gd_index i0, gd_index j0, int last) {
    /* Two passes of 8 columns: a 6 x 8 accumulator block fits the 16 vector
     * registers of SSE2/NEON, so the compiler keeps it out of memory. */
    float acc[GD_MR][GD_NR];
    (void)b_full;
    (void)b_hi;
    for (int jh = 0; jh < nr; jh += GD_NR / 2) {
        int w = nr - jh < GD_NR / 2 ? nr - jh : GD_NR / 2;
        switch (mr) {
        case 1: tile_half(1, k, a, rsa, csa, b, rsb, jh, w, acc); break;
        case 2: tile_half(2, k, a, rsa, csa, b, rsb, jh, w, acc); break;
        case 3: tile_half(3, k, a, rsa, csa, b, rsb, jh, w, acc); break;
        case 4: tile_half(4, k, a, rsa, csa, b, rsb, jh, w, acc); break;
        case 5: tile_half(5, k, a, rsa, csa, b, rsb, jh, w, acc); break;
        default: tile_half(GD_MR, k, a, rsa, csa, b, rsb, jh, w, acc); break;
        }
    }
    for (int i = 0; i < mr; i++) {
        float *crow = c + i * ldc;
        for (int j = 0; j < nr; j++) {
            float v = alpha * acc[i][j];
            if (beta != 0.0f) v += beta * crow[j];
            if (last && ep) v = gdfast_epilogue_scalar(ep, v, i0 + i, j0 + j);
            crow[j] = v;
        }
    }
}

float gdfast_epilogue_scalar(const gd_epilogue *ep, float v, gd_index i, gd_index j) {
    if (ep->bias) v += ep->bias[j];
    if (ep->act != GD_ACT_IDENTITY) v = gdfast_act_scalar(ep->act, v);
    const gd_dropout *d = ep->drop;
    if (ep->dact) {
        float y = ep->dact[i * ep->ld_dact + j];
        v *= gdfast_dact_scalar(ep->dact_kind, d ? y * d->keep : y);
    }
    if (d) {
        uint32_t h = gdfast_drop_hash(d->k0, d->k1, (uint32_t)((d->row0 + i) * d->ld + j));
        v *= (int32_t)(h >> 8) >= d->thresh ? d->scale : 0.0f;
    }
    if (ep->add) {
        float w = ep->add[i * ep->ld_add + j];
        if (ep->addsq) ep->addsq[8 * i + (j & 7)] += (double)w * (double)w;
        v += ep->add_scale * w;
    }
    if (ep->colsum) ep->colsum[j] += v;
    return v;
}

/* Per column 8 partial sums (p mod 8), added in a fixed tree. */
static inline float dot8(gd_index k, const float *a, gd_index csa, const float *b) {
    float part[8] = {0.0f};
    gd_index p = 0;
    for (; p + 8 <= k; p += 8)
        for (int l = 0; l < 8; l++) part[l] += a[(p + l) * csa] * b[p + l];
    for (int l = 0; p < k; p++, l++) part[l] += a[p * csa] * b[p];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

void gdfast_gemm_dot_scalar(gd_index k, const float *a, gd_index csa, const float *b,
                            gd_index ldb, gd_index nr, float alpha, float beta, float *c,
                            const gd_epilogue *ep, gd_index i, gd_index j0) {
    for (gd_index j = 0; j < nr; j++) {
        /* unit stride: the compiler vectorizes the loads of a too */
        float v = alpha * (csa == 1 ? dot8(k, a, 1, b + j * ldb) : dot8(k, a, csa, b + j * ldb));
        if (beta != 0.0f) v += beta * c[j];
        if (ep) v = gdfast_epilogue_scalar(ep, v, i, j0 + j);
        c[j] = v;
    }
}

/* Each row of B straight through, scattered down its panel column (the
 * panel sits in L1). */
void gdfast_gemm_pack_bt_scalar(gd_index kc, const float *b, gd_index ldb, int nr, float *dst) {
    for (int j = 0; j < GD_NR; j++) {
        const float *row = b + j * ldb;
        if (j < nr)
            for (gd_index p = 0; p < kc; p++) dst[p * GD_NR + j] = row[p];
        else
            for (gd_index p = 0; p < kc; p++) dst[p * GD_NR + j] = 0.0f;
    }
}

void gdfast_gemm_pack_a_scalar(gd_index kc, const float *a, gd_index rs, gd_index cs, int mr,
                               float *dst) {
    for (gd_index p = 0; p < kc; p++)
        for (int i = 0; i < GD_MR; i++) dst[p * GD_MR + i] = i < mr ? a[i * rs + p * cs] : 0.0f;
}

/* Copy, then the tile on the copy: the same products in the same order. */
void gdfast_gemm_tile_copy_b_scalar(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                    const float *b, gd_index rsb, gd_index b_hi, float *bcopy,
                                    int b_full, int mr, int nr, float alpha, float beta, float *c,
                                    gd_index ldc, const gd_epilogue *ep, gd_index i0,
                                    gd_index j0, int last) {
    (void)b_full;
    for (gd_index p = 0; p < k; p++)
        for (int j = 0; j < GD_NR; j++) bcopy[p * GD_NR + j] = b[p * rsb + j];
    gdfast_gemm_tile_scalar(k, a, rsa, csa, bcopy, GD_NR, b_hi, 1, mr, nr, alpha, beta, c, ldc,
                            ep, i0, j0, last);
}
