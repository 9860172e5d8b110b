/* Fused MLP forward/backward (see mlp.h). Every matrix product is one call of
 * our GEMM with the layer's elementwise work in its epilogue:
 *   forward   A_l  = act(A_{l-1} @ W_l + b_l)                 bias + act fused
 *   backward  dZ_{l-1} = (dZ_l @ W_l^T) * act'(A_{l-1})       act' fused, and
 *             db_{l-1} = column sums of dZ_{l-1}              fused too
 *             dW_l = A_{l-1}^T @ dZ_l        straight into the gradient arena
 * dX (the gradient of the input) is never formed. act' is computed from the
 * saved outputs A, so Z is not kept. The output layer's dZ and db come from
 * the loss pass, which is small (n x n_out).
 *
 * A training step on one example fuses the weight gradients with the
 * optimizer: once every dZ is known, one parallel pass over the arena updates
 * each row of W_l with its gradient a_i * dZ_l formed inside the update
 * kernel, so dW is never written to memory (params.grad is left holding
 * only the biases' gradients).
 *
 * L2 (alpha): the weight-gradient GEMM's epilogue adds (alpha / n) W_l; the
 * one-example step adds it where it forms the outer product. Dropout: the
 * forward epilogue multiplies a hidden layer's output by its mask, and the
 * backward epilogue of the same layer applies the mask again after act'.
 */
#include <math.h>
#include <string.h>
#include "mlp.h"
#include "gemm.h"
#include "optim.h"

/* Rows of all weight matrices together. */
static gd_index weight_rows(const gd_mlp *net) {
    gd_index rows = 0;
    for (int l = 1; l <= net->n_layers; l++) rows += net->sizes[l - 1];
    return rows;
}

/* The work space holds A_1..A_L, then dZ_1..dZ_L in the same layout, then
 * ten doubles per weight row (the L2 term's sums of squares). */
gd_index gdfast_mlp_workspace(const gd_mlp *net, gd_index n) {
    gd_index total = 0;
    for (int l = 1; l <= net->n_layers; l++) total += n * net->sizes[l];
    return 2 * total + 20 * weight_rows(net);
}

/* A_l (l >= 1) in the work space. */
static float *act_buf(const gd_mlp *net, float *ws, gd_index n, int l) {
    for (int i = 1; i < l; i++) ws += n * net->sizes[i];
    return ws;
}

static float *dz_buf(const gd_mlp *net, float *ws, gd_index n, int l) {
    return act_buf(net, act_buf(net, ws, n, net->n_layers + 1), n, l);
}

float *gdfast_mlp_output(const gd_mlp *net, float *ws, gd_index n) {
    return act_buf(net, ws, n, net->n_layers);
}

/* The L2 term's sums: weight_rows doubles of ||w_row||^2, then (the
 * one-example step) as many of ||gradient row||^2. */
static double *row_sums(const gd_mlp *net, float *ws, gd_index n) {
    return (double *)dz_buf(net, ws, n, net->n_layers + 1);
}

/* ... then 8 per weight row: the 8 interleaved partial sums of ||w_row||^2
 * that the weight-gradient GEMMs' epilogue adds up (gemm.h, addsq). */
static double *lane_sums(const gd_mlp *net, float *ws, gd_index n) {
    return row_sums(net, ws, n) + 2 * weight_rows(net);
}

/* Offsets of w_l and b_l in the arena. */
static gd_index w_offset(const gd_mlp *net, int l) {
    gd_index off = 0;
    for (int i = 1; i < l; i++) off += net->sizes[i - 1] * net->sizes[i] + net->sizes[i];
    return off;
}

static gd_index b_offset(const gd_mlp *net, int l) {
    return w_offset(net, l) + net->sizes[l - 1] * net->sizes[l];
}

/* The output layer's GEMM epilogue: logits for the losses that take their
 * probabilities from the logits in the loss pass. */
