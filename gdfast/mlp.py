"""gdfast.MLP: a fully connected network trained by our own fused C kernels.

Weights and biases are views into one parameter arena (gdfast.params.Params),
so one optimizer call updates all of them. Forward, backward and the loss run
in one GIL-free C call per mini-batch (src/mlp.c), with work buffers owned by
the MLP, grown for bigger batches and reused.

Conventions:
- W_l has shape (fan_in, fan_out), so a layer is act(X @ W_l + b_l).
- Hidden layers use `activation`: one name for all of them, or a list of one
  name per hidden layer. The output layer is linear + softmax for
  loss="cross_entropy"; for loss="mse" it uses `output_activation`
  (default: `activation`, as in Nielsen's MNIST network with sigmoid; for a
  list, its last name, or "identity" when there is no hidden layer).
  loss="binary_cross_entropy" gives every output its own logistic sigmoid
  (independent yes/no outputs: multi-label targets, or one output for two
  classes, as scikit-learn's MLPClassifier has them).
- Losses are means over the batch:
    cross_entropy  L = -(1/n) sum_i log softmax(z_i)[y_i]
    binary_cross_entropy
                   L = -(1/n) sum_i sum_j t_ij log p_ij + (1 - t_ij) log(1 - p_ij)
    mse            L =  (1/n) sum_i 0.5 * ||a_i - onehot(y_i)||^2   (Nielsen's C)
  y is integer class labels (1-D, any integer dtype) or a float32 (n, n_out)
  target array (soft targets for cross-entropy).
- alpha > 0 adds scikit-learn's L2 penalty on the weights (not the biases)
  to the training loss: L += (0.5 * alpha / n) sum_l ||W_l||^2, and
  (alpha / n) W_l to their gradients (loss_and_grad, train_step; evaluate
  reports the data loss only, as a test loss should).
- dropout: inverted dropout of the hidden layers' outputs in training calls
  (loss_and_grad, train_step): each unit is zeroed with probability p and
  the others scaled by 1 / (1 - p); forward, predict and evaluate never
  drop. The masks are hashes of (seed, step, layer, element) (see
  reference.mlp.dropout_mask), so they do not depend on the thread count,
  and `step`, the number of training calls so far, is saved with the model.
- Inits: "he" W ~ N(0, 2/fan_in); "xavier"/"glorot" W ~ U(+-sqrt(6/(fan_in+fan_out)));
  "normal" W ~ N(0, 1)/sqrt(fan_in) and b ~ N(0, 1) (Nielsen's default
  initializer). Biases are zero for "he" and "xavier".
"""
import numpy as np

from . import _kernels
from . import checkpoint as ckpt
from .params import Params
from .reference.mlp import MLP as _ReferenceMLP, default_output_activation, hidden_activations

# Below this a float32 probability has lost its digits (or underflowed to 0):
# evaluate takes such rows' log-probabilities from the exact float64 path.
_P_EXACT = 1e-30

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")
LOSSES = ("cross_entropy", "mse", "binary_cross_entropy")
INITS = ("he", "xavier", "glorot", "normal")

# state_dict() files; a change of layout bumps the version
FORMAT = "gdfast.mlp"
VERSION = 1
# what a loaded state must match: the architecture (init/seed only say how the
# starting values were drawn, and loading replaces those values)
_ARCH = ("sizes", "activation", "output_activation", "loss")
# ... and its regularization, which files from before it existed lack (none)
_REGULARIZATION = {"alpha": 0.0, "dropout": 0.0}


