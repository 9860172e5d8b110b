/* gdfast optimizers: one fused, in-place pass over all parameters per step.
 *
 * A step is described by a gd_plan: a list of segments (contiguous runs of
 * parameters with their gradients and state buffers) and one gd_hyper per
 * parameter group. The driver (optim.c) splits the concatenation of all
 * segments into per-thread ranges whose boundaries are multiples of 64
 * floats and calls the kernel of the active instruction set on each piece.
 * Every kernel is elementwise, so results do not depend on the thread count.
 */
#ifndef GDFAST_OPTIM_H
#define GDFAST_OPTIM_H

#include "gdfast.h"

enum { GD_SGD = 0, GD_RMSPROP = 1, GD_ADAM = 2, GD_ADAGRAD = 3, GD_LOOKAHEAD = 4,
       GD_LION = 5, GD_NKINDS };

/* Option flags of gd_hyper.flags. */
#define GD_F_WD 1         /* coupled weight decay: g += wd * p */
#define GD_F_DECOUPLED 2  /* AdamW, Lion: p *= 1 - lr * wd before the update */
#define GD_F_MOMENTUM 4   /* SGD, RMSprop: momentum buffer in s[0] (SGD) / s[1] (RMSprop) */
#define GD_F_FIRST 8      /* SGD: first step, the momentum buffer starts as the gradient */
#define GD_F_NESTEROV 16  /* SGD */
#define GD_F_CENTERED 32  /* RMSprop: gradient average in s[2] */
#define GD_F_AMSGRAD 64   /* Adam: running max of v in s[2] */
#define GD_F_MAXIMIZE 128 /* ascend: the gradient is negated */

/* A clip coefficient as the factors (g * hi) * lo: lo = 1 when coef is a
 * normal float, else an exact power of two with hi normal, so a coefficient
 * below FLT_MIN does not flush to zero under FTZ/DAZ. */
void gdfast_clip_split(double coef, float *hi, float *lo);

/* Per-group coefficients, computed once per step (in double, rounded to float). */
typedef struct {
    int kind, flags;
    float gscale;       /* gradient factor: +-1 times the clip coefficient (set by the driver) */
    float gscale2;      /* applied after gscale: 1, or the power of two of a tiny clip coefficient */
    float lr;           /* SGD, RMSprop, Lion: lr; Adagrad: lr / (1 + (step - 1) * lr_decay) */
    float wd;           /* coupled weight decay */
    float decay;        /* AdamW, Lion: 1 - lr * wd */
    float momentum;     /* SGD, RMSprop */
    float dampening1m;  /* SGD: 1 - dampening */
    float alpha, alpha1m;               /* RMSprop: alpha, 1 - alpha; Lookahead: alpha */
    float beta1, beta1m, beta2, beta2m; /* Adam, Lion: beta, 1 - beta */
    float step_size;                    /* Adam: lr / (1 - beta1^t) */
    float inv_bc2_sqrt;                 /* Adam: 1 / sqrt(1 - beta2^t) */
    float eps;
    int ema;                            /* 0: no moving average for this group */
    float ema_m, ema_m1m;               /* ema = ema_m * ema + ema_m1m * p, after the update */
} gd_hyper;

/* A contiguous run of parameters; s[k] are its state buffers (NULL if unused):
 * SGD: s0 momentum. RMSprop: s0 square_avg, s1 momentum, s2 grad_avg.
 * Adam: s0 exp_avg, s1 exp_avg_sq, s2 max_exp_avg_sq. Adagrad: s0 sum.
 * Lookahead: s0 slow weights. Lion: s0 exp_avg. */
typedef struct {
    float *p;
    const float *g;
    float *s[3];
    gd_index n;
    gd_index start; /* offset of p[0] in the concatenation of all segments */
    int group;
    float *ema;     /* the weights' moving average (NULL: none) */
} gd_segment;

/* A tensor under adaptive gradient clipping (AGC, Brock et al. 2021): n floats
 * from position off of segment seg, `units` columns of n / units rows (a
 * (fan_in, fan_out) weight: one unit per output column; a vector: units = 1).
 * Norms: float32 sums of squares per column, each block of GD_AGC_ROWS rows
 * summed in row order and the blocks' sums added in block order (so blocks
 * can be read by different threads, a whole row at a time); vectors: float64,
 * rounded.
 * Unit j's gradient is scaled by scale[j] = min(1, clip * max(||p_j||, eps) /
 * max(||g_j||, 1e-6)) (1 when ||g_j|| < clip * max(||p_j||, eps)) before the
 * update; clip = 0 leaves the tensor alone. */
typedef struct {
    int seg;
    gd_index off, n, units;
    double clip, eps; /* this step's clip factor and eps (set by the caller) */
    float *scale;     /* units floats, computed by the driver */
    float *acc;       /* gdfast_agc_acc_floats: the sums of squares of p and g (2 *
                         units), then for a matrix each row block's (2 * units each) */
} gd_agc;

#define GD_AGC_ROWS 256
/* Floats of gd_agc.acc for a tensor of n floats in `units` units. */
static inline gd_index gdfast_agc_acc_floats(gd_index n, gd_index units) {
    gd_index blocks = units > 1 ? (n / units + GD_AGC_ROWS - 1) / GD_AGC_ROWS : 0;
    return 2 * units * (1 + blocks);
}

typedef struct {
    gd_segment *seg;
    int nseg;
    gd_hyper *hyper;
    int ngroups;
    gd_index total;      /* sum of the segments' n */
    double max_norm;     /* > 0: clip by the global gradient norm inside the step */
    double *block_sums;  /* ceil(total / GD_NORM_BLOCK) doubles, for the norm */
    double norm;         /* out: the global gradient norm when clipping */
    gd_agc *agc;         /* nagc tensors sorted by position; used when agc_on */
    int nagc, agc_on;
    int ema_on;          /* update the segments' ema after each update (flag per group) */
} gd_plan;

