/* Single-precision GEMM for row-major buffers, with a fused epilogue.
 *
 *   C = epilogue(alpha * op(A) @ op(B) + beta * C)
 *
 * op(A) is m x k, op(B) is k x n, C is m x n; lda/ldb/ldc are row strides of
 * the stored matrices. The epilogue runs on each finished register tile as it
 * is written back (no extra pass over C), in this order:
 *   v += bias[j]                  (bias != NULL)
 *   v  = act(v)                   (act != GD_ACT_IDENTITY)
 *   v *= act'(y) for y = dact[i*ld_dact + j], the saved *output* y = act(z)
 *                                 (dact != NULL; kind dact_kind; with drop, y is
 *                                 that output undone of the dropout scale: y * keep)
 *   v *= drop mask of (i, j)      (drop != NULL: 0 or 1 / keep, see gd_dropout)
 *   v += add_scale * add[i*ld_add + j]   (add != NULL; the L2 term of a weight gradient)
 *   addsq[8*i + j%8] += add(i, j)^2   (addsq != NULL, with add; in float64, each
 *                                 row's columns in ascending order: the 8 interleaved
 *                                 sums of ||W_i||^2 of gd_optim_k.sumsq, which the
 *                                 caller zeroes first and combines; C is then split
 *                                 over rows, never with colsum)
 *   colsum[j] += v                (colsum != NULL; rows added in ascending order)
 * beta == 0 never reads C, so C may hold garbage. Results are the same bit
 * for bit for any thread count: work is split over output tiles only and the
 * K loop is never split.
 */
#ifndef GDFAST_GEMM_H
#define GDFAST_GEMM_H

#include "gdfast.h"

enum { GD_ACT_IDENTITY = 0, GD_ACT_RELU = 1, GD_ACT_SIGMOID = 2, GD_ACT_TANH = 3, GD_ACT_COUNT };

/* Inverted dropout of an n x ld activation, rows row0.. of a bigger batch:
 * element (i, j) is kept when gdfast_drop_hash(k0, k1, (row0 + i)*ld + j)
 * >> 8 >= thresh (a 24-bit threshold, round(p * 2^24) for rate p; the index
 * taken mod 2^32), and a kept value is multiplied by scale = 1 / keep,
 * keep = 1 - p. A counter-based mask: any element, any thread, any order,
 * and any cut of the batch into parts gives the same bits. */
typedef struct {
    uint32_t k0, k1;
    int32_t thresh;
    float scale, keep;
    gd_index ld, row0;
} gd_dropout;

/* The mask's 32-bit hash of one element index e (a mix of Wellons'
 * lowbias32 applied twice, keyed before each round). */
static inline uint32_t gdfast_mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}
static inline uint32_t gdfast_drop_hash(uint32_t k0, uint32_t k1, uint32_t e) {
    return gdfast_mix32(gdfast_mix32(e ^ k0) + k1);
}

typedef struct {
    const float *bias;
    int act;
    const float *dact;
    gd_index ld_dact;
    int dact_kind;
    float *colsum;
    const float *add;
    gd_index ld_add;
    float add_scale;
    const gd_dropout *drop;
    double *addsq;
} gd_epilogue;

/* Packing format shared by every ISA: A in MR-row panels, B in NR-column
 * panels. A register tile covers MR rows and one NR-column panel, or two
 * adjacent ones on AVX-512. */
#define GD_MR 6
#define GD_NR 16

/* One register tile: acc = sum_p a(i,p) * b(p,j) for i < mr, j < nr, then
 * write-back of alpha*acc + beta*C (+ epilogue when `last`).
 *   a(i,p) = a[i*rsa + p*csa]     b(p,j) = b[p*rsb + j]  (j < GD_NR)
 *                                 b(p,j) = b[b_hi + p*rsb + j - GD_NR]  (j >= GD_NR)
 * nr is at most the path's tile width; the second panel, at offset b_hi (the
 * next packed panel, or GD_NR in an unpacked B), is read only when nr > GD_NR.
 * `b_full` says whole panels may be loaded from b even when nr is short (packed,
 * zero-padded panels); otherwise columns >= nr are never touched.
 * (i0, j0) locate the tile in C for the epilogue's bias/dact/colsum. */