static int out_act(const gd_mlp *net) {
    return net->loss == GD_LOSS_MSE ? net->out_act : GD_ACT_IDENTITY;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Hidden layer l's dropout in this step (see mlp.h) in *d, or NULL for none. */
static const gd_dropout *layer_dropout(const gd_mlp *net, int l, gd_dropout *d) {
    if (!net->dropout || l >= net->n_layers || !(net->dropout[l - 1] > 0.0)) return NULL;
    double p = net->dropout[l - 1];
    uint64_t k = splitmix64(splitmix64(splitmix64(net->drop_seed) ^ net->drop_step) ^
                            (uint64_t)l);
    d->k0 = (uint32_t)k;
    d->k1 = (uint32_t)(k >> 32);
    d->thresh = (int32_t)floor(p * 16777216.0 + 0.5);
    d->keep = (float)(1.0 - p);
    d->scale = (float)(1.0 / (1.0 - p));
    d->ld = net->sizes[l];
    d->row0 = net->drop_row0;
    return d;
}

/* A_L = the last layer's activations (logits for cross-entropy); `train`
 * applies dropout. */
static int forward_layers(const gd_mlp *net, const float *params, const float *x, gd_index n,
                          float *ws, int train) {
    const float *in = x;
    for (int l = 1; l <= net->n_layers; l++) {
        gd_index fi = net->sizes[l - 1], fo = net->sizes[l];
        float *out = act_buf(net, ws, n, l);
        int act = l == net->n_layers ? out_act(net) : net->hidden_act[l - 1];
        gd_dropout drop;
        gd_epilogue ep = {params + b_offset(net, l), act, NULL, 0, 0, NULL, NULL, 0, 0.0f,
                          train ? layer_dropout(net, l, &drop) : NULL};
        if (gdfast_sgemm(0, 0, n, fo, fi, 1.0f, in, fi, params + w_offset(net, l), fo,
                         0.0f, out, fo, &ep) != 0)
            return -1;
        in = out;
    }
    return 0;
}

/* Numerically stable softmax of one row in place; returns log(sum exp(z - max)) and the max. */
static void softmax_row(float *z, gd_index k, float *max_out, double *logsum_out) {
    float mx = z[0];
    for (gd_index j = 1; j < k; j++) mx = z[j] > mx ? z[j] : mx;
    double s = 0.0;
    for (gd_index j = 0; j < k; j++) s += (double)expf(z[j] - mx);
    *max_out = mx;
    *logsum_out = log(s);
}

static int mlp_forward(const gd_mlp *net, const float *params, const float *x, gd_index n,
                       float *ws) {
    if (forward_layers(net, params, x, n, ws, 0) != 0) return -1;
    if (net->loss == GD_LOSS_CROSS_ENTROPY) {
        gd_index k = net->sizes[net->n_layers];
        float *out = gdfast_mlp_output(net, ws, n);
        for (gd_index i = 0; i < n; i++) {
            float *z = out + i * k, mx;
            double ls;
            softmax_row(z, k, &mx, &ls);
            for (gd_index j = 0; j < k; j++) z[j] = (float)exp((double)(z[j] - mx) - ls);
        }
    } else if (net->loss == GD_LOSS_BINARY) {
        gd_index total = n * net->sizes[net->n_layers];
        float *out = gdfast_mlp_output(net, ws, n);
        for (gd_index i = 0; i < total; i++) out[i] = (float)(1.0 / (1.0 + exp(-(double)out[i])));
    }
    return 0;
}

/* Loss over the batch; writes dZ_L (the loss gradient of a mean over n_mean
 * examples) and db_L (added to it when acc). Outputs become probabilities. */
static double loss_and_output_grad(const gd_mlp *net, float *out, gd_index n,
                                   const int64_t *labels, const float *targets, float *dz,
                                   float *db, gd_index n_mean, int acc) {
    gd_index k = net->sizes[net->n_layers];
    float inv_n = 1.0f / (float)n_mean;
    double total = 0.0;
    if (!acc) memset(db, 0, (size_t)k * sizeof(float));
    for (gd_index i = 0; i < n; i++) {
        float *a = out + i * k, *d = dz + i * k;
        const float *t = targets ? targets + i * k : NULL;
        double li = 0.0;
        if (net->loss == GD_LOSS_CROSS_ENTROPY) {
            float mx;
            double ls, tsum = 0.0;
            softmax_row(a, k, &mx, &ls);
            for (gd_index j = 0; j < k; j++) {
                double logp = (double)(a[j] - mx) - ls;
                float tj = t ? t[j] : (float)(labels[i] == j);
                a[j] = (float)exp(logp);
                /* 0 * log 0 counts as 0, but a NaN logit makes the loss NaN
                 * whatever the target, so divergence is never hidden */
                if (tj != 0.0f || logp != logp) li -= tj * logp;
                tsum += tj;
            }
            for (gd_index j = 0; j < k; j++) {
                float tj = t ? t[j] : (float)(labels[i] == j);
                d[j] = (a[j] * (float)tsum - tj) * inv_n;
            }
        } else if (net->loss == GD_LOSS_BINARY) {
            for (gd_index j = 0; j < k; j++) {
                double z = a[j];
                float tj = t ? t[j] : (float)(labels[i] == j);
                /* -t log p - (1 - t) log(1 - p) = softplus(z) - t z, stable for any z */
                li += (z > 0.0 ? z : 0.0) + log1p(exp(-fabs(z))) - tj * z;
                a[j] = (float)(1.0 / (1.0 + exp(-z)));
                d[j] = (a[j] - tj) * inv_n;
            }
        } else {
            for (gd_index j = 0; j < k; j++) {
                float tj = t ? t[j] : (float)(labels[i] == j);
                float diff = a[j] - tj;
                li += 0.5 * (double)diff * (double)diff;
                d[j] = diff * gdfast_dact_scalar(net->out_act, a[j]) * inv_n;
            }
        }
        for (gd_index j = 0; j < k; j++) db[j] += d[j];
        total += li;
    }
    return total / (double)n;
}

/* The input of layer l. */
static const float *layer_input(const gd_mlp *net, const float *x, float *ws, gd_index n, int l) {
    return l == 1 ? x : act_buf(net, ws, n, l - 1);
}

/* Who to tell that a layer's gradients are final, and the caller's
 * floating-point mode to run it in (MPI may reduce floats in there). */
typedef struct {
    gd_layer_done done;
    void *ctx;
    unsigned fp;
} layer_hook;

static int tell_done(const layer_hook *hook, int l) {
    if (!hook || !hook->done) return 0;
    gd_fpmode_leave(hook->fp);
    int stop = hook->done(hook->ctx, l);
    gd_fpmode_enter();
    return stop;
}

/* dW_l = A_{l-1}^T dZ_l (+ (alpha / n_mean) W_l, the L2 term in the
 * epilogue, once per accumulated batch, which also adds up the rows'
 * ||W_l||^2 for the penalty), straight into the arena. */
static int weight_grad(const gd_mlp *net, const float *params, float *grads, const float *x,
                       float *ws, gd_index n, gd_index n_mean, int acc, int l) {
    gd_index fi = net->sizes[l - 1], fo = net->sizes[l], row = 0;
    for (int i = 1; i < l; i++) row += net->sizes[i - 1];
    gd_epilogue ep = {NULL, GD_ACT_IDENTITY, NULL, 0, 0, NULL, params + w_offset(net, l),
                      fo, (float)(net->alpha / (double)n_mean), NULL,
                      lane_sums(net, ws, n) + 8 * row};
    return gdfast_sgemm(1, 0, fi, fo, n, 1.0f, layer_input(net, x, ws, n, l), fi,
                        dz_buf(net, ws, n, l), fo, acc ? 1.0f : 0.0f, grads + w_offset(net, l),
                        fo, net->alpha > 0.0 && !acc ? &ep : NULL);
}

/* Forward, loss, and the backward pass: every dZ_l and db_l (added to grads
 * when acc), from the last layer down. With `weights` it forms each dW_l as
 * soon as dZ_l is known, so layer l's gradients are final before layer l - 1
 * is started, and tells `hook`; else the weight gradients are left to the
 * caller (the one-example step forms them inside the update). Each product
 * sums in its own fixed order, so the interleaving changes no bits. */
static gd_index backward_data(const gd_mlp *net, const float *params, float *grads,
                              const float *x, gd_index n, const int64_t *labels,
                              const float *targets, float *ws, double *loss, gd_index n_mean,
                              int acc, int weights, const layer_hook *hook) {
    int L = net->n_layers;
    if (labels)
        for (gd_index i = 0; i < n; i++)
            if (labels[i] < 0 || labels[i] >= net->sizes[L]) return 1 + i;
    if (forward_layers(net, params, x, n, ws, 1) != 0) return -1;
    *loss = loss_and_output_grad(net, gdfast_mlp_output(net, ws, n), n, labels, targets,
                                 dz_buf(net, ws, n, L), grads + b_offset(net, L), n_mean, acc);
    for (int l = L; l >= 1; l--) {
        if (weights) {
            if (weight_grad(net, params, grads, x, ws, n, n_mean, acc, l) != 0) return -1;
            if (tell_done(hook, l)) return GD_MLP_STOPPED;
        }
        if (l == 1) break;
        gd_index fi = net->sizes[l - 1], fo = net->sizes[l];
        const float *in = act_buf(net, ws, n, l - 1);
        float *db = grads + b_offset(net, l - 1);
        if (!acc) memset(db, 0, (size_t)fi * sizeof(float));
        /* act' of layer l - 1, whose output `in` is, and its dropout mask */
        gd_dropout drop;
        gd_epilogue ep = {NULL, GD_ACT_IDENTITY, in, fi, net->hidden_act[l - 2], db, NULL, 0,
                          0.0f, layer_dropout(net, l - 1, &drop)};
        if (gdfast_sgemm(0, 1, n, fi, fo, 1.0f, dz_buf(net, ws, n, l), fo,
                         params + w_offset(net, l), fo, 0.0f, dz_buf(net, ws, n, l - 1), fi,
                         &ep) != 0)
            return -1;
    }
    return 0;
}

/* The L2 penalty (0.5 * alpha / n) ||W||^2 from the rows' sums of squares
 * `rowsq`, added in row order. */
static double l2_penalty(const gd_mlp *net, gd_index n, const double *rowsq) {
    double total = 0.0;
    for (gd_index r = 0, rows = weight_rows(net); r < rows; r++) total += rowsq[r];
    return 0.5 * net->alpha / (double)n * total;
}

/* Every weight row's sum of squares, into rowsq: for the accumulating calls,
 * whose epilogue has no L2 term to add them up in. */
static void l2_row_sums(const gd_mlp *net, const float *params, double *rowsq) {
    for (int l = 1; l <= net->n_layers; l++) {
        const float *w = params + w_offset(net, l);
        gd_index fo = net->sizes[l];
        for (gd_index i = 0; i < net->sizes[l - 1]; i++) *rowsq++ = gd_optim_k.sumsq(w + i * fo, fo);
    }
}

/* Gradient accumulation (acc) adds this batch's gradients to grads: beta = 1
 * in the weight-gradient GEMMs, the bias sums continued, no extra pass; the
 * L2 term of the mean over n_mean examples goes in once, with the first. */
static gd_index mlp_loss_grad(const gd_mlp *net, const float *params, float *grads,
                              const float *x, gd_index n, const int64_t *labels,
                              const float *targets, float *ws, double *loss, gd_index n_mean,
                              int acc, const layer_hook *hook, double *penalty) {
    int fused = net->alpha > 0.0 && !acc;  /* the epilogue adds the squares up */
    if (fused) memset(lane_sums(net, ws, n), 0, 8 * (size_t)weight_rows(net) * sizeof(double));
    gd_index status = backward_data(net, params, grads, x, n, labels, targets, ws, loss, n_mean,
                                    acc, 1, hook);
    double pen = 0.0;
    if (status == 0 && net->alpha > 0.0) {
        double *rowsq = row_sums(net, ws, n);
        if (fused) {
            /* combined as gd_optim_k.sumsq combines its 8 sums: the same bits */
            const double *q = lane_sums(net, ws, n);
            for (gd_index r = 0, rows = weight_rows(net); r < rows; r++, q += 8)
                rowsq[r] = ((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]));
        } else {
            l2_row_sums(net, params, rowsq);
        }
        pen = l2_penalty(net, n_mean, rowsq);
    }
    *loss += pen;
    if (penalty) *penalty = pen;
    return status;
}

