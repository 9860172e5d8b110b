# The MLP's compiled core (src/mlp.c): input checks, reusable work buffers,
# one GIL-free C call per forward or forward+backward.
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

cdef extern from "mlp.h" nogil:
    int GD_LOSS_CROSS_ENTROPY, GD_LOSS_MSE, GD_LOSS_BINARY, GD_MLP_SKIPPED, GD_MLP_STOPPED
    ctypedef int (*gd_layer_done)(void *ctx, int layer) noexcept
    ctypedef struct gd_mlp:
        int n_layers
        const gd_index *sizes
        const int *hidden_act
        int out_act
        int loss
        double alpha
        const double *dropout
        uint64_t drop_seed, drop_step
        gd_index drop_row0
    gd_index gdfast_mlp_workspace(const gd_mlp *net, gd_index n)
    float *gdfast_mlp_output(const gd_mlp *net, float *ws, gd_index n)
    int gdfast_mlp_forward(const gd_mlp *net, const float *params, const float *x, gd_index n,
                           float *ws)
    gd_index gdfast_mlp_loss_grad(const gd_mlp *net, const float *params, float *grads,
                                  const float *x, gd_index n, const int64_t *labels,
                                  const float *targets, float *ws, double *loss)
    gd_index gdfast_mlp_loss_grad_acc(const gd_mlp *net, const float *params, float *grads,
                                      const float *x, gd_index n, const int64_t *labels,
                                      const float *targets, float *ws, double *loss,
                                      gd_index n_mean, int acc, gd_layer_done done, void *ctx,
                                      double *penalty)
    gd_index gdfast_mlp_train_step(const gd_mlp *net, float *params, float *grads,
                                   const float *x, gd_index n, const int64_t *labels,
                                   const float *targets, float *ws, gd_plan *plan,
                                   int skip_nonfinite, double *loss)

ACTIVATIONS = {"identity": GD_ACT_IDENTITY, "relu": GD_ACT_RELU,
               "sigmoid": GD_ACT_SIGMOID, "tanh": GD_ACT_TANH}
LOSSES = {"cross_entropy": GD_LOSS_CROSS_ENTROPY, "mse": GD_LOSS_MSE,
          "binary_cross_entropy": GD_LOSS_BINARY}

# forward() works through big inputs in chunks of this many rows so its work
# space stays small.
cdef gd_index FORWARD_CHUNK = 1024


