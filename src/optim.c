/* The optimizer driver: splits one step over all segments into chunks for
 * the threads and calls the active instruction set's kernels on each piece.
 *
 * Determinism: updates are elementwise and ranges start at multiples of
 * GD_SPLIT floats, so any thread count gives the same bits. The gradient norm
 * sums fixed blocks of GD_NORM_BLOCK floats (each in a fixed order, in
 * double) and then the block sums in index order, whatever the threads. */
#include "optim.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* Floats per thread below which a pass stays on one thread. Measured on the
 * 2-core Zen3: an OpenMP fork/join costs ~0.5 us when the cores are idle; an
 * in-cache SGD, Lion or Lookahead update ~0.1 ns/float; the kernels with a sqrt and
 * a division per float (RMSprop, Adam, Adagrad) ~0.32 ns/float, bound by the
 * divider. A second thread pays off from ~10k light or ~3k heavy floats; the
 * grains leave a margin (on busy, shared cores waking a thread costs more).
 * AVX-512 halves the heavy kernels' time per float (Zen 5: Adam 8192 floats
 * 1.35 us on one thread, 1.49 on two; 16384: 2.41 vs 2.08), so their grain
 * doubles there. */
#define GD_GRAIN_LIGHT 16384
#define GD_GRAIN_HEAVY 4096
#define GD_GRAIN_STREAM 65536

gd_optim_kernels gd_optim_k;

void gdfast_optim_select(int isa) {
#if defined(GDFAST_BUILD_AVX512) && (defined(__x86_64__) || defined(_M_X64))
    if (isa == GDFAST_ISA_AVX512) {
        gdfast_optim_kernels_avx512(&gd_optim_k);
        return;
    }
#endif
#if defined(GDFAST_BUILD_AVX2) && (defined(__x86_64__) || defined(_M_X64))
    if (isa == GDFAST_ISA_AVX2) {
        gdfast_optim_kernels_avx2(&gd_optim_k);
        return;
    }
#endif
    (void)isa;
    gdfast_optim_kernels_scalar(&gd_optim_k);
}

enum { OP_UPDATE, OP_SCALE, OP_CLAMP };

/* Part t of nt of [0, total): contiguous, starting at a multiple of
 * GD_SPLIT. Built with or without OpenMP: the tests check its arithmetic. */
void gdfast_optim_split(gd_index total, int nt, int t, gd_index *lo, gd_index *hi) {
    gd_index chunk = (total + nt - 1) / nt;
    chunk = (chunk + GD_SPLIT - 1) / GD_SPLIT * GD_SPLIT;
    gd_index a = (gd_index)t * chunk;
    *lo = a < total ? a : total;
    *hi = a + chunk < total ? a + chunk : total;
}