class MLP:
    """A fully connected network: sizes[0] inputs, sizes[-1] outputs.

    sizes: layer widths, e.g. (784, 256, 128, 10).
    activation: of the hidden layers, one of ACTIVATIONS, or a list of one
        per hidden layer (len(sizes) - 2 names).
    loss: "cross_entropy" (softmax output, fused), "binary_cross_entropy"
        (a sigmoid per output) or "mse" (0.5 ||a - y||^2).
    init: one of INITS (see the module docstring); seed makes it reproducible.
    output_activation: the output layer's activation with loss="mse" only
        (default: `activation`, or the last of a list); cross-entropy always
        uses softmax.
    alpha: L2 penalty (scikit-learn's alpha), >= 0.
    dropout: rate in [0, 1) of every hidden layer, or a list of one per
        hidden layer; keyed by `seed` (0 when seed is None).
    The weights and biases are views into `params` (a gdfast.Params), the
    arena an optimizer updates: ``gdfast.Adam(model.params, lr=1e-3)``.
    """

    def __init__(self, sizes=(784, 256, 128, 10), activation="relu", loss="cross_entropy",
                 init="he", seed=0, output_activation=None, alpha=0.0, dropout=0.0):
        sizes = list(sizes)
        if len(sizes) < 2 or any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"sizes must be at least two positive integers, got {sizes}")
        sizes = [int(s) for s in sizes]
        acts = _check_activation(activation, len(sizes) - 2)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if output_activation is not None:
            if loss != "mse":
                raise ValueError("output_activation applies to loss='mse' only; "
                                 "cross-entropy always uses softmax")
            if output_activation not in ACTIVATIONS:
                raise ValueError(f"output_activation must be one of {ACTIVATIONS}, "
                                 f"got {output_activation!r}")
        alpha = _check_alpha(alpha)
        rates = _check_dropout(dropout, len(sizes) - 2)
        self.sizes = sizes
        # a list is kept as a list (a tuple too), so configs compare equal after a round trip
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.loss = loss
        self.output_activation = output_activation or default_output_activation(activation)
        self.init, self.seed = init, seed
        self.alpha = alpha
        self.dropout = list(rates) if isinstance(dropout, (list, tuple)) else float(dropout)
        self.params = Params(_shapes(sizes))
        self._init(init, seed)
        drop_seed = int(seed) % 2 ** 64 if isinstance(seed, (int, np.integer)) else 0
        self._core = _kernels.MLPCore(sizes, acts, self.output_activation, loss, self.params,
                                      alpha, rates if any(rates) else None, drop_seed)

    def _init(self, init, seed):
        rng = np.random.default_rng(seed)
        for l in range(1, len(self.sizes)):
            fan_in, fan_out = self.sizes[l - 1], self.sizes[l]
            if init == "he":
                w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
                b = np.zeros(fan_out)
            elif init in ("xavier", "glorot"):
                bound = np.sqrt(6.0 / (fan_in + fan_out))
                w = rng.uniform(-bound, bound, (fan_in, fan_out))
                b = np.zeros(fan_out)
            else:
                w = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
                b = rng.standard_normal(fan_out)
            self.params[f"w{l}"] = w
            self.params[f"b{l}"] = b

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    @property
    def step(self):
        """Training calls (loss_and_grad, train_step) so far: the dropout masks'
        counter, saved by state_dict() so a resumed run draws the same masks."""
        return self._core.step

    @step.setter
    def step(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
                not 0 <= value < 2 ** 64:
            raise ValueError(f"step must be an integer >= 0, got {value!r}")
        self._core.step = int(value)

    def forward(self, x):
        """Outputs for x (float32, C-contiguous, (n, sizes[0])): class
        probabilities for the cross-entropies, output activations for mse."""
        return self._core.forward(x)

    def predict(self, x):
        """Most likely class of each row of x, as int64."""
        return np.argmax(self.forward(x), axis=1).astype(np.int64)

    def loss_and_grad(self, x, y, accumulate=False, mean_over=None, on_layer=None, first_row=0,
                      penalty=True):
        """Mean loss over the batch; the gradients overwrite params.grad.

        Gradient accumulation: accumulate=True adds the gradients to
        params.grad instead (inside the weight-gradient GEMMs, beta = 1: no
        extra pass), and mean_over=N makes them those of a mean over N
        examples, this batch's share of a bigger one. K micro-batches of n
        with mean_over=K*n, the first with accumulate=False, leave the
        gradients of their K*n-example batch, to float32 rounding. The
        returned loss is this batch's own mean.

        first_row: these rows are rows first_row.. of a bigger batch, so
        their dropout masks are those the whole batch draws in one call
        (give each part the same ``step``): gdfast.distributed computes a
        batch in parts this way.

        penalty=False leaves the L2 term (alpha) out of the gradients and
        the loss, for all parts of a batch but one. ``last_penalty`` is the
        term the last call's loss includes (0.0 without it).

        on_layer(l): called from inside the backward pass as soon as layer
        l's gradients (``w{l}`` and ``b{l}``, one contiguous slice of
        params.grad) are final, for l = n_layers down to 1, while the layers
        below are still to be computed: e.g. to start a non-blocking
        allreduce of them (gdfast.distributed does). It runs in the calling
        thread with the GIL; an exception it raises stops the backward pass
        and is raised here (params.grad is then unspecified)."""
        if mean_over is not None and (isinstance(mean_over, bool) or int(mean_over) != mean_over
                                      or mean_over < 1):
            raise ValueError(f"mean_over must be a positive integer or None, got {mean_over!r}")
        if isinstance(first_row, bool) or not isinstance(first_row, (int, np.integer)) \
                or first_row < 0:
            raise ValueError(f"first_row must be an integer >= 0, got {first_row!r}")
        return self._core.loss_and_grad(x, y, bool(accumulate),
                                        0 if mean_over is None else int(mean_over), on_layer,
                                        int(first_row), bool(penalty))

    @property
    def last_penalty(self):
        """The L2 penalty term included in the last loss_and_grad's loss."""
        return self._core.last_penalty

    def train_step(self, x, y, optimizer, max_grad_norm=None, skip_nonfinite=False, agc=None,
                   agc_eps=1e-3, agc_output=False):
        """One step of training on a mini-batch; returns the mean loss before the update.

        Forward, backward and the update of `optimizer` (a gdfast optimizer
        built over ``self.params``) run in one GIL-free call. The result is
        bit for bit that of loss_and_grad() then
        optimizer.step(max_grad_norm=max_grad_norm), but ``params.grad`` is
        scratch space afterwards: for one example the weight gradients are
        formed inside the update and never stored. Use loss_and_grad() +
        step() when you need the gradients.

        max_grad_norm: clip by the global gradient norm, as optimizer.step
            does, and return ``(loss, norm before clipping)``. ``math.inf``
            only measures the norm; for one example it then comes from the
            outer products' factors (equal up to rounding), so the fused
            path still applies. A finite value at batch 1 stores the
            gradients to measure them exactly.
        skip_nonfinite: when the loss is NaN or infinite, apply no update
            (parameters, optimizer state and its step count unchanged) and
            return that loss (norm NaN), so the caller can stop training
            with parameters that are still good.
        agc: adaptive gradient clipping with this clip factor (e.g. 0.01) of
            every layer but the output layer, as the NFNet paper does
            (agc_output=True clips that one too); the same as an optimizer
            built with agc=... on those tensors' group (see gdfast.Adam).
            Give it here or in the optimizer's groups, not both. The gradients
            of every step are then stored (no batch-1 fusion).
        """
        clip, end = 0.0, 0
        if agc is not None:
            if not (isinstance(agc, (int, float, np.integer, np.floating))
                    and not isinstance(agc, bool) and 0 < agc < np.inf):
                raise ValueError(f"agc must be a finite number > 0 or None, got {agc!r}")
            if not (isinstance(agc_eps, (int, float, np.integer, np.floating))
                    and not isinstance(agc_eps, bool) and 0 < agc_eps < np.inf):
                raise ValueError(f"agc_eps must be a finite number > 0, got {agc_eps!r}")
            if any(g.get("agc") for g in getattr(optimizer, "param_groups", [])):
                raise ValueError("agc is set in the optimizer's param groups already; give it "
                                 "there or to train_step, not both")
            clip = float(agc)
            end = self.params.size if agc_output else self.params.offset(f"w{self.n_layers}")
        loss, norm = self._core.train_step(x, y, optimizer, self.params, max_grad_norm,
                                           skip_nonfinite, clip, float(agc_eps), end)
        return loss if max_grad_norm is None else (loss, norm)

    def evaluate(self, x, y, batch_size=1000):
        """(mean loss, accuracy) over a data set, without touching gradients."""
        if isinstance(x, np.ndarray) and x.ndim != 2:  # before evaluate() reads x.shape[0]
            raise ValueError(f"x must have shape (n, {self.sizes[0]}), got {x.shape}")
        return evaluate(self.forward, self.loss, self.sizes[-1], x, y, batch_size,
                        log_probs=self._log_probs)

    def _log_probs(self, x):
        """Exact float64 log-softmax of the logits of x (NumPy; for the rare rows
        whose float32 probabilities underflow)."""
        ref = _ReferenceMLP(self.sizes, self.activation, self.loss, self.output_activation,
                            dict(self.params.items()))  # no dropout: inference
        return log_softmax(ref._forward(x)[-1])

    # -- saving and loading ---------------------------------------------------

    def state_dict(self):
        """{"format", "version", "config", "params", "step"}: the settings to
        rebuild this model, copies of its tensors (w1, b1, ...) and its
        training-call count (the dropout masks' position)."""
        seed = int(self.seed) if isinstance(self.seed, (int, np.integer)) else None
        config = {"sizes": list(self.sizes), "activation": self.activation,
                  "output_activation": self.output_activation, "loss": self.loss,
                  "init": self.init, "seed": seed, "alpha": self.alpha, "dropout": self.dropout}
        return {"format": FORMAT, "version": VERSION, "config": config,
                "params": {name: np.array(arr) for name, arr in self.params.items()},
                "step": self.step}

    def load_state_dict(self, state):
        """Copy the tensors of `state` (from state_dict()) into this model, in
        place (the optimizer's views stay valid). Everything is checked first,
        and a refused state changes nothing: format and version, the
        architecture (sizes, activation, output_activation, loss, alpha and
        dropout must equal this model's, a state without the last two meaning
        none; a ValueError names what differs), the step, the tensor names, and
        each tensor's shape and values. Tensors may be any float dtype
        (float16/32/64): they are stored as float32, as the arena holds them,
        and must be finite there (a float64 beyond float32's range is refused).
        init and seed are taken from `state` when it has them."""
        config, params = _check_state(state)
        mine = self.state_dict()["config"]

        def arch(c, k):  # "relu" and ["relu", "relu"] are the same layers, 0.2 and [0.2, 0.2] too
            if k == "activation":
                return hidden_activations(c[k], self.n_layers - 1)
            if k == "dropout":
                return _check_dropout(c.get(k, 0.0), self.n_layers - 1)
            return c.get(k, _REGULARIZATION.get(k))
        diff = [f"{k}: file {config.get(k, _REGULARIZATION.get(k))!r}, this model {mine[k]!r}"
                for k in _ARCH + tuple(_REGULARIZATION) if arch(config, k) != arch(mine, k)]
        if diff:
            raise ValueError(f"state is for a different model ({'; '.join(diff)})")
        step = state.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or \
                not 0 <= step < 2 ** 64:
            raise ValueError(f"state 'step' must be an integer >= 0, got {step!r}")
        params = _check_params(params, _shapes(self.sizes))
        for name, arr in params.items():
            self.params[name][...] = arr
        self.step = int(step)
        self.init = config.get("init", self.init)
        self.seed = config.get("seed", self.seed)

    def save(self, path):
        """Write state_dict() to one .npz at `path` (no pickle), atomically:
        an interrupted save leaves the previous file. Returns the path."""
        return ckpt.save(path, self.state_dict())

    @classmethod
    def load(cls, path):
        """The model in `path`: a file written by save(), or a Trainer
        checkpoint (last.npz, best.npz). Anything else, or a damaged file,
        raises gdfast.checkpoint.CheckpointError naming the file."""
        state = ckpt.load(path)
        try:
            if _is_trainer(state):
                state = _from_trainer(state)
            config, params = _check_state(state)
            params = _check_params(params, _shapes(config["sizes"]))
            output_activation = config["output_activation"] if config["loss"] == "mse" else None
            model = cls(config["sizes"], config["activation"], config["loss"],
                        init=config.get("init", "he"), seed=config.get("seed", 0),
                        output_activation=output_activation,
                        **{k: config.get(k, v) for k, v in _REGULARIZATION.items()})
        except ckpt.CheckpointError as e:
            raise ckpt.CheckpointError(f"{path}: {e}") from None
        except ValueError as e:
            raise ckpt.CheckpointError(f"{path}: not a usable gdfast.MLP file: {e}") from None
        model.load_state_dict({"format": FORMAT, "version": VERSION, "config": config,
                               "params": params, "step": state.get("step", 0)})
        return model

    def __repr__(self):
        reg = "".join(f", {k}={getattr(self, k)!r}" for k, none in _REGULARIZATION.items()
                      if getattr(self, k) != none)
        return (f"MLP(sizes={self.sizes}, activation={self.activation!r}, loss={self.loss!r}, "
                f"output_activation={self.output_activation!r}{reg})")


def _shapes(sizes):
    """{"w1": (sizes[0], sizes[1]), "b1": (sizes[1],), ...}: the tensors of an MLP."""
    shapes = {}
    for l in range(1, len(sizes)):
        shapes[f"w{l}"] = (sizes[l - 1], sizes[l])
        shapes[f"b{l}"] = (sizes[l],)
    return shapes


def _check_activation(activation, n_hidden, name="activation"):
    """The hidden layers' activation names, from one name or a list of n_hidden."""
    if isinstance(activation, str) or not isinstance(activation, (list, tuple)):
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name} must be one of {ACTIVATIONS} or a list of them, "
                             f"got {activation!r}")
        return [activation] * n_hidden
    if len(activation) != n_hidden:
        raise ValueError(f"{name} must be one name or a list of {n_hidden} (one per hidden "
                         f"layer), got {len(activation)} names")
    for i, a in enumerate(activation):
        if a not in ACTIVATIONS:
            raise ValueError(f"{name}[{i}] must be one of {ACTIVATIONS}, got {a!r}")
    return list(activation)