/* Floats per block of the deterministic norm reduction; thread ranges are
 * multiples of GD_SPLIT. */
#define GD_NORM_BLOCK 4096
#define GD_SPLIT 64

/* Kernels of one instruction set (optim_scalar.c, optim_avx2.c, optim_avx512.c). */
typedef void (*gd_update_fn)(const gd_hyper *h, float *p, const float *g, float *s0, float *s1,
                             float *s2, gd_index n);
/* The same update for rows x cols floats whose gradient is ga[r] * b[c]. */
typedef void (*gd_update_outer_fn)(const gd_hyper *h, float *p, const float *ga, const float *b,
                                   float *s0, float *s1, float *s2, gd_index rows,
                                   gd_index cols);
/* The same update with the training aids: gradient g[i] * sc[i] when sc is not
 * NULL (AGC's unit scales) and, when e is not NULL, the moving average
 * e[i] = ema_m * e[i] + ema_m1m * p[i] of the updated p in the same pass. */
typedef void (*gd_update_aids_fn)(const gd_hyper *h, float *p, const float *g, const float *sc,
                                  float *s0, float *s1, float *s2, float *e, gd_index n);
typedef struct {
    gd_update_fn update[GD_NKINDS];
    gd_update_outer_fn update_outer[GD_NKINDS];   /* NULL where there is no gradient */
    gd_update_aids_fn update_aids[GD_NKINDS];     /* NULL where there is no gradient */
    double (*sumsq)(const float *x, gd_index n);
    void (*scale)(float *x, float c, gd_index n);
    void (*clamp)(float *x, float lo, float hi, gd_index n);
    void (*rmw)(float **rw, int nrw, const float **ro, int nro, gd_index n);
    void (*triad)(float *a, const float *b, const float *c, float s, gd_index n);
    /* AGC: column sums of squares of p and g (rows x cols, row stride ld) added to
     * accp/accg in row order; out = g * s[j] (vector) or g * s[0] (scalar). */
    void (*colsumsq2)(const float *p, const float *g, gd_index rows, gd_index ld,
                      gd_index cols, float *accp, float *accg);
    void (*ema)(const float *p, float *e, float m, float m1m, gd_index n);
} gd_optim_kernels;

extern gd_optim_kernels gd_optim_k;
void gdfast_optim_kernels_scalar(gd_optim_kernels *k);
#if defined(GDFAST_BUILD_AVX2)
void gdfast_optim_kernels_avx2(gd_optim_kernels *k);
#endif
#if defined(GDFAST_BUILD_AVX512)
void gdfast_optim_kernels_avx512(gd_optim_kernels *k);
#endif

/* Driver (optim.c). Both return 0. */
int gdfast_optim_run(gd_plan *plan);
/* Floats per thread below which the plan's update stays on one thread. */
gd_index gdfast_optim_grain(const gd_plan *plan);
/* A step in pieces, for callers that form the gradients piece by piece in
 * their own parallel region (the fused one-example MLP step), on disjoint
 * ranges of positions relative to `base`, the buffer every segment's p
 * points into (a Params arena):
 *   begin_pieces   once; when max_norm > 0, the caller has put the gradient
 *                  norm in plan->norm and gets gdfast_optim_run's clipping;
 *   update_piece   [lo, hi), gradients read from the segments' g;
 *   update_outer   rows x cols floats from lo, each segment whole rows, with
 *                  gradient ga[r] * b[c] (never stored); needs outer_ok.
 * Elementwise, so any cut gives the bits of gdfast_optim_run. Runs in the
 * caller's thread and floating-point mode. */
void gdfast_optim_begin_pieces(gd_plan *plan);
void gdfast_optim_update_piece(const gd_plan *plan, const float *base, gd_index lo, gd_index hi);
/* update_piece with the gradients of [lo, hi), inside one segment, read from g. */
void gdfast_optim_update_grad(const gd_plan *plan, const float *base, gd_index lo, gd_index hi,
                              const float *g);
int gdfast_optim_outer_ok(const gd_plan *plan);
void gdfast_optim_update_outer(const gd_plan *plan, const float *base, gd_index lo,
                               gd_index rows, gd_index cols, const float *ga, const float *b);
/* AGC: each active tensor's unit norms (p and g in one read, a fixed order for
 * any thread count) and scales; gdfast_optim_run calls it when agc_on. */
void gdfast_optim_agc_scales(gd_plan *plan);
/* AGC as a function: the scales, then the segments' g scaled in place
 * (g must be writeable memory). */
void gdfast_optim_agc_clip(gd_plan *plan);
/* Global L2 norm of the segments' g (deterministic for any thread count). */
double gdfast_optim_grad_norm(gd_plan *plan);
/* In place on the segments' p: scale by c, or clamp to [lo, hi]. */
void gdfast_optim_scale(gd_plan *plan, float c);
void gdfast_optim_clamp(gd_plan *plan, float lo, float hi);
/* Part t's range [lo, hi) of nt over [0, total) (exported for the index tests). */
void gdfast_optim_split(gd_index total, int nt, int t, gd_index *lo, gd_index *hi);
/* How many such parts a pass over total floats on nt threads is cut into
 * (gdfast_parallel's chunks), each of about `grain` floats or more. */
gd_index gdfast_optim_chunks(gd_index total, int nt, gd_index grain);

/* Memory bandwidth probes (membw.c): one pass each, threaded like a step. */
void gdfast_rmw_pass(float **rw, int nrw, const float **ro, int nro, gd_index n);
void gdfast_triad_pass(float *a, const float *b, const float *c, float s, gd_index n);

#endif
