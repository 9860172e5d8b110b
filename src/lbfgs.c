/* The L-BFGS driver: each pass runs over whole blocks of GD_LB_BLOCK floats
 * (gdfast_parallel: any thread may take any block, and the team guard
 * keeps a busy machine's passes on one thread); reductions keep one partial
 * per block and add the partials in block order, so results do not depend on
 * the thread count.
 * The kernel table follows the active SIMD path (gdfast_isa_active), like
 * every other kernel family. */
#include "lbfgs.h"

#include <math.h>
#include <stdlib.h>

/* Floats per thread below which a pass stays on one thread: these passes
 * stream 2-5 floats per element with little arithmetic, like the optimizer
 * driver's GD_GRAIN_STREAM. */
#define GD_LB_GRAIN 65536

static const gd_lbfgs_kernels *kernels(void) {
    switch (gdfast_isa_active()) {
#if defined(GDFAST_BUILD_AVX512) && (defined(__x86_64__) || defined(_M_X64))
    case GDFAST_ISA_AVX512: return &gd_lbfgs_kernels_avx512;
#endif
#if defined(GDFAST_BUILD_AVX2) && (defined(__x86_64__) || defined(_M_X64))
    case GDFAST_ISA_AVX2: return &gd_lbfgs_kernels_avx2;
#endif
    default: return &gd_lbfgs_kernels_scalar;
    }
}

static gd_index nblocks(gd_index n) { return (n + GD_LB_BLOCK - 1) / GD_LB_BLOCK; }

enum { LB_DOT, LB_ABSSUM, LB_MAXABS, LB_XPAY, LB_PAIR };

typedef struct {
    int op;
    float *x, *y;
    const float *a, *b, *c;
    float t;
} lb_job;

/* Block b of a job; its partial sums (up to 3) go to part[3 b + j]. */
static void run_block(const gd_lbfgs_kernels *k, const lb_job *j, gd_index n, gd_index b,
                      double *part) {
    gd_index lo = b * GD_LB_BLOCK, len = n - lo < GD_LB_BLOCK ? n - lo : GD_LB_BLOCK;
    double *out = part + 3 * b;
    switch (j->op) {
    case LB_DOT: out[0] = k->dot(j->a + lo, j->b + lo, len); break;
    case LB_ABSSUM: out[0] = k->abssum(j->a + lo, len); break;
    case LB_MAXABS: out[0] = k->maxabs(j->a + lo, len); break;
    case LB_XPAY: k->xpay(j->x + lo, j->a + lo, j->t, j->b + lo, len); break;
    default: k->pair(j->x + lo, j->y + lo, j->a + lo, j->b + lo, j->c + lo, j->t, len, out); break;
    }
}

typedef struct {
    const gd_lbfgs_kernels *k;
    const lb_job *j;
    gd_index n;
    double *part;
} lb_pass;

static int run_blocks(void *ctx, gd_index b0, gd_index b1) {
    const lb_pass *x = ctx;
    for (gd_index b = b0; b < b1; b++) run_block(x->k, x->j, x->n, b, x->part);
    return 0;
}

/* Runs the job over all blocks; sums[0..2] get the block partials added in
 * order (for LB_MAXABS, their NaN-propagating maximum). */
static int run(const lb_job *j, gd_index n, double sums[3]) {
    const gd_lbfgs_kernels *k = kernels();
    gd_index nb = nblocks(n);
    double *part = malloc((size_t)(nb > 0 ? nb : 1) * 3 * sizeof(double));
    if (!part) return -1;
    lb_pass x = {k, j, n, part};
    gdfast_parallel(gdfast_threads_for(n, GD_LB_GRAIN), nb, run_blocks, &x);
    sums[0] = sums[1] = sums[2] = 0.0;
    for (gd_index b = 0; b < nb; b++) {
        if (j->op == LB_MAXABS) {
            double v = part[3 * b];
            sums[0] = (v > sums[0] || v != v) ? v : sums[0];
            if (v != v) break;
        } else {
            for (int i = 0; i < 3; i++) sums[i] += part[3 * b + i];
        }
    }
    free(part);
    return 0;
}

int gdfast_lbfgs_dot(const float *a, const float *b, gd_index n, double *out) {
    lb_job j = {LB_DOT, NULL, NULL, a, b, NULL, 0.0f};
    double s[3];
    if (run(&j, n, s)) return -1;
    *out = s[0];
    return 0;
}