/* Floats of a gradient row the L2 step forms at a time (on the stack). */
#define L2_CHUNK 256

/* One row of W_l at arena position a in a one-example step with the L2
 * term: gradient in_r * dz + l2 * w, formed a chunk at a time and never
 * stored in the arena (the same bits as the epilogue's); *wsq and *gsq get
 * the sums of squares of the row before its update and of its gradient. */
static void l2_row(const gd_plan *plan, float *params, gd_index a, gd_index cols, float in_r,
                   const float *dz, float l2, double *wsq, double *gsq) {
    float g[L2_CHUNK];
    const float *w = params + a;
    double gs = 0.0;
    *wsq = gd_optim_k.sumsq(w, cols);
    for (gd_index c = 0; c < cols; c += L2_CHUNK) {
        gd_index m = cols - c < L2_CHUNK ? cols - c : L2_CHUNK;
        for (gd_index j = 0; j < m; j++) g[j] = in_r * dz[c + j] + l2 * w[c + j];
        gs += gd_optim_k.sumsq(g, m);
        gdfast_optim_update_grad(plan, params, a + c, a + c + m, g);
    }
    *gsq = gs;
}

/* The start of the weight row holding arena position pos (pos itself
 * outside the weights): the L2 step cuts its thread ranges there, so each
 * row's sums come from one thread. */
