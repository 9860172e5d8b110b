/* GEMM driver in the GotoBLAS/BLIS shape:
 *
 *   for jc (NC columns of C)          B block  kc x nc  packed, lives in L3/L2
 *     for pc (KC steps of k)
 *       for ic (MC rows of C)         A block  mc x kc  packed, lives in L2
 *         for jr (NR columns)         B micro-panel kc x NR stays in L1 (2 on AVX-512)
 *           for ir (MR rows)          register tile (gemm_<isa>.c)
 *
 * Packing lays A out as MR-row panels (a(i,p) at [p*MR + i]) and B as
 * NR-column panels (b(p,j) at [p*NR + j]), zero-padded, so the tile reads both
 * with unit stride whatever the transposes. For the small matrices of MNIST
 * layers packing costs more than it saves: the tile then reads A where it is
 * (any strides), and B too when C has at most 12 rows (unit column stride, not
 * transposed; 1-2 rows go to a wider tile), or packs B one micro-panel at a
 * time as it goes; 1-2 rows against a transposed B are dot products.
 * Threads take chunks of whole tiles of C's columns (or rows), each its own
 * run of them first, then what the others left (see gdfast_parallel);
 * the K loop is never split, so every element of C is computed by the same
 * operations in the same order whatever the chunk and the thread.
 */
#include <stdlib.h>
#include <string.h>
#include "gemm.h"

#ifndef GD_MC
#define GD_MC 144
#endif
/* k is cut into the fewest blocks of at most GD_KC, all of nearly equal
 * size (784 -> 3 x 261..262, not 256+256+256+16): no tiny last block, and
 * one pass over C per block. */
#ifndef GD_KC
#define GD_KC 320
#endif
#define GD_NC 1024
/* Up to this many flops (2mnk) a problem counts as small (see make_job). */
#define GD_SMALL_FLOPS (2.0 * 128 * 1024 * 1024)
/* ... and B (k x n) and C (m x n) up to this many elements each. */
#ifndef GD_SMALL_ELEMS
#define GD_SMALL_ELEMS (256.0 * 1024)
#endif
/* Below this k the tiles are walked along the rows of C. */
#define GD_SHORT_K 32
/* Up to this many rows of C, a transposed B is read by dot products. */
#define GD_DOT_ROWS 2
/* Each extra thread should get at least this many flops. */
#define GD_THREAD_GRAIN ((gd_index)1 << 18)
/* Chunks of C per thread (see gdfast_parallel for who takes which). */
#define GD_CHUNKS_PER_THREAD 4

/* One instruction set's GEMM pieces. */
typedef struct {
    gd_tile_fn tile;
    gd_tile_copy_b_fn tile_copy_b;
    gd_wide_fn wide; /* NULL: the portable tile does all columns itself */
    gd_dot_fn dot;
    gd_pack_bt_fn pack_bt;
    gd_pack_a_fn pack_a;
    /* Columns per tile: one panel, or two on AVX-512, whose 32 registers
     * hold 6 x 32 accumulators (its dot products and packing are AVX2's). */
    int tile_cols;
} gemm_kernels;

static const gemm_kernels scalar_kernels = {
    gdfast_gemm_tile_scalar, gdfast_gemm_tile_copy_b_scalar, NULL, gdfast_gemm_dot_scalar,
    gdfast_gemm_pack_bt_scalar, gdfast_gemm_pack_a_scalar, GD_NR};
#if defined(GDFAST_BUILD_AVX2)
static const gemm_kernels avx2_kernels = {
    gdfast_gemm_tile_avx2, gdfast_gemm_tile_copy_b_avx2, gdfast_gemm_wide_avx2,
    gdfast_gemm_dot_avx2, gdfast_gemm_pack_bt_avx2, gdfast_gemm_pack_a_avx2, GD_NR};