cdef class MLPCore:
    """C state of an MLP: layer sizes, arena pointers and grown-on-demand buffers."""
    cdef gd_mlp net
    cdef cnp.ndarray sizes, acts, data, grad, ws, labels, dropout
    cdef object params  # the Params arena: its buffers must stay data and grad
    cdef gd_index rows  # batch size the buffers currently hold
    cdef gd_index _n    # the checked batch (set by _prepare)
    cdef const int64_t *_labels
    cdef const float *_targets
    # Set (under the GIL) for a whole call, GIL-free part included: a second
    # thread running the same MLP gets an error instead of sharing the batch
    # fields and work buffers (or freeing them, when its batch is bigger).
    cdef bint busy
    cdef object on_layer, on_layer_error   # loss_and_grad's on_layer, while it runs
    cdef readonly double last_penalty      # the L2 term in loss_and_grad's last loss

    cdef int _enter(self) except -1:
        if self.busy:
            raise RuntimeError("this MLP is already running in another thread; "
                               "use one MLP per thread or a lock")
        self.busy = True
        return 0

    def __init__(self, sizes, activations, str output_activation, str loss, params,
                 double alpha=0.0, dropout=None, uint64_t seed=0):
        # activations and dropout (checked rates, or None): one per hidden
        # layer (len(sizes) - 2 of them); seed keys the dropout masks
        self.sizes = np.ascontiguousarray(sizes, dtype=np.int64)
        self.params = params
        self.data = check_f32(params.data, "params.data", writeable=True)
        self.grad = check_f32(params.grad, "params.grad", writeable=True)
        self.net.n_layers = len(self.sizes) - 1
        self.net.sizes = <const gd_index *>cnp.PyArray_DATA(self.sizes)
        self.acts = np.array([ACTIVATIONS[a] for a in activations], dtype=np.intc)
        if len(self.acts) != self.net.n_layers - 1:
            raise ValueError(f"activations must hold {self.net.n_layers - 1} names, one per "
                             f"hidden layer, got {len(self.acts)}")
        self.net.hidden_act = <const int *>cnp.PyArray_DATA(self.acts)
        self.net.out_act = ACTIVATIONS[output_activation]
        self.net.loss = LOSSES[loss]
        self.net.alpha = alpha
        self.net.dropout = NULL
        if dropout is not None:
            self.dropout = np.ascontiguousarray(dropout, dtype=np.float64)
            if len(self.dropout) != self.net.n_layers - 1:
                raise ValueError(f"dropout must hold {self.net.n_layers - 1} rates, one per "
                                 f"hidden layer, got {len(self.dropout)}")
            self.net.dropout = <const double *>cnp.PyArray_DATA(self.dropout)
        self.net.drop_seed = seed
        self.net.drop_step = 0
        self.net.drop_row0 = 0
        self.rows = 0
        self._reserve(1)

    @property
    def step(self):
        """Training calls (loss_and_grad, train_step) so far: the dropout masks' counter."""
        return self.net.drop_step

    @step.setter
    def step(self, uint64_t value):
        self.net.drop_step = value

    cdef int _check_arena(self, bint writes_grad, bint writes_data) except -1:
        """The arena still holds the buffers the C core points into, and the
        ones this call writes are writeable (checked before anything changes)."""
        if self.params.data is not self.data or self.params.grad is not self.grad:
            raise ValueError("the arena's data or grad buffer was replaced after the MLP was "
                             "built; update values in place instead "
                             "(model.params.data[...] = new)")
        if writes_grad and not cnp.PyArray_ISWRITEABLE(self.grad):
            raise ValueError("params.grad is read-only; the gradients are written into it")
        if writes_data and not cnp.PyArray_ISWRITEABLE(self.data):
            raise ValueError("params.data is read-only; train_step updates it in place")
        return 0

    cdef int _check_apart(self, cnp.ndarray a, str name, bint writes_data) except -1:
        """a is read while params.grad (and params.data if writes_data) are written."""
        if overlaps(a, self.grad):
            raise ValueError(f"{name} must not share memory with params.grad")
        if writes_data and overlaps(a, self.data):
            raise ValueError(f"{name} must not share memory with params.data")
        return 0

    cdef _reserve(self, gd_index n):
        """Grow the work buffers to hold n rows (never shrinks)."""
        if n <= self.rows:
            return
        self.ws = np.empty(gdfast_mlp_workspace(&self.net, n), dtype=np.float32)
        self.labels = np.empty(n, dtype=np.int64)
        self.rows = n

    cdef cnp.ndarray _check_x(self, object x):
        cdef cnp.ndarray X = check_f32(x, "x")
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"x must have shape (n, {self.sizes[0]}), got {x.shape}")
        return X

    def forward(self, x):
        """Network outputs for x: probabilities (cross-entropy) or activations (MSE)."""
        self._enter()
        try:
            return self._forward(x)
        finally:
            self.busy = False

    cdef _forward(self, x):
        self._check_arena(False, False)
        cdef cnp.ndarray X = self._check_x(x)
        cdef gd_index n = X.shape[0], n_out = self.sizes[self.net.n_layers]
        cdef cnp.ndarray out = np.empty((n, n_out), dtype=np.float32)
        cdef gd_index start, rows
        cdef int status = 0
        self._reserve(min(n, FORWARD_CHUNK))
        cdef float *ws = <float *>cnp.PyArray_DATA(self.ws)
        cdef const float *params = <const float *>cnp.PyArray_DATA(self.data)
        cdef const float *px = <const float *>cnp.PyArray_DATA(X)
        cdef float *po = <float *>cnp.PyArray_DATA(out)
        with nogil:
            start = 0
            while start < n and status == 0:
                rows = min(n - start, FORWARD_CHUNK)
                status = gdfast_mlp_forward(&self.net, params, px + start * self.net.sizes[0],
                                            rows, ws)
                if status == 0:
                    memcpy(po + start * n_out, gdfast_mlp_output(&self.net, ws, rows),
                           rows * n_out * sizeof(float))
                start += rows
        if status != 0:
            raise MemoryError("MLP forward could not allocate a GEMM packing buffer")
        return out

    cdef tuple _prepare(self, object x, object y, bint writes_data):
        """Check a batch for a call writing params.grad (and params.data if
        writes_data); set _n, _labels, _targets. Returns the arrays to keep alive."""
        self._check_arena(True, writes_data)
        cdef cnp.ndarray X = self._check_x(x)
        cdef gd_index n = X.shape[0], n_out = self.sizes[self.net.n_layers]
        cdef cnp.ndarray T = None
        cdef const int64_t *lab
        cdef gd_index i
        if n == 0:
            raise ValueError(f"x must hold at least one row, got shape {x.shape}")
        self._check_apart(X, "x", writes_data)
        if not isinstance(y, np.ndarray):
            raise TypeError(f"y must be a numpy.ndarray of integer labels or float32 targets, "
                            f"got {type(y).__name__}")
        self._reserve(n)
        self._labels = NULL
        self._targets = NULL
        if y.dtype.kind in "iu":
            if y.ndim != 1 or y.shape[0] != n:
                raise ValueError(f"integer labels y must have shape ({n},) to match x, "
                                 f"got {y.shape}")
            np.copyto(self.labels[:n], y, casting="unsafe")
            lab = <const int64_t *>cnp.PyArray_DATA(self.labels)
            for i in range(n):
                if lab[i] < 0 or lab[i] >= n_out:
                    raise ValueError(f"y[{i}] = {y[i]} is not a class label in [0, {n_out})")
            self._labels = lab
        elif y.dtype.type is np.float32:  # any byte order: check_f32 refuses non-native
            T = check_f32(y, "y")
            if T.ndim != 2 or T.shape[0] != n or T.shape[1] != n_out:
                raise ValueError(f"float32 targets y must have shape ({n}, {n_out}), "
                                 f"got {y.shape}")
            self._check_apart(T, "y", writes_data)
            self._targets = <const float *>cnp.PyArray_DATA(T)
        else:
            raise TypeError(f"y must hold integer class labels or float32 targets, "
                            f"got dtype {y.dtype}")
        self._n = n
        return (X, T)

    cdef gd_index _loss_grad(self, const float *x, double *loss, gd_index n_mean,
                             int acc, bint hook) noexcept nogil:
        return gdfast_mlp_loss_grad_acc(&self.net, <const float *>cnp.PyArray_DATA(self.data),
                                        <float *>cnp.PyArray_DATA(self.grad), x, self._n,
                                        self._labels, self._targets,
                                        <float *>cnp.PyArray_DATA(self.ws), loss, n_mean, acc,
                                        _tell_layer_done if hook else <gd_layer_done>NULL,
                                        <void *>self, &self.last_penalty)

    def loss_and_grad(self, x, y, bint accumulate=False, gd_index mean_over=0, on_layer=None,
                      gd_index first_row=0, bint penalty=True):
        """Mean loss over the batch; gradients overwrite params.grad (accumulate:
        are added to it), as those of a mean over mean_over examples (0: the
        batch). on_layer(l) is called as layer l's gradients become final.
        first_row: the rows' place in a bigger batch, for the dropout masks.
        penalty=False leaves the L2 term out of gradients and loss."""
        if on_layer is not None and not callable(on_layer):
            raise TypeError(f"on_layer must be callable or None, got {type(on_layer).__name__}")
        if first_row < 0:
            raise ValueError(f"first_row must be >= 0, got {first_row}")
        self._enter()
        self.on_layer, self.on_layer_error = on_layer, None
        self.net.drop_row0 = first_row
        cdef double alpha = self.net.alpha
        if not penalty:
            self.net.alpha = 0.0
        self.last_penalty = 0.0
        try:
            return self._loss_and_grad(x, y, accumulate, mean_over)
        finally:
            self.busy = False
            self.on_layer = None
            self.net.drop_row0 = 0
            self.net.alpha = alpha

    cdef _loss_and_grad(self, x, y, bint acc, gd_index mean_over):
        keep = self._prepare(x, y, False)
        if mean_over == 0:
            mean_over = self._n
        if mean_over < self._n:
            raise ValueError(f"mean_over must be at least the batch's {self._n} examples, "
                             f"got {mean_over}")
        cdef const float *px = <const float *>cnp.PyArray_DATA(<cnp.ndarray>keep[0])
        cdef double loss = 0.0
        cdef gd_index status
        cdef bint hook = self.on_layer is not None
        with nogil:
            status = self._loss_grad(px, &loss, mean_over, acc, hook)
        if status == GD_MLP_STOPPED:
            error, self.on_layer_error = self.on_layer_error, None
            raise error
        if status != 0:
            raise MemoryError("MLP backward could not allocate a GEMM packing buffer")
        self.net.drop_step += 1
        return loss

    def train_step(self, x, y, optimizer, params, max_grad_norm=None, skip_nonfinite=False,
                   double agc=0.0, double agc_eps=1e-3, gd_index agc_end=0):
        """Forward, backward and the optimizer's update in one GIL-free stretch.
        Returns (loss, gradient norm or None); see MLP.train_step. agc > 0:
        AGC of the tensors before arena position agc_end for this step."""
        cdef double mx = max_norm_arg(max_grad_norm)
        self._enter()
        try:
            return self._train_step(x, y, optimizer, params, mx, skip_nonfinite, agc, agc_eps,
                                    agc_end)
        finally:
            self.busy = False

    cdef _train_step(self, x, y, optimizer, params, double mx, bint skip, double agc,
                     double agc_eps, gd_index agc_end):
        keep = self._prepare(x, y, True)
        cdef const float *px = <const float *>cnp.PyArray_DATA(<cnp.ndarray>keep[0])
        cdef double loss = 0.0
        cdef gd_index status = 0
        begin = getattr(optimizer, "_begin_step", None)
        if begin is None:
            raise TypeError(f"optimizer must be a gdfast optimizer over this MLP's params, "
                            f"got {type(optimizer).__name__}")
        cdef StepPlan plan = begin(params)
        plan.plan.max_norm = mx
        if agc > 0:
            plan._agc_only_below(agc, agc_eps, agc_end)
        try:
            with nogil:
                status = gdfast_mlp_train_step(
                    &self.net, <float *>cnp.PyArray_DATA(self.data),
                    <float *>cnp.PyArray_DATA(self.grad), px, self._n, self._labels,
                    self._targets, <float *>cnp.PyArray_DATA(self.ws), &plan.plan, skip, &loss)
        finally:
            # a skipped update is no step: the optimizer's count stays
            optimizer._end_step(status != GD_MLP_SKIPPED)
        if status == 0 or status == GD_MLP_SKIPPED:  # the masks were drawn either way
            self.net.drop_step += 1
        if status == GD_MLP_SKIPPED:
            return loss, (float("nan") if mx > 0 else None)
        if status != 0:
            raise MemoryError("MLP backward could not allocate a GEMM packing buffer")
        return loss, (plan.plan.norm if mx > 0 else None)


cdef int _tell_layer_done(void *ctx, int layer) noexcept nogil:
    """gd_layer_done for MLPCore: calls its on_layer(layer) under the GIL; an
    exception is kept for the caller and stops the backward pass."""
    with gil:
        core = <MLPCore>ctx
        try:
            core.on_layer(layer)
        except BaseException as e:
            core.on_layer_error = e
            return 1
    return 0
