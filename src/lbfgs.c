/* The L-BFGS driver: splits each pass into whole blocks of GD_LB_BLOCK
 * floats per thread; reductions keep one partial per block and add the
 * partials in block order, so results do not depend on the thread count.
 * The kernel table follows the active SIMD path (gdfast_isa_active), like
 * every other kernel family. */
#include "lbfgs.h"

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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

/* Runs the job over all blocks; sums[0..2] get the block partials added in
 * order (for LB_MAXABS, their NaN-propagating maximum). */
static int run(const lb_job *j, gd_index n, double sums[3]) {
    const gd_lbfgs_kernels *k = kernels();
    gd_index nb = nblocks(n);
    double *part = malloc((size_t)(nb > 0 ? nb : 1) * 3 * sizeof(double));
    if (!part) return -1;
    int nt = gdfast_threads_for(n, GD_LB_GRAIN);
    if (nt <= 1) {
        unsigned fp = gd_fpmode_enter();
        for (gd_index b = 0; b < nb; b++) run_block(k, j, n, b, part);
        gd_fpmode_leave(fp);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        {
            unsigned fp = gd_fpmode_enter();
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            for (gd_index b = nb * t / T; b < nb * (t + 1) / T; b++) run_block(k, j, n, b, part);
            gd_fpmode_leave(fp);
        }
#endif
    }
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

/* After a pass that ends in a dot product: wait for every thread's
 * partials, then add them (every thread the same sum, in block order). The
 * two partial buffers alternate, so the next pass never overwrites
 * partials another thread may still be adding. */
static double pass_sum(const double *part, gd_index nb, int *p) {
#ifdef _OPENMP
#pragma omp barrier
#endif
    double s = 0.0;
    for (gd_index b = 0; b < nb; b++) s += part[*p * nb + b];
    *p ^= 1;
    return s;
}

static gd_index block_len(gd_index n, gd_index b) {
    gd_index lo = b * GD_LB_BLOCK;
    return n - lo < GD_LB_BLOCK ? n - lo : GD_LB_BLOCK;
}

/* One thread's share, blocks [b0, b1), of the two-loop recursion; every
 * thread computes the same scalars. al: this thread's own k doubles. */
static void two_loop_range(const gd_lbfgs_kernels *kr, const float *g, float *d, gd_index n,
                           const float *const *S, const float *const *Y, const double *rho,
                           int k, double h, gd_index b0, gd_index b1, double *part,
                           gd_index nb, double *al) {
    int p = 0;
    double dot = 0.0;
    /* q = -g, and s_newest . q */
    for (gd_index b = b0, lo = b0 * GD_LB_BLOCK; b < b1; b++, lo += GD_LB_BLOCK)
        part[p * nb + b] = kr->scale_dot(d + lo, g + lo, -1.0f, k ? S[k - 1] + lo : NULL,
                                         block_len(n, b));
    if (k) dot = pass_sum(part, nb, &p);
    for (int i = k - 1; i >= 0; i--) {
        al[i] = rho[i] * dot;
        const float *z = i > 0 ? S[i - 1] : NULL;
        for (gd_index b = b0, lo = b0 * GD_LB_BLOCK; b < b1; b++, lo += GD_LB_BLOCK)
            part[p * nb + b] = kr->axpy_dot(d + lo, (float)-al[i], Y[i] + lo, z ? z + lo : NULL,
                                            block_len(n, b));
        if (z) dot = pass_sum(part, nb, &p);
    }
    /* r = h q, and y_oldest . r */
    for (gd_index b = b0, lo = b0 * GD_LB_BLOCK; b < b1; b++, lo += GD_LB_BLOCK)
        part[p * nb + b] = kr->scale_dot(d + lo, d + lo, (float)h, k ? Y[0] + lo : NULL,
                                         block_len(n, b));
    if (k) dot = pass_sum(part, nb, &p);
    for (int i = 0; i < k; i++) {
        double be = rho[i] * dot;
        const float *z = i + 1 < k ? Y[i + 1] : NULL;
        for (gd_index b = b0, lo = b0 * GD_LB_BLOCK; b < b1; b++, lo += GD_LB_BLOCK)
            part[p * nb + b] = kr->axpy_dot(d + lo, (float)(al[i] - be), S[i] + lo,
                                            z ? z + lo : NULL, block_len(n, b));
        if (z) dot = pass_sum(part, nb, &p);
    }
}

int gdfast_lbfgs_two_loop(const float *g, float *d, gd_index n, const float *const *S,
                          const float *const *Y, const double *rho, int k, double h) {
    const gd_lbfgs_kernels *kr = kernels();
    gd_index nb = nblocks(n);
    int nt = gdfast_threads_for(n, GD_LB_GRAIN);
    double *part = malloc((size_t)(2 * (nb > 0 ? nb : 1) + (gd_index)nt * (k > 0 ? k : 1)) *
                          sizeof(double));
    if (!part) return -1;
    double *al = part + 2 * (nb > 0 ? nb : 1);
    if (nt <= 1) {
        unsigned fp = gd_fpmode_enter();
        two_loop_range(kr, g, d, n, S, Y, rho, k, h, 0, nb, part, nb, al);
        gd_fpmode_leave(fp);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        {
            unsigned fp = gd_fpmode_enter();
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            two_loop_range(kr, g, d, n, S, Y, rho, k, h, nb * t / T, nb * (t + 1) / T, part, nb,
                           al + (gd_index)t * (k > 0 ? k : 1));
            gd_fpmode_leave(fp);
        }
#endif
    }
    free(part);
    return 0;
}