#endif
#if defined(GDFAST_BUILD_AVX512)
static const gemm_kernels avx512_kernels = {
    gdfast_gemm_tile_avx512, gdfast_gemm_tile_copy_b_avx512, gdfast_gemm_wide_avx512,
    gdfast_gemm_dot_avx2, gdfast_gemm_pack_bt_avx2, gdfast_gemm_pack_a_avx2, 2 * GD_NR};
#endif

static const gemm_kernels *gk = &scalar_kernels;

void gdfast_gemm_select(int isa) {
    gk = &scalar_kernels;
#if defined(GDFAST_BUILD_AVX2)
    if (isa == GDFAST_ISA_AVX2) gk = &avx2_kernels;
#endif
#if defined(GDFAST_BUILD_AVX512)
    if (isa == GDFAST_ISA_AVX512) gk = &avx512_kernels;
#endif
}

/* Packing buffers: a fixed pool of slots, each allocated on first use and
 * kept, taken and given back atomically by whichever thread runs a packed
 * block. No call allocates after warm-up, memory is bounded by the number of
 * threads ever packing at once, and threads that come and go leak nothing.
 * If every slot is busy, the call packs into a buffer of its own. */
#define GD_PACK_SLOTS 64
#define GD_PACK_FLOATS ((size_t)GD_MC * GD_KC + (size_t)GD_KC * GD_NC)