int gdfast_lbfgs_abssum(const float *x, gd_index n, double *out) {
    lb_job j = {LB_ABSSUM, NULL, NULL, x, NULL, NULL, 0.0f};
    double s[3];
    if (run(&j, n, s)) return -1;
    *out = s[0];
    return 0;
}

int gdfast_lbfgs_maxabs(const float *x, gd_index n, double *out) {
    lb_job j = {LB_MAXABS, NULL, NULL, x, NULL, NULL, 0.0f};
    double s[3];
    if (run(&j, n, s)) return -1;
    *out = s[0];
    return 0;
}

int gdfast_lbfgs_xpay(float *out, const float *x0, double t, const float *d, gd_index n) {
    lb_job j = {LB_XPAY, out, NULL, x0, d, NULL, (float)t};
    double s[3];
    return run(&j, n, s);
}

int gdfast_lbfgs_pair(float *y, float *s, const float *g, const float *gp, const float *d,
                      double t, gd_index n, double out[3]) {
    lb_job j = {LB_PAIR, y, s, g, gp, d, (float)t};
    return run(&j, n, out);
}

static gd_index block_len(gd_index n, gd_index b) {
    gd_index lo = b * GD_LB_BLOCK;
    return n - lo < GD_LB_BLOCK ? n - lo : GD_LB_BLOCK;
}

/* One phase of the two-loop recursion over the blocks of d:
 * d = c * src (scale) or d += c * src (axpy), and the partial dot of the
 * result with z (when z is given) per block. */
typedef struct {
    const gd_lbfgs_kernels *k;
    float *d;
    const float *src, *z;
    float c;
    int axpy;
    gd_index n;
    double *part;
} lb_phase;

static int phase_blocks(void *ctx, gd_index b0, gd_index b1) {
    const lb_phase *x = ctx;
    for (gd_index b = b0, lo = b0 * GD_LB_BLOCK; b < b1; b++, lo += GD_LB_BLOCK) {
        const float *z = x->z ? x->z + lo : NULL;
        x->part[b] = x->axpy ? x->k->axpy_dot(x->d + lo, x->c, x->src + lo, z, block_len(x->n, b))
                             : x->k->scale_dot(x->d + lo, x->src + lo, x->c, z, block_len(x->n, b));
    }
    return 0;
}

/* Runs a phase on every block; the dot with z, partials added in block order. */
static double phase(lb_phase *x, int nt, gd_index nb, int axpy, const float *src, float c,
                    const float *z) {
    x->axpy = axpy, x->src = src, x->c = c, x->z = z;
    gdfast_parallel(nt, nb, phase_blocks, x);
    double s = 0.0;
    if (z)
        for (gd_index b = 0; b < nb; b++) s += x->part[b];
    return s;
}

/* Every phase is one parallel pass (blocks spread over the team, see
 * gdfast_parallel) followed by the ordered sum on the caller's thread. */
int gdfast_lbfgs_two_loop(const float *g, float *d, gd_index n, const float *const *S,
                          const float *const *Y, const double *rho, int k, double h) {
    gd_index nb = nblocks(n);
    double *part = malloc((size_t)((nb > 0 ? nb : 1) + (k > 0 ? k : 1)) * sizeof(double));
    if (!part) return -1;
    double *al = part + (nb > 0 ? nb : 1);
    int nt = gdfast_threads_for(n, GD_LB_GRAIN);
    lb_phase x = {kernels(), d, NULL, NULL, 0.0f, 0, n, part};
    /* q = -g, and s_newest . q */
    double dot = phase(&x, nt, nb, 0, g, -1.0f, k ? S[k - 1] : NULL);
    for (int i = k - 1; i >= 0; i--) {
        al[i] = rho[i] * dot;
        dot = phase(&x, nt, nb, 1, Y[i], (float)-al[i], i > 0 ? S[i - 1] : NULL);
    }
    /* r = h q, and y_oldest . r */
    dot = phase(&x, nt, nb, 0, d, (float)h, k ? Y[0] : NULL);
    for (int i = 0; i < k; i++) {
        double be = rho[i] * dot;
        dot = phase(&x, nt, nb, 1, S[i], (float)(al[i] - be), i + 1 < k ? Y[i + 1] : NULL);
    }
    free(part);
    return 0;
}