static gd_index row_start(const gd_mlp *net, gd_index pos) {
    for (int l = 1; l <= net->n_layers; l++) {
        gd_index w0 = w_offset(net, l), fo = net->sizes[l];
        if (pos >= w0 && pos < b_offset(net, l)) return w0 + (pos - w0) / fo * fo;
    }
    return pos;
}

/* Arena positions [lo, hi) of a one-example step: each W_l row i gets the
 * update with gradient in_i * dZ_l (an outer product, formed in registers by
 * the kernel and never stored; with alpha, by l2_row, [lo, hi) whole rows);
 * biases, whose gradients the backward pass left in the arena, get the
 * plain update. */
static void fused_range(const gd_mlp *net, float *params, const float *x, float *ws,
                        const gd_plan *plan, gd_index lo, gd_index hi) {
    double *wsq = row_sums(net, ws, 1), *gsq = wsq + weight_rows(net);
    for (int l = 1; l <= net->n_layers; l++) {
        gd_index fo = net->sizes[l], w0 = w_offset(net, l), b0 = b_offset(net, l);
        const float *in = layer_input(net, x, ws, 1, l), *dz = dz_buf(net, ws, 1, l);
        gd_index a = lo > w0 ? lo : w0, end = hi < b0 ? hi : b0;
        for (gd_index row = (a - w0) / fo; net->alpha > 0.0 && a < end; a += fo, row++)
            l2_row(plan, params, a, fo, in[row], dz, (float)net->alpha, wsq + row, gsq + row);
        while (a < end) {
            gd_index row = (a - w0) / fo, col = (a - w0) % fo;
            if (col != 0 || end - a < fo) { /* part of one row (a thread's range ends there) */
                gd_index len = fo - col < end - a ? fo - col : end - a;
                gdfast_optim_update_outer(plan, params, a, 1, len, in + row, dz + col);
                a += len;
            } else {
                gd_index rows = (end - a) / fo;
                gdfast_optim_update_outer(plan, params, a, rows, fo, in + row, dz);
                a += rows * fo;
            }
        }
        a = lo > b0 ? lo : b0;
        end = hi < b0 + fo ? hi : b0 + fo;
        if (a < end) gdfast_optim_update_piece(plan, params, a, end);
        wsq += net->sizes[l - 1];
        gsq += net->sizes[l - 1];
    }
}