def _check_alpha(alpha, name="alpha"):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def _check_dropout(dropout, n_hidden, name="dropout"):
    """The hidden layers' dropout rates as floats, from one rate or a list of n_hidden."""
    def rate(p, where):
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
                or not 0 <= p < 1:
            raise ValueError(f"{where} must be a number in [0, 1), got {p!r}")
        return float(p)
    if isinstance(dropout, (list, tuple)):
        if len(dropout) != n_hidden:
            raise ValueError(f"{name} must be one rate or a list of {n_hidden} (one per hidden "
                             f"layer), got {len(dropout)} rates")
        return [rate(p, f"{name}[{i}]") for i, p in enumerate(dropout)]
    return [rate(dropout, name)] * n_hidden


def _is_trainer(state):
    return isinstance(state, dict) and "format" not in state and \
        all(k in state for k in ("params", "layout", "model"))


def _from_trainer(state):
    """A Trainer checkpoint's model, as a state_dict() (without init/seed,
    which it does not record)."""
    info = state["model"]
    if not isinstance(info, dict) or info.get("class") != "MLP":
        got = info.get("class") if isinstance(info, dict) else info
        raise ckpt.CheckpointError(f"Trainer checkpoint of a {got!r}, not of an MLP")
    missing = [k for k in _ARCH if k not in info]
    if missing:
        raise ckpt.CheckpointError(f"Trainer checkpoint lacks model {missing}")
    config = {k: info[k] for k in _ARCH + tuple(_REGULARIZATION) if k in info}
    return {"format": FORMAT, "version": VERSION, "config": config,
            "params": state["params"], "step": state.get("model_step", 0)}


