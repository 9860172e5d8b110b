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
  where t is one-hot of integer labels, or a given (n, n_out) target array.
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


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class MLP:
    def __init__(self, sizes, activation="relu", loss="cross_entropy", output_activation=None,
                 params=None, dtype=np.float64):
        self.sizes = list(sizes)
        self.activation = activation
        self.activations = hidden_activations(activation, len(self.sizes) - 2)
        self.loss = loss
        self.output_activation = output_activation or default_output_activation(activation)
        self.dtype = dtype
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

    def _forward(self, x):
        """Activations of every layer; the last is logits for cross-entropy."""
        acts = [np.asarray(x, self.dtype)]
        for l in range(1, self.n_layers + 1):
            z = acts[-1] @ self.params[f"w{l}"] + self.params[f"b{l}"]
            if l < self.n_layers:
                acts.append(activate(self.activations[l - 1], z))
            elif self.loss in ("cross_entropy", "binary_cross_entropy"):
                acts.append(z)
            else:
                acts.append(activate(self.output_activation, z))
        return acts

    def forward(self, x):
        out = self._forward(x)[-1]
        if self.loss == "binary_cross_entropy":
            return activate("sigmoid", out)
        return softmax(out) if self.loss == "cross_entropy" else out

    def loss_and_grad(self, x, y):
        """(mean loss, {name: gradient}) for a batch."""
        acts = self._forward(x)
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
            grads[f"w{l}"] = acts[l - 1].T @ dz
            grads[f"b{l}"] = dz.sum(axis=0)
            if l > 1:
                dz = (dz @ self.params[f"w{l}"].T) * activation_grad(self.activations[l - 2],
                                                                     acts[l - 1])
        return float(loss), grads