typedef void (*gd_tile_fn)(gd_index k, const float *a, gd_index rsa, gd_index csa,
                           const float *b, gd_index rsb, gd_index b_hi, int b_full, int mr,
                           int nr, float alpha, float beta, float *c, gd_index ldc,
                           const gd_epilogue *ep, gd_index i0, gd_index j0, int last);

void gdfast_gemm_tile_scalar(gd_index k, const float *a, gd_index rsa, gd_index csa,
                             const float *b, gd_index rsb, gd_index b_hi, int b_full, int mr,
                             int nr, float alpha, float beta, float *c, gd_index ldc,
                             const gd_epilogue *ep, gd_index i0, gd_index j0, int last);
#if defined(GDFAST_BUILD_AVX2)
void gdfast_gemm_tile_avx2(gd_index k, const float *a, gd_index rsa, gd_index csa,
                           const float *b, gd_index rsb, gd_index b_hi, int b_full, int mr,
                           int nr, float alpha, float beta, float *c, gd_index ldc,
                           const gd_epilogue *ep, gd_index i0, gd_index j0, int last);
#endif

/* The tile above on a full-width (nr = tile width), unpacked B that also
 * copies the k x nr block of B it reads to bcopy (64-byte aligned) in packed
 * panels, bcopy[p*GD_NR + j] and bcopy[k*GD_NR + p*GD_NR + j - GD_NR] for
 * j >= GD_NR: the first tile of a block packs it for the others. */
typedef void (*gd_tile_copy_b_fn)(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                  const float *b, gd_index rsb, gd_index b_hi, float *bcopy,
                                  int b_full, int mr, int nr, float alpha, float beta, float *c,
                                  gd_index ldc, const gd_epilogue *ep, gd_index i0, gd_index j0,
                                  int last);
void gdfast_gemm_tile_copy_b_scalar(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                    const float *b, gd_index rsb, gd_index b_hi, float *bcopy,
                                    int b_full, int mr, int nr, float alpha, float beta, float *c,
                                    gd_index ldc, const gd_epilogue *ep, gd_index i0,
                                    gd_index j0, int last);
#if defined(GDFAST_BUILD_AVX2)
void gdfast_gemm_tile_copy_b_avx2(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                  const float *b, gd_index rsb, gd_index b_hi, float *bcopy,
                                  int b_full, int mr, int nr, float alpha, float beta, float *c,
                                  gd_index ldc, const gd_epilogue *ep, gd_index i0, gd_index j0,
                                  int last);
#endif

/* One or two rows of A against an unpacked B (the GEMV of a batch-1 forward):
 * the tile above would run only 2 or 4 FMA chains there and wait on their
 * latency; a wide tile runs 8. Computes whole wide tiles of the first nr
 * columns and returns how many columns it did; the caller finishes the rest
 * with the tile. Arguments as for the tile (mr <= 2, B never packed), and
 * each element of C gets the same bits as from the tile. */
typedef gd_index (*gd_wide_fn)(gd_index k, const float *a, gd_index rsa, gd_index csa,
                               const float *b, gd_index rsb, int mr, gd_index nr,
                               float alpha, float beta, float *c, gd_index ldc,
                               const gd_epilogue *ep, gd_index i0, gd_index j0, int last);

/* One row of A against a transposed B (dZ @ W.T at batch 1): for j < nr,
 *   c[j] = epilogue(alpha * dot(a, B_j) + beta * c[j])   at (i, j0 + j),
 * with a(p) = a[p*csa] and B_j = b + j*ldb a contiguous row of length k.
 * Each dot product is summed in a fixed order that does not depend on nr. */
typedef void (*gd_dot_fn)(gd_index k, const float *a, gd_index csa, const float *b,
                          gd_index ldb, gd_index nr, float alpha, float beta, float *c,
                          const gd_epilogue *ep, gd_index i, gd_index j0);