def _check_state(state):
    """(config, params) of a state_dict(), its structure and config checked."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ckpt.CheckpointError(f"format {got!r}, expected {FORMAT!r} (an MLP file "
                                   "or a Trainer checkpoint)")
    if state.get("version") != VERSION:
        raise ckpt.CheckpointError(f"MLP state version {state.get('version')!r}, this gdfast "
                                   f"reads version {VERSION}")
    config, params = state.get("config"), state.get("params")
    if not isinstance(config, dict) or not isinstance(params, dict):
        raise ckpt.CheckpointError("MLP state needs a 'config' dict and a 'params' dict")
    missing = [k for k in _ARCH if k not in config]
    if missing:
        raise ckpt.CheckpointError(f"MLP state config lacks {missing}")
    sizes = config["sizes"]
    if not isinstance(sizes, (list, tuple)) or len(sizes) < 2 or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
            for s in sizes):
        raise ValueError(f"config 'sizes' must be at least two positive integers, got {sizes!r}")
    _check_activation(config["activation"], len(sizes) - 2, "config 'activation'")
    for k, allowed in (("output_activation", ACTIVATIONS), ("loss", LOSSES)):
        if config[k] not in allowed:
            raise ValueError(f"config {k!r} must be one of {allowed}, got {config[k]!r}")
    if "init" in config and config["init"] not in INITS:
        raise ValueError(f"config 'init' must be one of {INITS}, got {config['init']!r}")
    if "alpha" in config:
        _check_alpha(config["alpha"], "config 'alpha'")
    if "dropout" in config:
        _check_dropout(config["dropout"], len(sizes) - 2, "config 'dropout'")
    seed = config.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"config 'seed' must be an integer or None, got {seed!r}")
    return dict(config, sizes=[int(s) for s in sizes]), params


def _check_params(params, shapes):
    """params as float32 arrays, refused unless they are exactly the tensors
    of `shapes`, float, of the right shape and finite."""
    if set(params) != set(shapes):
        got = sorted(map(str, params))  # str: a damaged file may hold non-string keys
        raise ValueError(f"state has tensors {got}, expected {sorted(shapes)}")
    out = {}
    for name, shape in shapes.items():
        arr = params[name]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ValueError(f"tensor {name!r} must be a float array, got {got}")
        if arr.shape != shape:
            raise ValueError(f"tensor {name!r} has shape {arr.shape}, expected {shape}")
        with np.errstate(over="ignore"):  # overflow shows as inf, refused below
            arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"tensor {name!r} has NaN or infinite values (as float32)")
        out[name] = arr
    return out


def log_softmax(z):
    """Row-wise log-softmax, exact for logits far apart."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def evaluate(forward, loss, n_classes, x, y, batch_size=1000, log_probs=None):
    """(mean loss, accuracy) of a model given by its `forward` (probabilities
    for the cross-entropies, outputs for mse) over x, y in batches. Accuracy is
    None for regression targets: float rows that are not class
    distributions (one-hot or soft labels: non-negative, summing to 1).

    log_probs: exact log-probabilities of rows of x; the cross-entropy of rows
    whose probabilities underflow float32 comes from it (else it is capped)."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    y = np.asarray(y)
    n = len(y) if y.ndim else 0
    if getattr(x, "shape", (None,))[0] != n:
        raise ValueError(f"x and y must have the same number of rows, "
                         f"got {getattr(x, 'shape', None)} and {y.shape}")
    if n == 0:
        raise ValueError("evaluate needs at least one example")
    if y.dtype.kind in "iu":
        if y.ndim != 1:
            raise ValueError(f"y of integer class labels must be 1-D, got shape {y.shape}")
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"y must hold class labels in [0, {n_classes}), "
                             f"got labels from {y.min()} to {y.max()}")
    elif y.dtype.kind == "f":
        if y.shape != (n, n_classes):
            raise ValueError(f"y of float targets must have shape {(n, n_classes)}, "
                             f"got {y.shape}")
    else:
        raise TypeError(f"y must be integer class labels or float targets, got dtype {y.dtype}")
    classes = y.ndim == 1 or bool((y >= 0).all() and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))
    total, correct = 0.0, 0
    for start in range(0, n, int(batch_size)):
        xb = x[start:start + batch_size]
        out = forward(xb).astype(np.float64)
        yb = y[start:start + batch_size]
        if yb.ndim == 1:
            t = np.zeros_like(out)
            t[np.arange(len(yb)), yb] = 1.0
            labels = yb
        else:
            t = yb.astype(np.float64)
            labels = np.argmax(t, axis=1)
        if loss == "cross_entropy":
            logp = np.log(np.maximum(out, np.finfo(np.float32).tiny))
            lost = ((out < _P_EXACT) & (t != 0)).any(axis=1)
            if log_probs is not None and lost.any():
                logp[lost] = log_probs(xb[lost])
            total -= float((t * logp).sum())
        elif loss == "binary_cross_entropy":
            tiny = np.finfo(np.float32).tiny
            total -= float((t * np.log(np.maximum(out, tiny))).sum()
                           + ((1 - t) * np.log(np.maximum(1 - out, tiny))).sum())
        else:
            total += 0.5 * float(((out - t) ** 2).sum())
        correct += int((np.argmax(out, axis=1) == labels).sum())
    return total / n, (correct / n if classes else None)