typedef struct {
    const gd_mlp *net;
    float *params;
    const float *x;
    float *ws;
    const gd_plan *plan;
    gd_index total;
    int chunks;
} fused_pass;

/* Chunks [c0, c1) of the fused pass over the arena, cut as an optimizer pass is. */
static int fused_chunks(void *ctx, gd_index c0, gd_index c1) {
    fused_pass *f = ctx;
    gd_index lo, hi, unused;
    gdfast_optim_split(f->total, f->chunks, (int)c0, &lo, &unused);
    gdfast_optim_split(f->total, f->chunks, (int)c1 - 1, &unused, &hi);
    if (f->net->alpha > 0.0) {
        lo = row_start(f->net, lo);
        hi = row_start(f->net, hi);
    }
    fused_range(f->net, f->params, f->x, f->ws, f->plan, lo, hi);
    return 0;
}

/* Whether position pos of the arena starts a tensor (or ends the last). */
static int tensor_edge(const gd_mlp *net, gd_index pos) {
    for (int l = 1; l <= net->n_layers + 1; l++)
        if (pos == w_offset(net, l) || (l <= net->n_layers && pos == b_offset(net, l)))
            return 1;
    return 0;
}

/* The fused pass is for one example (true SGD), whose dW is an outer product
 * the update kernels form themselves, so dW is never written to memory and
 * read back (a third of a batch-1 Adam step). From two examples on, dW is a
 * real GEMM that has to be written (tried a block at a time inside the
 * update: 5-15% slower steps at batches 2-64). It also needs no clipping
 * (the norm, and AGC's unit norms, need every gradient first; an infinite max_norm only asks for
 * the norm, see outer_grad_norm), update kernels with an outer-product
 * form (not Lookahead's sync), and a plan whose segments are views of this
 * arena and its grads covering whole tensors. */
