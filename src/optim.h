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
} gd_segment;

typedef struct {
    gd_segment *seg;
    int nseg;
    gd_hyper *hyper;
    int ngroups;
    gd_index total;      /* sum of the segments' n */
    double max_norm;     /* > 0: clip by the global gradient norm inside the step */
    double *block_sums;  /* ceil(total / GD_NORM_BLOCK) doubles, for the norm */
    double norm;         /* out: the global gradient norm when clipping */
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
typedef struct {
    gd_update_fn update[GD_NKINDS];
    gd_update_outer_fn update_outer[GD_NKINDS]; /* NULL where there is no gradient */
    double (*sumsq)(const float *x, gd_index n);
    void (*scale)(float *x, float c, gd_index n);
    void (*clamp)(float *x, float lo, float hi, gd_index n);
    void (*rmw)(float **rw, int nrw, const float **ro, int nro, gd_index n);
    void (*triad)(float *a, const float *b, const float *c, float s, gd_index n);
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