#if defined(_MSC_VER)
#include <intrin.h>
typedef volatile long gd_flag;
static int flag_take(gd_flag *f) { return _InterlockedCompareExchange(f, 1, 0) == 0; }
static void flag_give(gd_flag *f) { _InterlockedExchange(f, 0); }
#else
typedef int gd_flag;
static int flag_take(gd_flag *f) {
    int expected = 0;
    return __atomic_compare_exchange_n(f, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static void flag_give(gd_flag *f) { __atomic_store_n(f, 0, __ATOMIC_RELEASE); }
#endif

static gd_flag slot_busy[GD_PACK_SLOTS];
static void *slot_raw[GD_PACK_SLOTS];

static float *align64(void *raw) { return (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63); }

/* A packing buffer and the slot it came from (-1: private, free it after). */
static float *take_pack_buffer(int *slot, void **raw) {
    for (int s = 0; s < GD_PACK_SLOTS; s++) {
        if (!flag_take(&slot_busy[s])) continue;
        if (!slot_raw[s]) slot_raw[s] = malloc(GD_PACK_FLOATS * sizeof(float) + 64);
        if (!slot_raw[s]) {
            flag_give(&slot_busy[s]);
            return NULL;
        }
        *slot = s;
        return align64(slot_raw[s]);
    }
    *slot = -1;
    *raw = malloc(GD_PACK_FLOATS * sizeof(float) + 64);
    return *raw ? align64(*raw) : NULL;
}

static void give_pack_buffer(int slot, void *raw) {
    if (slot >= 0) flag_give(&slot_busy[slot]);
    else free(raw);
}

typedef struct {
    int trans_a, trans_b, pack_a, pack_b;
    gd_index m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
    const gd_epilogue *ep;
} gemm_job;

/* a(i,p) of op(A) as strides over the stored A. */
static void a_strides(const gemm_job *g, gd_index *rs, gd_index *cs) {
    *rs = g->trans_a ? 1 : g->lda;
    *cs = g->trans_a ? g->lda : 1;
}

static void pack_a(const gemm_job *g, gd_index i0, gd_index mc, gd_index p0, gd_index kc, float *dst) {
    gd_index rs, cs;
    a_strides(g, &rs, &cs);
    for (gd_index ir = 0; ir < mc; ir += GD_MR) {
        int mr = (int)(mc - ir < GD_MR ? mc - ir : GD_MR);
        gk->pack_a(kc, g->a + (i0 + ir) * rs + p0 * cs, rs, cs, mr, dst + ir * kc);
    }
}

/* Panel jr/GD_NR of the block starts at dst + jr*kc. */
static void pack_b(const gemm_job *g, gd_index p0, gd_index kc, gd_index j0, gd_index nc, float *dst) {
    if (g->trans_b) {
        for (gd_index jr = 0; jr < nc; jr += GD_NR) {
            int nr = (int)(nc - jr < GD_NR ? nc - jr : GD_NR);
            /* op(B)(p, j) = B[j, p] */
            gk->pack_bt(kc, g->b + (j0 + jr) * g->ldb + p0, g->ldb, nr, dst + jr * kc);
        }
        return;
    }
    /* Row by row across the panels: each row of the block is one contiguous
     * run the prefetchers follow; panel by panel, a big B is read a row per
     * page, every load a miss (128x1024 @ 1024x1024, 1 thread: 5.9 -> 4.4 ms). */
    for (gd_index p = 0; p < kc; p++) {
        const float *s = g->b + (p0 + p) * g->ldb + j0;
        for (gd_index jr = 0; jr < nc; jr += GD_NR) {
            float *d = dst + jr * kc + p * GD_NR;
            if (nc - jr >= GD_NR) memcpy(d, s + jr, GD_NR * sizeof(float));
            else {
                int nr = (int)(nc - jr);
                for (int jj = 0; jj < nr; jj++) d[jj] = s[jr + jj];
                for (int jj = nr; jj < GD_NR; jj++) d[jj] = 0.0f;
            }
        }
    }
}

/* k = 1 without epilogue (the weight gradient at batch 1): C is an outer
 * product, written row by row; the tiles would spend more on their set-up
 * than on the one multiply per element. Same rounding as a tile. */
static void outer_product(const gemm_job *g, gd_index i0, gd_index i1, gd_index j0, gd_index j1) {
    gd_index rsa, csa;
    a_strides(g, &rsa, &csa);
    const float *b = g->b + j0;
    for (gd_index i = i0; i < i1; i++) {
        const float ai = g->a[i * rsa];
        float *c = g->c + i * g->ldc + j0;
        if (g->beta == 0.0f)
            for (gd_index j = 0; j < j1 - j0; j++) c[j] = g->alpha * (ai * b[j]);
        else
            for (gd_index j = 0; j < j1 - j0; j++) c[j] = g->alpha * (ai * b[j]) + g->beta * c[j];
    }
}

/* A few rows of A against a transposed B (dZ @ W.T at batch 1): each element
 * of C is a dot product of two contiguous rows, read where they are. Packing
 * all of B for one row of C costs more than the products. */
static void rows_dot_bt(const gemm_job *g, gd_index i0, gd_index i1, gd_index j0, gd_index j1) {
    gd_index rsa, csa;
    a_strides(g, &rsa, &csa);
    for (gd_index i = i0; i < i1; i++)
        gk->dot(g->k, g->a + i * rsa, csa, g->b + j0 * g->ldb, g->ldb, j1 - j0, g->alpha,
                g->beta, g->c + i * g->ldc + j0, g->ep, i, j0);
}

/* Blocks of k: the fewest of at most GD_KC, of nearly equal size. Every path
 * uses the same blocks, so an element of C gets the same bits on each. */
static gd_index k_blocks(gd_index k) { return k == 0 ? 1 : (k + GD_KC - 1) / GD_KC; }

static void k_block(gd_index k, gd_index nkb, gd_index kb, gd_index *pc, gd_index *kc) {
    gd_index base = k / nkb, extra = k % nkb;
    *pc = kb * base + (kb < extra ? kb : extra);
    *kc = base + (kb < extra);
}

/* Up to 2 rows against an unpacked B: the wide tile where it fits, the tile
 * for the columns left over. */
static void few_rows(const gemm_job *g, gd_index i0, gd_index i1, gd_index j0, gd_index j1) {
    gd_index rsa, csa;
    a_strides(g, &rsa, &csa);
    const int mr = (int)(i1 - i0);
    const float *a = g->a + i0 * rsa;
    float *c = g->c + i0 * g->ldc;
    gd_index nkb = k_blocks(g->k);
    for (gd_index kb = 0; kb < nkb; kb++) {
        gd_index pc, kc;
        k_block(g->k, nkb, kb, &pc, &kc);
        int last = kb == nkb - 1;
        float beta = kb == 0 ? g->beta : 1.0f;
        const float *ap = a + pc * csa, *bp = g->b + pc * g->ldb;
        gd_index j = j0;
        if (gk->wide)
            j += gk->wide(kc, ap, rsa, csa, bp + j0, g->ldb, mr, j1 - j0, g->alpha, beta,
                          c + j0, g->ldc, g->ep, i0, j0, last);
        for (; j < j1; j += gk->tile_cols) {
            int nr = (int)(j1 - j < gk->tile_cols ? j1 - j : gk->tile_cols);
            gk->tile(kc, ap, rsa, csa, bp + j, g->ldb, GD_NR, 0, mr, nr, g->alpha, beta, c + j,
                     g->ldc, g->ep, i0, j, last);
        }
    }
}

/* Rows of the row panel that has `left` rows from its start to the end of
 * the block. An unpacked A splits its last 7..9 rows into two panels of 4..5
 * (32 = 6+6+6+6+4+4, not ...+6+2): a tile of 1..3 rows runs too few FMA
 * chains to hide their latency. A packed A keeps its GD_MR-row panels. Any
 * split gives the same bits: each element is one chain over k either way. */
static gd_index panel_rows(gd_index left, int resplit) {
    if (resplit && left > GD_MR && left < GD_MR + 4) return (left + 1) / 2;
    return left < GD_MR ? left : GD_MR;
}

/* A small problem with B packed (more than 12 rows, or B transposed) and A
 * read in place: B is packed one micro-panel just before the tiles of every
 * row use it, so the panel stays in L1 and no packed block goes through L2
 * (32x256x784, 2 threads: 89 -> 85 us). */
static void panel_by_panel(const gemm_job *g, float *bbuf, gd_index pc, gd_index kc,
                           gd_index i0, gd_index i1, gd_index jc, gd_index nc, float beta,
                           int last) {
    gd_index rsa, csa;
    a_strides(g, &rsa, &csa);
    for (gd_index jr = 0; jr < nc; jr += gk->tile_cols) {
        int nr = (int)(nc - jr < gk->tile_cols ? nc - jr : gk->tile_cols);
        gd_index j = jc + jr;
        int copy = !g->trans_b && nr == gk->tile_cols;
        if (!copy) pack_b(g, pc, kc, j, nr, bbuf);
        for (gd_index i = i0, mr; i < i1; i += mr) {
            mr = panel_rows(i1 - i, 1);
            const float *ap = g->a + i * rsa + pc * csa;
            float *cp = g->c + i * g->ldc + j;
            if (copy && i == i0)
                gk->tile_copy_b(kc, ap, rsa, csa, g->b + pc * g->ldb + j, g->ldb, GD_NR, bbuf,
                                0, (int)mr, nr, g->alpha, beta, cp, g->ldc, g->ep, i, j, last);
            else
                gk->tile(kc, ap, rsa, csa, bbuf, GD_NR, GD_NR * kc, 1, (int)mr, nr, g->alpha,
                         beta, cp, g->ldc, g->ep, i, j, last);
        }
    }
}

/* C[i0:i1, j0:j1] on the calling thread. */
static int gemm_range(const gemm_job *g, gd_index i0, gd_index i1, gd_index j0, gd_index j1) {
    if (g->k == 1 && !g->ep && !g->trans_b) {
        outer_product(g, i0, i1, j0, j1);
        return 0;
    }
    if (g->trans_b && g->m <= GD_DOT_ROWS) {
        rows_dot_bt(g, i0, i1, j0, j1);
        return 0;
    }
    if (!g->pack_b && i1 - i0 <= 2) {
        few_rows(g, i0, i1, j0, j1);
        return 0;
    }
    float *buf = NULL;
    int slot = -1;
    void *raw = NULL;
    if (g->pack_a || g->pack_b) {
        buf = take_pack_buffer(&slot, &raw);
        if (!buf) return -1;
    }
    float *abuf = buf, *bbuf = buf ? buf + (size_t)GD_MC * GD_KC : NULL;
    gd_index rsa, csa;
    a_strides(g, &rsa, &csa);
    gd_index nkb = k_blocks(g->k);
    /* Row blocks of nearly equal size, in whole panels: 128 rows are one
     * block, not 120 + 8, which would load every B micro-panel into L1 twice
     * for a 6- and a 2-row tile. */
    gd_index nmb = (i1 - i0 + GD_MC - 1) / GD_MC;
    gd_index mcb = ((i1 - i0 + nmb - 1) / nmb + GD_MR - 1) / GD_MR * GD_MR;
    for (gd_index jc = j0; jc < j1; jc += GD_NC) {
        gd_index nc = j1 - jc < GD_NC ? j1 - jc : GD_NC;
        for (gd_index kb = 0; kb < nkb; kb++) {
            gd_index pc, kc;
            k_block(g->k, nkb, kb, &pc, &kc);
            int last = kb == nkb - 1;
            float beta = kb == 0 ? g->beta : 1.0f;
            if (g->pack_b && !g->pack_a && kc >= GD_SHORT_K) {
                panel_by_panel(g, bbuf, pc, kc, i0, i1, jc, nc, beta, last);
                continue;
            }
            if (g->pack_b) pack_b(g, pc, kc, jc, nc, bbuf);
            for (gd_index ic = i0, mc; ic < i1; ic += mc) {
                mc = i1 - ic < mcb ? i1 - ic : mcb;
                if (g->pack_a) pack_a(g, ic, mc, pc, kc, abuf);
                /* Short k: C traffic dominates, so walk C row panel by row
                 * panel (sequential stores); otherwise keep each B
                 * micro-panel in L1 across the row panels (BLIS order). */
                int rows_outer = kc < GD_SHORT_K;
                gd_index outer_n = rows_outer ? mc : nc, inner_n = rows_outer ? nc : mc;
                for (gd_index o = 0, os; o < outer_n; o += os) {
                    os = rows_outer ? panel_rows(mc - o, !g->pack_a) : gk->tile_cols;
                    for (gd_index q = 0, qs; q < inner_n; q += qs) {
                        qs = rows_outer ? gk->tile_cols : panel_rows(mc - q, !g->pack_a);
                        gd_index ir = rows_outer ? o : q, jr = rows_outer ? q : o;
                        int mr = (int)(rows_outer ? os : qs);
                        int nr = (int)(nc - jr < gk->tile_cols ? nc - jr : gk->tile_cols);
                        const float *bp = g->pack_b ? bbuf + jr * kc : g->b + pc * g->ldb + jc + jr;
                        gd_index rsb = g->pack_b ? GD_NR : g->ldb;
                        gd_index b_hi = g->pack_b ? GD_NR * kc : GD_NR;
                        gd_index i = ic + ir, j = jc + jr;
                        const float *ap = g->pack_a ? abuf + ir * kc : g->a + i * rsa + pc * csa;
                        gk->tile(kc, ap, g->pack_a ? 1 : rsa, g->pack_a ? GD_MR : csa, bp, rsb,
                                 b_hi, g->pack_b, mr, nr, g->alpha, beta, g->c + i * g->ldc + j,
                                 g->ldc, g->ep, i, j, last);
                    }
                }
            }
        }
    }
    if (buf) give_pack_buffer(slot, raw);
    return 0;
}

/* A pass of the threads: C cut into `chunks` ranges of whole tiles along
 * its columns (or rows). */
typedef struct {
    const gemm_job *g;
    int by_cols;
    gd_index tiles, chunks;
} gemm_pass;

static int gemm_chunks(void *ctx, gd_index c0, gd_index c1) {
    const gemm_pass *x = ctx;
    const gemm_job *g = x->g;
    gd_index unit = x->by_cols ? gk->tile_cols : GD_MR, total = x->by_cols ? g->n : g->m;
    gd_index lo = x->tiles * c0 / x->chunks * unit, hi = x->tiles * c1 / x->chunks * unit;
    if (hi > total) hi = total;
    if (lo >= hi) return 0;
    return x->by_cols ? gemm_range(g, 0, g->m, lo, hi) : gemm_range(g, lo, hi, 0, g->n);
}

static gemm_job make_job(int trans_a, int trans_b, gd_index m, gd_index n, gd_index k,
                         float alpha, const float *a, gd_index lda, const float *b,
                         gd_index ldb, float beta, float *c, gd_index ldc,
                         const gd_epilogue *ep) {
    gemm_job g = {trans_a, trans_b, 0, 0, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c, ep};
    /* Small also means B and C fit in L2: a bigger B read in place by the
     * first tile of each panel has a row per page, every load a miss the
     * prefetchers do not cover, and a bigger A read in place at a row stride
     * of 4 KB (a 1024-wide layer) keeps its rows in one L1 set
     * (128x1024 @ 1024x1024, 1 thread: 33 -> 48 GFLOP/s packed). */
    int small = 2.0 * (double)m * (double)n * (double)k <= GD_SMALL_FLOPS &&
                (double)k * (double)n <= GD_SMALL_ELEMS && (double)m * (double)n <= GD_SMALL_ELEMS;
    /* B is packed unless the problem is small and has few rows: read in place,
     * rows of B at power-of-two strides (the MLP's layer widths) collide in
     * the same L1 sets. A is read in place for small problems. */
    g.pack_b = trans_b || !small || m > 2 * GD_MR;
    g.pack_a = !small;
    return g;
}

int gdfast_sgemm(int trans_a, int trans_b, gd_index m, gd_index n, gd_index k,
                 float alpha, const float *a, gd_index lda, const float *b, gd_index ldb,
                 float beta, float *c, gd_index ldc, const gd_epilogue *ep) {
    if (m <= 0 || n <= 0) return 0;
    gemm_job g = make_job(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep);
    double flops = 2.0 * (double)m * (double)n * (double)k;

    /* Column sums add rows in order, so their columns must stay on one thread;
     * the rows' sums of squares add columns in order, so their rows too. */
    int by_cols = ep && ep->addsq ? 0 : (ep && ep->colsum) || n >= m;
    gd_index tiles = by_cols ? (n + gk->tile_cols - 1) / gk->tile_cols : (m + GD_MR - 1) / GD_MR;
    gd_index grain = GD_THREAD_GRAIN;
    int nt = gdfast_threads_for((gd_index)(flops / (double)grain) + 1, 1);
    if (nt > tiles) nt = (int)tiles;
    /* 1-2 rows against a B small enough to stay in L2 (a batch-1 forward)
     * run on one thread: the product is a stream over B, which a second
     * core speeds up little, and in a training step B is the weights that
     * the optimizer's pass updates split by rows: read split by columns, half
     * of them moved between the cores' caches twice a step (batch-1 Adam on
     * 784-256-128-10, Zen 4 VM, the team always on: 108 us a step on one
     * thread, 320-410 us on two, 83 us with this product on one). */
    if (g.m <= 2 && !g.pack_b) nt = 1;
    /* Packed blocks are packed again for every chunk: one per thread then. */
    gd_index per_thread = g.pack_a ? 1 : GD_CHUNKS_PER_THREAD;
    gemm_pass x = {&g, by_cols, tiles, nt * per_thread < tiles ? nt * per_thread : tiles};
    return gdfast_parallel(nt, x.chunks, gemm_chunks, &x);
}
