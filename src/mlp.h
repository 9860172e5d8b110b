/* Fused MLP forward/backward on a parameter arena.
 *
 * Layers l = 1..L map sizes[l-1] -> sizes[l]. The arena holds, in order,
 * w1 (sizes[0] x sizes[1], row-major, so Z = X @ W + b), b1, w2, b2, ...
 * Hidden layer l (1..L-1) uses hidden_act[l-1]. The output layer is linear + softmax for
 * GD_LOSS_CROSS_ENTROPY, linear + logistic sigmoid per output for GD_LOSS_BINARY (independent
 * yes/no outputs: multi-label, or one output for two classes), and `out_act` for GD_LOSS_MSE.
 *
 * Losses are means over the batch of n rows:
 *   cross-entropy  L = -(1/n) sum_i sum_j t_ij log softmax(z_i)_j
 *   binary         L = -(1/n) sum_i sum_j t_ij log p_ij + (1 - t_ij) log(1 - p_ij),
 *                  p = sigmoid(z)
 *   quadratic      L =  (1/n) sum_i 0.5 * ||a_i - t_i||^2   (Nielsen's C)
 * with t one-hot labels or a given target matrix, plus with alpha > 0 the L2
 * penalty of scikit-learn's MLP, on the weights only:
 *   L += (0.5 * alpha / n) sum_l ||W_l||^2,   dL/dW_l += (alpha / n) W_l.
 * ||W_l||^2 adds up each row's sum of squares (the optimizers' sumsq, a fixed
 * order) row after row, so every path and thread count gives the same bits.
 *
 * Dropout (training passes only): hidden layer l's output is multiplied by
 * the mask of gd_dropout (gemm.h) with rate dropout[l-1], keyed by
 *   k = splitmix64(splitmix64(splitmix64(drop_seed) ^ drop_step) ^ l),
 *   k0 = low 32 bits of k, k1 = high 32 bits,
 *   element index (drop_row0 + i) * sizes[l] + j (mod 2^32),
 * so a batch computed in parts (drop_row0 = each part's first row, the same
 * drop_step) draws the masks of one call; forward-only calls never drop.
 */
#ifndef GDFAST_MLP_H
#define GDFAST_MLP_H

#include "gdfast.h"
#include "optim.h"

enum { GD_LOSS_CROSS_ENTROPY = 0, GD_LOSS_MSE = 1, GD_LOSS_BINARY = 2 };

typedef struct {
    int n_layers;          /* L */
    const gd_index *sizes; /* L + 1 entries */
    const int *hidden_act; /* GD_ACT_*, one per hidden layer: L - 1 entries */
    int out_act;           /* GD_ACT_*, MSE only */
    int loss;              /* GD_LOSS_* */
    double alpha;          /* L2 penalty (0: none) */
    const double *dropout; /* NULL, or a rate in [0, 1) per hidden layer */
    uint64_t drop_seed, drop_step;
    gd_index drop_row0;    /* the call's rows are rows drop_row0.. of the batch */
} gd_mlp;

/* Floats of work space for a batch of n rows. */
gd_index gdfast_mlp_workspace(const gd_mlp *net, gd_index n);
/* Where the network's outputs (n x sizes[L]) are in the work space after a
 * forward pass: probabilities for cross-entropy and binary, activations for MSE. */
float *gdfast_mlp_output(const gd_mlp *net, float *ws, gd_index n);

/* Forward pass of x (n x sizes[0]). Returns 0, or -1 on allocation failure. */
int gdfast_mlp_forward(const gd_mlp *net, const float *params, const float *x, gd_index n,
                       float *ws);

/* Forward + loss + backward. Exactly one of labels (n class indices) and
 * targets (n x sizes[L]) is non-NULL. Gradients overwrite `grads` (same
 * layout as params). *loss gets the mean loss. Returns 0; -1 on allocation
 * failure; or 1 + i when labels[i] is out of range (nothing is written). */
gd_index gdfast_mlp_loss_grad(const gd_mlp *net, const float *params, float *grads,
                              const float *x, gd_index n, const int64_t *labels,
                              const float *targets, float *ws, double *loss);

/* Told by the backward pass that layer l's gradients (w_l and b_l, one
 * contiguous range of the arena) are final, from layer L down to 1, so their
 * communication can start while the layers below are computed. It runs in
 * the calling thread, outside any parallel region, in the caller's
 * floating-point mode. A non-zero return stops the pass: the call returns
 * GD_MLP_STOPPED and the other layers' gradients are unspecified. */
typedef int (*gd_layer_done)(void *ctx, int layer);
#define GD_MLP_STOPPED (-3)

/* As gdfast_mlp_loss_grad, for gradient accumulation: the gradients are
 * those of a mean over n_mean examples (n_mean >= n: this batch is part of
 * a bigger one), and with acc they are added to `grads` instead of
 * overwriting them (beta = 1 in the weight-gradient GEMMs). `done` (or
 * NULL) is told of each finished layer, with `ctx`. *penalty (if not NULL)
 * gets the L2 penalty term that *loss includes (0 without alpha). */
gd_index gdfast_mlp_loss_grad_acc(const gd_mlp *net, const float *params, float *grads,
                                  const float *x, gd_index n, const int64_t *labels,
                                  const float *targets, float *ws, double *loss,
                                  gd_index n_mean, int acc, gd_layer_done done, void *ctx,
                                  double *penalty);

/* Forward, backward and one optimizer step of `plan` (built over this
 * arena); the same parameters and optimizer state, bit for bit, as loss_grad
 * followed by the step, but `grads` is left unspecified: for one example
 * (n = 1) the weight gradients are formed inside the update kernels and
 * never stored. Other batches, plans that clip by a finite gradient norm,
 * and plans the fused pass cannot run (see fusable) take the two steps one
 * after the other. With plan->max_norm > 0, plan->norm gets the gradient
 * norm (for one example and an infinite max_norm, from the outer products'
 * factors: equal up to rounding). With alpha > 0 the one-example step forms
 * each gradient row in_i * dZ + (alpha / n) W_i a chunk at a time on the
 * stack, and takes ||W||^2 from the rows as it updates them; the loss is then
 * checked for skip_nonfinite without the penalty (non-finite weights make it
 * non-finite, short of saturated sigmoid/tanh units). Returns as gdfast_mlp_loss_grad, no update
 * when that fails; or GD_MLP_SKIPPED, with no update, when skip_nonfinite is
 * set and the loss is NaN or infinite. */
#define GD_MLP_SKIPPED (-2)
gd_index gdfast_mlp_train_step(const gd_mlp *net, float *params, float *grads, const float *x,
                               gd_index n, const int64_t *labels, const float *targets,
                               float *ws, gd_plan *plan, int skip_nonfinite, double *loss);

#endif