void gdfast_gemm_dot_scalar(gd_index k, const float *a, gd_index csa, const float *b,
                            gd_index ldb, gd_index nr, float alpha, float beta, float *c,
                            const gd_epilogue *ep, gd_index i, gd_index j0);
#if defined(GDFAST_BUILD_AVX512)
void gdfast_gemm_tile_avx512(gd_index k, const float *a, gd_index rsa, gd_index csa,
                             const float *b, gd_index rsb, gd_index b_hi, int b_full, int mr,
                             int nr, float alpha, float beta, float *c, gd_index ldc,
                             const gd_epilogue *ep, gd_index i0, gd_index j0, int last);
gd_index gdfast_gemm_wide_avx512(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                 const float *b, gd_index rsb, int mr, gd_index nr,
                                 float alpha, float beta, float *c, gd_index ldc,
                                 const gd_epilogue *ep, gd_index i0, gd_index j0, int last);
void gdfast_gemm_tile_copy_b_avx512(gd_index k, const float *a, gd_index rsa, gd_index csa,
                                    const float *b, gd_index rsb, gd_index b_hi, float *bcopy,
                                    int b_full, int mr, int nr, float alpha, float beta, float *c,
                                    gd_index ldc, const gd_epilogue *ep, gd_index i0,
                                    gd_index j0, int last);
#endif

#if defined(GDFAST_BUILD_AVX2)
gd_index gdfast_gemm_wide_avx2(gd_index k, const float *a, gd_index rsa, gd_index csa,
                               const float *b, gd_index rsb, int mr, gd_index nr,
                               float alpha, float beta, float *c, gd_index ldc,
                               const gd_epilogue *ep, gd_index i0, gd_index j0, int last);
void gdfast_gemm_dot_avx2(gd_index k, const float *a, gd_index csa, const float *b,
                          gd_index ldb, gd_index nr, float alpha, float beta, float *c,
                          const gd_epilogue *ep, gd_index i, gd_index j0);
#endif

/* Packs one GD_NR-column panel of a transposed B (B stored n x k):
 *   dst[p*GD_NR + j] = b[j*ldb + p]  for p < kc, j < nr;  0 for nr <= j < GD_NR. */
typedef void (*gd_pack_bt_fn)(gd_index kc, const float *b, gd_index ldb, int nr, float *dst);

void gdfast_gemm_pack_bt_scalar(gd_index kc, const float *b, gd_index ldb, int nr, float *dst);
#if defined(GDFAST_BUILD_AVX2)
void gdfast_gemm_pack_bt_avx2(gd_index kc, const float *b, gd_index ldb, int nr, float *dst);
#endif

/* Packs one GD_MR-row panel of op(A), a(i,p) = a[i*rs + p*cs] with rs or cs 1:
 *   dst[p*GD_MR + i] = a(i, p)  for i < mr, p < kc;  0 for mr <= i < GD_MR. */
typedef void (*gd_pack_a_fn)(gd_index kc, const float *a, gd_index rs, gd_index cs, int mr,
                             float *dst);

void gdfast_gemm_pack_a_scalar(gd_index kc, const float *a, gd_index rs, gd_index cs, int mr,
                               float *dst);
#if defined(GDFAST_BUILD_AVX2)
void gdfast_gemm_pack_a_avx2(gd_index kc, const float *a, gd_index rs, gd_index cs, int mr,
                             float *dst);
#endif

/* Returns 0, or -1 when a packing buffer could not be allocated. */
int gdfast_sgemm(int trans_a, int trans_b, gd_index m, gd_index n, gd_index k,
                 float alpha, const float *a, gd_index lda, const float *b, gd_index ldb,
                 float beta, float *c, gd_index ldc, const gd_epilogue *ep);

/* Scalar activation and its derivative from the output y = act(z). */
float gdfast_act_scalar(int act, float z);
float gdfast_dact_scalar(int act, float y);
/* The epilogue above for one element v of C at (i, j); returns the new v. */
float gdfast_epilogue_scalar(const gd_epilogue *ep, float v, gd_index i, gd_index j);

#endif