static int fusable(const gd_mlp *net, const float *params, const float *grads, gd_index total,
                   gd_index n, const gd_plan *plan) {
    if (n != 1 || (plan->max_norm > 0.0 && plan->max_norm < INFINITY) || plan->agc_on ||
        !gdfast_optim_outer_ok(plan))
        return 0;
    for (int k = 0; k < plan->nseg; k++) {
        const gd_segment *s = &plan->seg[k];
        gd_index off = s->p - params;
        if (s->p < params || s->p + s->n > params + total || s->g != grads + off ||
            !tensor_edge(net, off) || !tensor_edge(net, off + s->n))
            return 0;
    }
    return 1;
}

/* The global gradient norm of a one-example L2 step: the weight rows' sums
 * from l2_row, and db = dZ. */
static double l2_grad_norm(const gd_mlp *net, float *ws) {
    const double *gsq = row_sums(net, ws, 1) + weight_rows(net);
    double total = 0.0;
    for (gd_index r = 0; r < weight_rows(net); r++) total += gsq[r];
    for (int l = 1; l <= net->n_layers; l++) {
        const float *dz = dz_buf(net, ws, 1, l);
        for (gd_index j = 0; j < net->sizes[l]; j++) total += (double)dz[j] * dz[j];
    }
    return sqrt(total);
}

/* The global gradient norm of a one-example step from its factors: layer l's
 * dW is the outer product of its input a and dZ, so ||dW||^2 = ||a||^2 ||dZ||^2,
 * and db = dZ. The same value as the norm of the stored gradients up to
 * rounding (double sums either way). */
static double outer_grad_norm(const gd_mlp *net, const float *x, float *ws) {
    double total = 0.0;
    for (int l = 1; l <= net->n_layers; l++) {
        const float *in = layer_input(net, x, ws, 1, l), *dz = dz_buf(net, ws, 1, l);
        double sa = 0.0, sz = 0.0;
        for (gd_index i = 0; i < net->sizes[l - 1]; i++) sa += (double)in[i] * in[i];
        for (gd_index j = 0; j < net->sizes[l]; j++) sz += (double)dz[j] * dz[j];
        total += sa * sz + sz;
    }
    return sqrt(total);
}