/* Index of the segment holding global position pos (segments sorted by start). */
static int find_segment(const gd_plan *pl, gd_index pos) {
    int lo = 0, hi = pl->nseg - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (pl->seg[mid].start <= pos) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* The next AGC tensor of segment si, from index k on, that is active and
 * ends after offset pos (nagc if none). */
static int next_agc(const gd_plan *pl, int k, int si, gd_index pos) {
    for (; k < pl->nagc; k++) {
        const gd_agc *a = &pl->agc[k];
        if (a->seg > si) return pl->nagc;
        if (a->seg == si && a->clip > 0.0 && a->off + a->n > pos) return k;
    }
    return pl->nagc;
}

/* The update of floats [i, i + len) of segment s, scaled by AGC tensor a
 * (NULL: not scaled), with the EMA e (NULL: none): the kernels multiply each
 * gradient by its unit's scale as they read it (a piece of one row at a
 * time), so the scaled gradients are never stored, and average the weights
 * they have just written. */
static void update_piece(const gd_segment *s, const gd_hyper *h, const gd_agc *a, float *e,
                         gd_index i, gd_index len) {
    float *s0 = s->s[0] ? s->s[0] + i : NULL, *s1 = s->s[1] ? s->s[1] + i : NULL;
    float *s2 = s->s[2] ? s->s[2] + i : NULL;
    gd_update_aids_fn fused = gd_optim_k.update_aids[h->kind];
    if (!fused) {   /* Lookahead's sync reads no gradient */
        gd_optim_k.update[h->kind](h, s->p + i, s->g ? s->g + i : NULL, s0, s1, s2, len);
        if (e) gd_optim_k.ema(s->p + i, e, h->ema_m, h->ema_m1m, len);
    } else if (!a) {
        fused(h, s->p + i, s->g + i, NULL, s0, s1, s2, e, len);
    } else if (a->units == 1) {
        gd_optim_k.update_outer[h->kind](h, s->p + i, a->scale, s->g + i, s0, s1, s2, 1, len);
        if (e) gd_optim_k.ema(s->p + i, e, h->ema_m, h->ema_m1m, len);
    } else {
        for (gd_index o = 0; o < len;) {
            gd_index col = (i + o - a->off) % a->units;
            gd_index piece = a->units - col < len - o ? a->units - col : len - o;
            fused(h, s->p + i + o, s->g + i + o, a->scale + col, s0 ? s0 + o : NULL,
                  s1 ? s1 + o : NULL, s2 ? s2 + o : NULL, e ? e + o : NULL, piece);
            o += piece;
        }
    }
}

/* The update of segment si over [from, to), AGC's tensors scaled, the EMA
 * in the same pass. */
static void update_chunked(const gd_plan *pl, int si, gd_index from, gd_index to) {
    const gd_segment *s = &pl->seg[si];
    const gd_hyper *h = &pl->hyper[s->group];
    const int ema = pl->ema_on && h->ema && s->ema;
    int k = pl->agc_on ? next_agc(pl, 0, si, from) : pl->nagc;
    gd_index i = from;
    while (i < to) {
        if (k < pl->nagc && pl->agc[k].off + pl->agc[k].n <= i) k = next_agc(pl, k, si, i);
        const gd_agc *a = k < pl->nagc ? &pl->agc[k] : NULL;
        int scaled = a && a->off <= i;
        gd_index end = !a ? to : scaled ? a->off + a->n : a->off;
        end = end < to ? end : to;
        update_piece(s, h, scaled ? a : NULL, ema ? s->ema + i : NULL, i, end - i);
        i = end;
    }
}

static void apply_range(const gd_plan *pl, gd_index lo, gd_index hi, int op, float a, float b) {
    if (lo >= hi) return;
    for (int k = find_segment(pl, lo); k < pl->nseg && pl->seg[k].start < hi; k++) {
        const gd_segment *s = &pl->seg[k];
        gd_index from = lo > s->start ? lo - s->start : 0;
        gd_index to = hi < s->start + s->n ? hi - s->start : s->n;
        if (from >= to) continue;
        gd_index len = to - from;
        switch (op) {
        case OP_UPDATE: {
            if (pl->agc_on || pl->ema_on) {
                update_chunked(pl, k, from, to);
                break;
            }
            const gd_hyper *h = &pl->hyper[s->group];
            gd_optim_k.update[h->kind](h, s->p + from, s->g ? s->g + from : NULL,
                                       s->s[0] ? s->s[0] + from : NULL,
                                       s->s[1] ? s->s[1] + from : NULL,
                                       s->s[2] ? s->s[2] + from : NULL, len);
            break;
        }
        case OP_SCALE: gd_optim_k.scale(s->p + from, a, len); break;
        default: gd_optim_k.clamp(s->p + from, a, b, len); break;
        }
    }
}

/* Chunks per thread of a pass: a thread held up on a busy core leaves its
 * later chunks to the others (see gdfast_parallel). Elementwise passes give
 * the same bits for any cut, so the chunks may follow the thread count. */
#define GD_CHUNKS_PER_THREAD 4

gd_index gdfast_optim_chunks(gd_index total, int nt, gd_index grain) {
    gd_index per = total / ((gd_index)nt * grain);
    per = per < 1 ? 1 : per > GD_CHUNKS_PER_THREAD ? GD_CHUNKS_PER_THREAD : per;
    return nt * per;
}

typedef struct {
    gd_plan *pl;
    int op, chunks;
    float a, b;
} apply_pass;

/* Chunks [c0, c1) of the pass: gdfast_optim_split's parts, at multiples of GD_SPLIT. */
static int apply_chunks(void *ctx, gd_index c0, gd_index c1) {
    apply_pass *x = ctx;
    gd_index lo, hi, unused;
    gdfast_optim_split(x->pl->total, x->chunks, (int)c0, &lo, &unused);
    gdfast_optim_split(x->pl->total, x->chunks, (int)c1 - 1, &unused, &hi);
    apply_range(x->pl, lo, hi, x->op, x->a, x->b);
    return 0;
}

static void apply(gd_plan *pl, int op, float a, float b, gd_index grain) {
    int nt = gdfast_threads_for(pl->total, grain);
    apply_pass x = {pl, op, (int)gdfast_optim_chunks(pl->total, nt, grain), a, b};
    gdfast_parallel(nt, x.chunks, apply_chunks, &x);
}

/* Sum of squares of the gradients in block b. */
static double block_sumsq(const gd_plan *pl, gd_index b) {
    gd_index lo = b * GD_NORM_BLOCK;
    gd_index hi = lo + GD_NORM_BLOCK < pl->total ? lo + GD_NORM_BLOCK : pl->total;
    double sum = 0.0;
    for (int k = find_segment(pl, lo); k < pl->nseg && pl->seg[k].start < hi; k++) {
        const gd_segment *s = &pl->seg[k];
        gd_index from = lo > s->start ? lo - s->start : 0;
        gd_index to = hi < s->start + s->n ? hi - s->start : s->n;
        if (from < to) sum += gd_optim_k.sumsq(s->g + from, to - from);
    }
    return sum;
}

typedef struct {
    gd_plan *pl;
    gd_index blocks, chunks;
} norm_pass;

static int norm_chunks(void *ctx, gd_index c0, gd_index c1) {
    norm_pass *x = ctx;
    for (gd_index b = x->blocks * c0 / x->chunks; b < x->blocks * c1 / x->chunks; b++)
        x->pl->block_sums[b] = block_sumsq(x->pl, b);
    return 0;
}

double gdfast_optim_grad_norm(gd_plan *pl) {
    gd_index nb = (pl->total + GD_NORM_BLOCK - 1) / GD_NORM_BLOCK;
    if (nb == 0) return 0.0;
    int nt = gdfast_threads_for(pl->total, GD_GRAIN_STREAM);
    gd_index chunks = gdfast_optim_chunks(pl->total, nt, GD_GRAIN_STREAM);
    norm_pass x = {pl, nb, chunks < nb ? chunks : nb};
    gdfast_parallel(nt, x.chunks, norm_chunks, &x);
    double total = 0.0;
    for (gd_index b = 0; b < nb; b++) total += pl->block_sums[b];
    return sqrt(total);
}

void gdfast_clip_split(double coef, float *hi, float *lo) {
    if (!(coef > 0.0 && coef < FLT_MIN)) {
        *hi = (float)coef;
        *lo = 1.0f;
        return;
    }
    /* coef = m * 2^e with e <= -126: half the exponent in each factor keeps
     * g * hi normal whenever the clipped gradient is, and * lo exact. */
    int e;
    double m = frexp(coef, &e);
    *hi = (float)ldexp(m, e - e / 2);
    *lo = (float)ldexp(1.0, e / 2);
}

/* The groups' gradient factors: the clip coefficient, negated to maximize. */
static void set_gscale(gd_plan *pl, double clip) {
    float hi, lo;
    gdfast_clip_split(clip, &hi, &lo);
    for (int k = 0; k < pl->ngroups; k++) {
        gd_hyper *h = &pl->hyper[k];
        h->gscale = (h->flags & GD_F_MAXIMIZE) ? -hi : hi;
        h->gscale2 = lo;
    }
}

gd_index gdfast_optim_grain(const gd_plan *pl) {
    int kind = pl->ngroups > 0 ? pl->hyper[0].kind : GD_SGD;
    if (kind == GD_SGD || kind == GD_LOOKAHEAD || kind == GD_LION) return GD_GRAIN_LIGHT;
    return gdfast_isa_active() == GDFAST_ISA_AVX512 ? 2 * GD_GRAIN_HEAVY : GD_GRAIN_HEAVY;
}

/* PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when below 1;
 * a NaN norm gives a NaN scale, which propagates. 1 without clipping. */
static double clip_factor(const gd_plan *pl) {
    if (!(pl->max_norm > 0.0)) return 1.0;
    double coef = pl->max_norm / (pl->norm + 1e-6);
    return coef >= 1.0 ? 1.0 : coef;
}

/* The AGC norms in tiles: a vector tensor is one tile, a matrix one tile per
 * block of GD_AGC_ROWS rows and GD_AGC_COLS columns, whose column sums go to
 * the block's partial sums; the blocks are then added in order. The sums are
 * the same whichever thread takes a tile. A tile reads runs of 4 KB (whole
 * rows of a narrower matrix): threads that split every row between them
 * would each fetch the other's half too (the prefetchers run ahead). */
#define GD_AGC_COLS 1024

static gd_index agc_row_blocks(const gd_agc *a) {
    return (a->n / a->units + GD_AGC_ROWS - 1) / GD_AGC_ROWS;
}

static gd_index agc_col_chunks(const gd_agc *a) {
    return (a->units + GD_AGC_COLS - 1) / GD_AGC_COLS;
}

static gd_index agc_tiles(const gd_agc *a) {
    if (!(a->clip > 0.0)) return 0;
    return a->units == 1 ? 1 : agc_row_blocks(a) * agc_col_chunks(a);
}

static void agc_norms_tile(const gd_plan *pl, gd_index t) {
    int k = 0;
    for (; t >= agc_tiles(&pl->agc[k]); k++) t -= agc_tiles(&pl->agc[k]);
    const gd_agc *a = &pl->agc[k];
    const gd_segment *s = &pl->seg[a->seg];
    const float *p = s->p + a->off, *g = s->g + a->off;
    if (a->units == 1) {
        a->acc[0] = (float)gd_optim_k.sumsq(p, a->n);
        a->acc[1] = (float)gd_optim_k.sumsq(g, a->n);
        return;
    }
    gd_index u = a->units, rows = a->n / u, b = t / agc_col_chunks(a);
    gd_index lo = t % agc_col_chunks(a) * GD_AGC_COLS, hi = lo + GD_AGC_COLS < u ? lo + GD_AGC_COLS : u;
    gd_index r0 = b * GD_AGC_ROWS, r1 = r0 + GD_AGC_ROWS < rows ? r0 + GD_AGC_ROWS : rows;
    float *sp = a->acc + 2 * u * (1 + b), *sg = sp + u;
    memset(sp + lo, 0, (size_t)(hi - lo) * sizeof(float));
    memset(sg + lo, 0, (size_t)(hi - lo) * sizeof(float));
    gd_optim_k.colsumsq2(p + r0 * u + lo, g + r0 * u + lo, r1 - r0, u, hi - lo, sp + lo, sg + lo);
}

static int agc_norms_tiles(void *ctx, gd_index t0, gd_index t1) {
    for (gd_index t = t0; t < t1; t++) agc_norms_tile(ctx, t);
    return 0;
}

/* A matrix's sums: its row blocks' partial sums added in block order. */
static void agc_add_blocks(const gd_agc *a) {
    gd_index u = a->units, nb = agc_row_blocks(a);
    float *sp = a->acc, *sg = a->acc + u;
    memcpy(sp, a->acc + 2 * u, (size_t)(2 * u) * sizeof(float));
    for (gd_index b = 1; b < nb; b++) {
        const float *bp = a->acc + 2 * u * (1 + b), *bg = bp + u;
        for (gd_index j = 0; j < u; j++) {
            sp[j] += bp[j];
            sg[j] += bg[j];
        }
    }
}

/* max that propagates a NaN in a (a norm), like numpy.maximum. */
static double max_nan(double a, double b) { return (a > b || a != a) ? a : b; }

void gdfast_optim_agc_scales(gd_plan *pl) {
    gd_index work = 0;
    for (int k = 0; k < pl->nagc; k++)
        if (pl->agc[k].clip > 0.0) work += pl->agc[k].n;
    gd_index tiles = 0;
    for (int k = 0; k < pl->nagc; k++) tiles += agc_tiles(&pl->agc[k]);
    gdfast_parallel(gdfast_threads_for(work, GD_GRAIN_STREAM), tiles, agc_norms_tiles, pl);
    for (int k = 0; k < pl->nagc; k++)
        if (pl->agc[k].clip > 0.0 && pl->agc[k].units > 1) agc_add_blocks(&pl->agc[k]);
    /* optax/timm: keep g_j when ||g_j|| < clip * max(||p_j||, eps), else scale
     * it to that norm; a NaN norm gives a NaN scale, which propagates */
    for (int k = 0; k < pl->nagc; k++) {
        const gd_agc *a = &pl->agc[k];
        if (!(a->clip > 0.0)) continue;
        for (gd_index j = 0; j < a->units; j++) {
            double pn = sqrt((double)a->acc[j]), gn = sqrt((double)a->acc[a->units + j]);
            double mx = max_nan(pn, a->eps) * a->clip;
            a->scale[j] = gn < mx ? 1.0f : (float)(mx / max_nan(gn, 1e-6));
        }
    }
}

void gdfast_optim_agc_clip(gd_plan *pl) {
    gdfast_optim_agc_scales(pl);
    for (int k = 0; k < pl->nagc; k++) {
        const gd_agc *a = &pl->agc[k];
        if (!(a->clip > 0.0)) continue;
        float *g = (float *)pl->seg[a->seg].g + a->off;
        for (gd_index r = 0; r < a->n / a->units; r++, g += a->units)
            for (gd_index j = 0; j < a->units; j++) g[j] = g[j] * a->scale[j];
    }
}

int gdfast_optim_run(gd_plan *pl) {
    if (pl->max_norm > 0.0) pl->norm = gdfast_optim_grad_norm(pl);
    if (pl->agc_on) gdfast_optim_agc_scales(pl);
    set_gscale(pl, clip_factor(pl));
    apply(pl, OP_UPDATE, 0.0f, 0.0f, gdfast_optim_grain(pl));
    return 0;
}

void gdfast_optim_begin_pieces(gd_plan *pl) { set_gscale(pl, clip_factor(pl)); }

int gdfast_optim_outer_ok(const gd_plan *pl) {
    for (int k = 0; k < pl->ngroups; k++)
        if (!gd_optim_k.update_outer[pl->hyper[k].kind]) return 0;
    return 1;
}

void gdfast_optim_update_outer(const gd_plan *pl, const float *base, gd_index lo,
                               gd_index rows, gd_index cols, const float *ga, const float *b) {
    gd_index hi = lo + rows * cols;
    for (int k = 0; k < pl->nseg; k++) {
        const gd_segment *s = &pl->seg[k];
        gd_index off = s->p - base, from = lo - off;
        if (from < 0 || off + s->n < hi) continue;
        const gd_hyper *h = &pl->hyper[s->group];
        gd_optim_k.update_outer[h->kind](h, s->p + from, ga, b, s->s[0] ? s->s[0] + from : NULL,
                                         s->s[1] ? s->s[1] + from : NULL,
                                         s->s[2] ? s->s[2] + from : NULL, rows, cols);
        if (pl->ema_on && h->ema && s->ema)
            gd_optim_k.ema(s->p + from, s->ema + from, h->ema_m, h->ema_m1m, rows * cols);
        return;
    }
}

void gdfast_optim_update_piece(const gd_plan *pl, const float *base, gd_index lo, gd_index hi) {
    for (int k = 0; k < pl->nseg; k++) {
        const gd_segment *s = &pl->seg[k];
        gd_index off = s->p - base;
        gd_index from = lo > off ? lo - off : 0;
        gd_index to = hi < off + s->n ? hi - off : s->n;
        if (from >= to) continue;
        const gd_hyper *h = &pl->hyper[s->group];
        update_piece(s, h, NULL, pl->ema_on && h->ema && s->ema ? s->ema + from : NULL, from,
                     to - from);
    }
}

void gdfast_optim_update_grad(const gd_plan *pl, const float *base, gd_index lo, gd_index hi,
                              const float *g) {
    for (int k = 0; k < pl->nseg; k++) {
        const gd_segment *s = &pl->seg[k];
        gd_index off = s->p - base, from = lo - off;
        if (from < 0 || off + s->n < hi) continue;
        const gd_hyper *h = &pl->hyper[s->group];
        float *s0 = s->s[0] ? s->s[0] + from : NULL, *s1 = s->s[1] ? s->s[1] + from : NULL;
        float *s2 = s->s[2] ? s->s[2] + from : NULL;
        float *e = pl->ema_on && h->ema && s->ema ? s->ema + from : NULL;
        gd_update_aids_fn fused = gd_optim_k.update_aids[h->kind];
        if (fused) {
            fused(h, s->p + from, g, NULL, s0, s1, s2, e, hi - lo);
        } else {
            gd_optim_k.update[h->kind](h, s->p + from, g, s0, s1, s2, hi - lo);
            if (e) gd_optim_k.ema(s->p + from, e, h->ema_m, h->ema_m1m, hi - lo);
        }
        return;
    }
}

void gdfast_optim_scale(gd_plan *pl, float c) { apply(pl, OP_SCALE, c, 0.0f, GD_GRAIN_STREAM); }

void gdfast_optim_clamp(gd_plan *pl, float lo, float hi) {
    apply(pl, OP_CLAMP, lo, hi, GD_GRAIN_STREAM);
}
