"""Plain NumPy twin of gdfast.MLP (src/mlp.c): the same math, written to be read.

Works in any float dtype (float64 for gradient checks). Parameters are a dict
{"w1": (fan_in, fan_out), "b1": (fan_out,), ...}; forward is X @ W + b.

Conventions (shared with the C kernels):
- hidden layers use `activation`: one name for all, or a list of one name per
  hidden layer; the output layer is linear + softmax for loss="cross_entropy",
  and `output_activation` for loss="mse" (default: `activation`, as in
  Nielsen's network; for a list, its last name, "identity" if it is empty);
- cross-entropy  L = -(1/n) sum_i sum_j t_ij log softmax(z_i)_j
- binary         L = -(1/n) sum_i sum_j t_ij log p_ij + (1 - t_ij) log(1 - p_ij),
                 p = sigmoid(z) per output (loss="binary_cross_entropy")
- quadratic      L =  (1/n) sum_i 0.5 * ||a_i - t_i||^2
  where t is one-hot of integer labels, or a given (n, n_out) target array;
- alpha: + (0.5 * alpha / n) sum_l ||W_l||^2 (scikit-learn's L2 penalty;
  weights only);
- dropout (loss_and_grad only): hidden layer l's output act(z) * mask, the
  mask of dropout_mask(seed, step, l, ...).
"""
import numpy as np


def activate(name, z):
    if name == "identity":
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(name, a):
    """d act / dz written with the activation's output a = act(z)."""
    if name == "identity":
        return np.ones_like(a)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "sigmoid":
        return a * (1 - a)
    if name == "tanh":
        return 1 - a * a
    raise ValueError(f"unknown activation {name!r}")


def hidden_activations(activation, n_hidden):
    """One activation name per hidden layer, from one name or a list of them."""
    return [activation] * n_hidden if isinstance(activation, str) else list(activation)


def default_output_activation(activation):
    """The mse output activation when none is given (see the module docstring)."""
    if isinstance(activation, str):
        return activation
    return activation[-1] if len(activation) else "identity"


def targets_of(y, n_out, dtype):
    """One-hot rows for integer labels; float targets pass through."""
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        t = np.zeros((y.shape[0], n_out), dtype=dtype)
        t[np.arange(y.shape[0]), y] = 1
        return t
    return y.astype(dtype)


_M64 = 2 ** 64 - 1


def splitmix64(x):
    """Vigna's splitmix64 finalizer of x + golden gamma, on Python ints mod 2^64."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix32(x):
    """Wellons' lowbias32 on a uint32 array (multiplies wrap mod 2^32)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def dropout_mask(seed, step, layer, n, width, p, first_row=0):
    """Multipliers (n, width) of hidden layer `layer` (1-based) in training call
    `step`: 0 for a dropped unit, float32(1 / (1 - p)) for a kept one. Unit
    (i, j), row first_row + i of the batch, is dropped when the 24-bit hash of
    its index (first_row + i) * width + j is below round(p * 2^24): the C
    kernels' mask, bit for bit."""
    k = splitmix64(splitmix64(splitmix64(seed % 2 ** 64) ^ step) ^ layer)
    k0, k1 = np.uint32(k & 0xFFFFFFFF), np.uint32(k >> 32)
    e = np.arange(first_row * width, (first_row + n) * width,
                  dtype=np.uint64).astype(np.uint32).reshape(n, width)
    h = _mix32(_mix32(e ^ k0) + k1)
    keep = (h >> np.uint32(8)).astype(np.int64) >= int(np.floor(p * 2 ** 24 + 0.5))
    return np.where(keep, np.float32(1.0 / (1.0 - p)), np.float32(0.0))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class MLP:
    def __init__(self, sizes, activation="relu", loss="cross_entropy", output_activation=None,
                 params=None, dtype=np.float64, alpha=0.0, dropout=0.0, seed=0):
        self.sizes = list(sizes)
        self.activation = activation
        self.activations = hidden_activations(activation, len(self.sizes) - 2)
        self.loss = loss
        self.output_activation = output_activation or default_output_activation(activation)
        self.dtype = dtype
        self.alpha = alpha
        n_hidden = len(self.sizes) - 2
        self.dropout = list(dropout) if isinstance(dropout, (list, tuple)) else [dropout] * n_hidden
        self.seed = seed
        self.params = {}
        for l in range(1, len(self.sizes)):
            self.params[f"w{l}"] = np.zeros((self.sizes[l - 1], self.sizes[l]), dtype)
            self.params[f"b{l}"] = np.zeros(self.sizes[l], dtype)
        if params is not None:
            for name, value in params.items():
                self.params[name][...] = value

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    def _layers(self, x, step=None, first_row=0):
        """(activations of every layer, the last being logits for cross-entropy;
        {l: act' of hidden layer l, times its dropout mask}). With a training
        `step`, hidden outputs are dropped out."""
        acts, dacts = [np.asarray(x, self.dtype)], {}
        for l in range(1, self.n_layers + 1):
            z = acts[-1] @ self.params[f"w{l}"] + self.params[f"b{l}"]
            if l < self.n_layers:
                a = activate(self.activations[l - 1], z)
                dacts[l] = activation_grad(self.activations[l - 1], a)
                p = self.dropout[l - 1]
                if step is not None and p > 0:
                    mask = dropout_mask(self.seed, step, l, *a.shape, p,
                                        first_row).astype(self.dtype)
                    a, dacts[l] = a * mask, dacts[l] * mask
                acts.append(a)
            elif self.loss in ("cross_entropy", "binary_cross_entropy"):
                acts.append(z)
            else:
                acts.append(activate(self.output_activation, z))
        return acts, dacts

    def _forward(self, x):
        """Activations of every layer without dropout (inference)."""
        return self._layers(x)[0]

    def forward(self, x):
        out = self._forward(x)[-1]
        if self.loss == "binary_cross_entropy":
            return activate("sigmoid", out)
        return softmax(out) if self.loss == "cross_entropy" else out

    def loss_and_grad(self, x, y, step=0, first_row=0):
        """(mean loss, {name: gradient}) for a batch; `step` keys the dropout
        masks, `first_row` is the batch's first row in a bigger one (for them too)."""
        acts, dacts = self._layers(x, step, first_row)
        n = acts[0].shape[0]
        t = targets_of(y, self.sizes[-1], self.dtype)
        out = acts[-1]
        if self.loss == "cross_entropy":
            shifted = out - out.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss = -(t * logp).sum() / n
            dz = (np.exp(logp) * t.sum(axis=1, keepdims=True) - t) / n
        elif self.loss == "binary_cross_entropy":
            # -t log p - (1 - t) log(1 - p) = softplus(z) - t z
            loss = (np.logaddexp(0, out) - t * out).sum() / n
            dz = (activate("sigmoid", out) - t) / n
        else:
            diff = out - t
            loss = 0.5 * (diff * diff).sum() / n
            dz = diff * activation_grad(self.output_activation, out) / n
        grads = {}
        for l in range(self.n_layers, 0, -1):
            w = self.params[f"w{l}"]
            grads[f"w{l}"] = acts[l - 1].T @ dz + (self.alpha / n) * w
            grads[f"b{l}"] = dz.sum(axis=0)
            loss += 0.5 * self.alpha / n * float((w * w).sum())
            if l > 1:
                dz = (dz @ w.T) * dacts[l - 1]
        return float(loss), grads