static gd_index mlp_train_step(const gd_mlp *net, float *params, float *grads, const float *x,
                               gd_index n, const int64_t *labels, const float *targets,
                               float *ws, gd_plan *plan, int skip_nonfinite, double *loss) {
    gd_index total = w_offset(net, net->n_layers + 1);
    if (!fusable(net, params, grads, total, n, plan)) {
        gd_index status = mlp_loss_grad(net, params, grads, x, n, labels, targets, ws, loss, n, 0,
                                        NULL, NULL);
        if (status != 0) return status;
        if (skip_nonfinite && !isfinite(*loss)) return GD_MLP_SKIPPED;
        gdfast_optim_run(plan);
        return 0;
    }
    gd_index status = backward_data(net, params, grads, x, n, labels, targets, ws, loss, n, 0, 0,
                                    NULL);
    if (status != 0) return status;
    if (skip_nonfinite && !isfinite(*loss)) return GD_MLP_SKIPPED;
    /* with alpha the norm (max_norm infinite here) is only known after the
     * update; any value gives the unclipped update meanwhile */
    if (plan->max_norm > 0.0) plan->norm = net->alpha > 0.0 ? 0.0 : outer_grad_norm(net, x, ws);
    gdfast_optim_begin_pieces(plan);
    gd_index grain = gdfast_optim_grain(plan);
    int nt = gdfast_threads_for(total, grain);
    fused_pass f = {net, params, x, ws, plan, total, (int)gdfast_optim_chunks(total, nt, grain)};
    gdfast_parallel(nt, f.chunks, fused_chunks, &f);
    if (net->alpha > 0.0) {
        *loss += l2_penalty(net, 1, row_sums(net, ws, 1));
        if (plan->max_norm > 0.0) plan->norm = l2_grad_norm(net, ws);
    }
    return 0;
}

/* Entry points: the serial parts (activations, softmax, loss) run in the
 * caller's thread under the flush-denormal mode too; GEMM sets its own threads. */
int gdfast_mlp_forward(const gd_mlp *net, const float *params, const float *x, gd_index n,
                       float *ws) {
    unsigned fp = gd_fpmode_enter();
    int status = mlp_forward(net, params, x, n, ws);
    gd_fpmode_leave(fp);
    return status;
}

gd_index gdfast_mlp_loss_grad(const gd_mlp *net, const float *params, float *grads,
                              const float *x, gd_index n, const int64_t *labels,
                              const float *targets, float *ws, double *loss) {
    return gdfast_mlp_loss_grad_acc(net, params, grads, x, n, labels, targets, ws, loss, n, 0,
                                    NULL, NULL, NULL);
}

gd_index gdfast_mlp_loss_grad_acc(const gd_mlp *net, const float *params, float *grads,
                                  const float *x, gd_index n, const int64_t *labels,
                                  const float *targets, float *ws, double *loss,
                                  gd_index n_mean, int acc, gd_layer_done done, void *ctx,
                                  double *penalty) {
    unsigned fp = gd_fpmode_enter();
    layer_hook hook = {done, ctx, fp};
    gd_index status = mlp_loss_grad(net, params, grads, x, n, labels, targets, ws, loss, n_mean,
                                    acc, &hook, penalty);
    gd_fpmode_leave(fp);
    return status;
}

gd_index gdfast_mlp_train_step(const gd_mlp *net, float *params, float *grads, const float *x,
                               gd_index n, const int64_t *labels, const float *targets,
                               float *ws, gd_plan *plan, int skip_nonfinite, double *loss) {
    unsigned fp = gd_fpmode_enter();
    gd_index status = mlp_train_step(net, params, grads, x, n, labels, targets, ws, plan,
                                     skip_nonfinite, loss);
    gd_fpmode_leave(fp);
    return status;
}
