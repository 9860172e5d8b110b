# Optimizer glue: validated pointers are cached in a StepPlan at construction,
# so a step costs a few attribute reads, one hyperparameter sync and one
# GIL-free C call. The Python classes in gdfast/optim.py build on _OptimCore.

from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset
from libc.stdint cimport uintptr_t
from libc.math cimport pow, sqrt
from time import perf_counter as _perf_counter

cdef extern from "optim.h" nogil:
    enum:
        GD_SGD
        GD_RMSPROP
        GD_ADAM
        GD_ADAGRAD
        GD_LOOKAHEAD
        GD_LION
        GD_F_WD
        GD_F_DECOUPLED
        GD_F_MOMENTUM
        GD_F_FIRST
        GD_F_NESTEROV
        GD_F_CENTERED
        GD_F_AMSGRAD
        GD_F_MAXIMIZE
        GD_NORM_BLOCK
    ctypedef struct gd_hyper:
        int kind, flags
        float gscale, lr, wd, decay, momentum, dampening1m, alpha, alpha1m
        float beta1, beta1m, beta2, beta2m, step_size, inv_bc2_sqrt, eps
        int ema
        float ema_m, ema_m1m
    ctypedef struct gd_segment:
        float *p
        const float *g
        float *s[3]
        gd_index n
        gd_index start
        int group
        float *ema
    ctypedef struct gd_agc:
        int seg
        gd_index off, n, units
        double clip, eps
        float *scale
        float *acc
    ctypedef struct gd_plan:
        gd_segment *seg
        int nseg
        gd_hyper *hyper
        int ngroups
        gd_index total
        double max_norm
        double *block_sums
        double norm
        gd_agc *agc
        int nagc, agc_on, ema_on
    int gdfast_optim_run(gd_plan *plan)
    gd_index gdfast_agc_acc_floats(gd_index n, gd_index units)
    void gdfast_optim_agc_scales(gd_plan *plan)
    void gdfast_optim_agc_clip(gd_plan *plan)
    double gdfast_optim_grad_norm(gd_plan *plan)
    void gdfast_optim_scale(gd_plan *plan, float c)
    void gdfast_clip_split(double coef, float *hi, float *lo)
    void gdfast_optim_clamp(gd_plan *plan, float lo, float hi)
    void gdfast_optim_split(gd_index total, int nt, int t, gd_index *lo, gd_index *hi)
    void gdfast_rmw_pass(float **rw, int nrw, const float **ro, int nro, gd_index n)
    void gdfast_triad_pass(float *a, const float *b, const float *c, float s, gd_index n)

OPTIM_KINDS = {"sgd": GD_SGD, "rmsprop": GD_RMSPROP, "adam": GD_ADAM, "adagrad": GD_ADAGRAD,
               "lion": GD_LION}


cdef inline float *_fptr(object a):
    return <float *>cnp.PyArray_DATA(<cnp.ndarray>a) if a is not None else NULL


cdef class StepPlan:
    """One optimizer step over fixed segments, runnable without the GIL.

    Built by the optimizers; `run()` (cdef, nogil) is what fused training
    steps call between an optimizer's `_begin_step` and `_end_step`:

        cdef StepPlan plan = optimizer._begin_step(params)  # with the GIL
        with nogil:
            ...  # forward, backward into params.grad
            plan.run()
        optimizer._end_step()
    """
    cdef gd_plan plan
    cdef list _keep  # the arrays whose memory the segments point into
    cdef object _agc_bufs  # the AGC tensors' scales and sums
    cdef int *agc_group    # each AGC tensor's param group

    def __cinit__(self):
        memset(&self.plan, 0, sizeof(gd_plan))
        self.agc_group = NULL

    def __dealloc__(self):
        free(self.plan.seg)
        free(self.plan.hyper)
        free(self.plan.block_sums)
        free(self.plan.agc)
        free(self.agc_group)

    cdef int _set_agc(self, list tensors) except -1:
        """tensors: [(segment, offset in it, n, units, group)], the tensors AGC may clip."""
        cdef Py_ssize_t k, n = len(tensors), units = sum(t[3] for t in tensors)
        cdef Py_ssize_t sums = sum(gdfast_agc_acc_floats(t[2], t[3]) for t in tensors)
        self.plan.agc = <gd_agc *>calloc(max(n, 1), sizeof(gd_agc))
        self.agc_group = <int *>calloc(max(n, 1), sizeof(int))
        if self.plan.agc == NULL or self.agc_group == NULL:
            raise MemoryError()
        scale = np.ones(max(units, 1), np.float32)
        acc = np.zeros(max(sums, 1), np.float32)
        self._agc_bufs = (scale, acc)
        cdef float *ps = <float *>cnp.PyArray_DATA(<cnp.ndarray>scale)
        cdef float *pa = <float *>cnp.PyArray_DATA(<cnp.ndarray>acc)
        cdef gd_index used = 0, used_acc = 0
        for k in range(n):
            seg, off, size, u, grp = tensors[k]
            self.plan.agc[k].seg = seg
            self.plan.agc[k].off = off
            self.plan.agc[k].n = size
            self.plan.agc[k].units = u
            self.plan.agc[k].scale = ps + used
            self.plan.agc[k].acc = pa + used_acc
            self.agc_group[k] = grp
            used += u
            used_acc += gdfast_agc_acc_floats(size, u)
        self.plan.nagc = <int>n
        return 0

    cdef int _agc_only_below(self, double clip, double eps, gd_index limit) except -1:
        """This step clips (clip, eps) the AGC tensors before position `limit`, no others."""
        cdef int k
        self.plan.agc_on = 0
        for k in range(self.plan.nagc):
            on = self.plan.seg[self.plan.agc[k].seg].start + self.plan.agc[k].off < limit
            self.plan.agc[k].clip = clip if on else 0.0
            self.plan.agc[k].eps = eps
            if on and clip > 0:
                self.plan.agc_on = 1
        return 0

    cdef int _setup(self, list segments, int ngroups) except -1:
        """segments: [(p, g or None, s0, s1, s2, group)], arrays already checked."""
        cdef Py_ssize_t k, n = len(segments)
        cdef gd_index total = 0
        self._keep = segments
        self.plan.seg = <gd_segment *>calloc(max(n, 1), sizeof(gd_segment))
        self.plan.hyper = <gd_hyper *>calloc(max(ngroups, 1), sizeof(gd_hyper))
        if self.plan.seg == NULL or self.plan.hyper == NULL:
            raise MemoryError()
        self.plan.nseg = <int>n
        self.plan.ngroups = ngroups
        for k in range(n):
            p, g, s0, s1, s2, grp = segments[k][:6]
            self.plan.seg[k].ema = _fptr(segments[k][6]) if len(segments[k]) > 6 else NULL
            self.plan.seg[k].p = _fptr(p)
            self.plan.seg[k].g = _fptr(g)
            self.plan.seg[k].s[0] = _fptr(s0)
            self.plan.seg[k].s[1] = _fptr(s1)
            self.plan.seg[k].s[2] = _fptr(s2)
            self.plan.seg[k].n = cnp.PyArray_SIZE(<cnp.ndarray>p)
            self.plan.seg[k].start = total
            self.plan.seg[k].group = grp
            total += self.plan.seg[k].n
        self.plan.total = total
        self.plan.block_sums = <double *>malloc(
            max((total + GD_NORM_BLOCK - 1) // GD_NORM_BLOCK, 1) * sizeof(double))
        if self.plan.block_sums == NULL:
            raise MemoryError()
        return 0

    cdef int run(self) noexcept nogil:
        return gdfast_optim_run(&self.plan)

    def execute(self):
        """Run the plan once (with the GIL released)."""
        with nogil:
            self.run()

    @property
    def size(self):
        return self.plan.total


def _lookahead_plan(list segments, double alpha):
    """A plan whose run does slow += alpha * (fast - slow); fast = slow.

    segments: [(fast, slow)] pairs of same-size float32 arrays."""
    cdef StepPlan plan = StepPlan()
    plan._setup([(p, None, s, None, None, 0) for p, s in segments], 1)
    plan.plan.hyper[0].kind = GD_LOOKAHEAD
    plan.plan.hyper[0].alpha = <float>alpha
    return plan


cdef inline cnp.ndarray _check_grad(object g, cnp.ndarray p, Py_ssize_t i):
    """grads[i] as a float32 C-contiguous array shaped like params[i] (fast path)."""
    if not cnp.PyArray_Check(g):
        raise TypeError(f"grads[{i}] must be a numpy.ndarray of dtype float32, "
                        f"got {type(g).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>g
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32:
        raise TypeError(f"grads[{i}] must have dtype float32, got {a.dtype}")
    if not cnp.PyArray_ISNOTSWAPPED(a):  # inline: no name string built on the hot path
        check_native(a, f"grads[{i}]")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"grads[{i}] must be C-contiguous; "
                         f"pass numpy.ascontiguousarray(grads[{i}])")
    cdef int nd = cnp.PyArray_NDIM(a), d
    cdef cnp.npy_intp *da = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *dp = cnp.PyArray_DIMS(p)
    if nd != cnp.PyArray_NDIM(p):
        raise ValueError(f"grads[{i}] has shape {(<object>a).shape}, expected "
                         f"{(<object>p).shape} like params[{i}]")
    for d in range(nd):
        if da[d] != dp[d]:
            raise ValueError(f"grads[{i}] has shape {(<object>a).shape}, expected "
                         f"{(<object>p).shape} like params[{i}]")
    return a


cdef inline double _num(dict grp, str key, int gi) except? -1.0:
    """grp[key] as a double, or an error naming the hyperparameter."""
    try:
        v = grp[key]
    except KeyError:
        raise KeyError(f"param_groups[{gi}] has no {key!r}") from None
    try:
        return <double>v
    except TypeError:
        raise TypeError(f"param_groups[{gi}][{key!r}] must be a number, "
                        f"got {type(v).__name__}") from None


cdef inline double _agc_value(dict grp, str key, int gi, bint eps) except? -1.0:
    """grp['agc'] (None or 0: off) or grp['agc_eps'], checked."""
    if not eps and grp.get(key) is None:
        return 0.0
    cdef double v = _num(grp, key, gi)
    if not (v >= 0 if not eps else v > 0) or v == float("inf"):
        raise ValueError(f"param_groups[{gi}][{key!r}] must be a finite number "
                         f"{'> 0' if eps else '>= 0 (0 or None: off)'}, got {grp[key]!r}")
    return v


cdef class _OptimCore:
    """The hot half of every optimizer: hyperparameter sync and the step."""
    cdef StepPlan _plan
    cdef public list param_groups
    cdef public long long _step
    cdef int _kind
    cdef bint _decoupled
    cdef int _states  # bit k: state buffer s[k] exists
    cdef object _arena, _arena_data, _arena_grad
    cdef list _params  # list mode: the parameter arrays, in order
    cdef uintptr_t *_plo  # list mode: parameter spans sorted by address
    cdef uintptr_t *_phi
    cdef Py_ssize_t _nspans  # non-empty parameters only
    # Set (under the GIL) from the start of a step until its GIL-free update
    # is done: a second thread stepping the same optimizer gets an error
    # instead of racing on the plan's gradient pointers and the state buffers.
    cdef bint _busy
    # SGD, per group: has its momentum buffer been started? PyTorch starts a
    # buffer as the gradient at the first step that uses it, also when
    # momentum is switched on mid-run.
    cdef public list _momentum_started
    cdef double *_agc_clip  # per group, this step's AGC clip factor and eps
    cdef double *_agc_eps

    def __cinit__(self, *args, **kwargs):
        self._plo = NULL
        self._phi = NULL
        self._agc_clip = NULL
        self._agc_eps = NULL
        self._busy = False

    @property
    def _in_step(self):
        """True from the start of a step until its GIL-free update is done."""
        return self._busy

    cdef int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("optimizer is already stepping in another thread; "
                               "use one optimizer per thread or a lock")
        self._busy = True
        return 0

    def __dealloc__(self):
        free(self._plo)
        free(self._phi)
        free(self._agc_clip)
        free(self._agc_eps)

    def _bind(self, str kind, bint decoupled, object arena, list segments, int states,
              list agc_tensors):
        """Cache the plan: segments [(p, g or None, s0, s1, s2, group, ema)] and the
        tensors AGC may clip [(segment, offset, n, units, group)], checked by the caller."""
        cdef Py_ssize_t k, n = len(segments)
        if self._busy:  # add_param_group while another thread steps on the old plan
            raise RuntimeError("optimizer is stepping in another thread; add groups between steps")
        self._kind = OPTIM_KINDS[kind]
        self._decoupled = decoupled
        self._states = states
        self._step = 0
        self._momentum_started = [False] * len(self.param_groups)
        plan = StepPlan()
        plan._setup(segments, len(self.param_groups))
        plan._set_agc(agc_tensors)
        free(self._agc_clip)
        free(self._agc_eps)
        self._agc_clip = <double *>calloc(max(len(self.param_groups), 1), sizeof(double))
        self._agc_eps = <double *>calloc(max(len(self.param_groups), 1), sizeof(double))
        if self._agc_clip == NULL or self._agc_eps == NULL:
            raise MemoryError()
        self._plan = plan
        self._arena = arena
        if arena is not None:
            self._arena_data = arena.data
            self._arena_grad = arena.grad
            return
        self._params = [seg[0] for seg in segments]
        spans = sorted((<uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>p),
                        <uintptr_t>cnp.PyArray_NBYTES(<cnp.ndarray>p), i)
                       for i, p in enumerate(self._params) if cnp.PyArray_NBYTES(<cnp.ndarray>p))
        for k in range(1, len(spans)):
            if spans[k][0] < spans[k - 1][0] + spans[k - 1][1]:
                raise ValueError(f"params[{spans[k - 1][2]}] and params[{spans[k][2]}] share "
                                 f"memory; each parameter must be passed once")
        # _bind runs again after add_param_group: free the previous spans
        free(self._plo)
        free(self._phi)
        self._nspans = 0
        self._plo = <uintptr_t *>malloc(max(n, 1) * sizeof(uintptr_t))
        self._phi = <uintptr_t *>malloc(max(n, 1) * sizeof(uintptr_t))
        if self._plo == NULL or self._phi == NULL:
            raise MemoryError()
        self._nspans = len(spans)
        for k in range(self._nspans):
            self._plo[k] = spans[k][0]
            self._phi[k] = spans[k][0] + spans[k][1]

    cdef bint _hits_param(self, cnp.ndarray g):
        """True when g's memory overlaps any parameter (binary search, spans disjoint)."""
        cdef uintptr_t lo = <uintptr_t>cnp.PyArray_DATA(g)
        cdef uintptr_t hi = lo + <uintptr_t>cnp.PyArray_NBYTES(g)
        cdef Py_ssize_t a = 0, b = self._nspans - 1, mid
        if hi == lo or b < 0:
            return False
        # last span starting below hi
        while a < b:
            mid = (a + b + 1) // 2
            if self._plo[mid] < hi:
                a = mid
            else:
                b = mid - 1
        return self._plo[a] < hi and lo < self._phi[a]

    cdef int _bind_grads(self, object grads) except -1:
        cdef Py_ssize_t i, n = len(self._params)
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads must be a list of float32 arrays aligned with params, "
                            f"got {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} arrays, expected {n} (one per parameter)")
        cdef cnp.ndarray g
        for i in range(n):
            g = _check_grad(grads[i], <cnp.ndarray>self._params[i], i)
            if self._hits_param(g):
                raise ValueError(f"grads[{i}] shares memory with a parameter; "
                                 f"gradients must live in their own buffers")
        for i in range(n):
            self._plan.plan.seg[i].g = <float *>cnp.PyArray_DATA(<cnp.ndarray>grads[i])
        return 0

    cdef int _check_arena(self, object params) except -1:
        if params is not self._arena:
            raise ValueError("params is not the Params arena this optimizer was built over")
        if params.data is not self._arena_data or params.grad is not self._arena_grad:
            raise ValueError("the arena's data or grad buffer was replaced after the "
                             "optimizer was built; update values in place instead")
        return 0

    cdef int _check_writeable(self) except -1:
        """A parameter made read-only after construction must not be written:
        checked at every step, before anything changes (one flag per array)."""
        cdef Py_ssize_t i
        if self._arena is not None:
            if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self._arena_data):
                raise ValueError("params.data is read-only; the optimizer updates it in place")
            return 0
        for i in range(len(self._params)):
            if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self._params[i]):
                raise ValueError(f"params[{i}] is read-only; the optimizer updates it in place")
        return 0

    cdef int _fill(self, gd_hyper *h, dict grp, int gi, long long t) except -1:
        """Per-group coefficients for step t, checking every hyperparameter."""
        cdef double lr = _num(grp, "lr", gi), wd = _num(grp, "weight_decay", gi), eps = 0.0
        cdef double mom, damp, alpha, b1, b2, lr_decay, bc1, bc2
        cdef int flags = 0
        if not lr >= 0:
            raise ValueError(f"param_groups[{gi}]['lr'] must be >= 0, got {lr}")
        if not wd >= 0:
            raise ValueError(f"param_groups[{gi}]['weight_decay'] must be >= 0, got {wd}")
        memset(h, 0, sizeof(gd_hyper))
        h.kind = self._kind
        h.lr = <float>lr
        if grp["maximize"]:
            flags |= GD_F_MAXIMIZE
        if wd != 0:
            if self._decoupled:
                flags |= GD_F_DECOUPLED
                h.decay = <float>(1.0 - lr * wd)
            else:
                flags |= GD_F_WD
                h.wd = <float>wd
        if self._kind != GD_SGD and self._kind != GD_LION:  # Lion has no eps
            eps = _num(grp, "eps", gi)
            if not eps >= 0:
                raise ValueError(f"param_groups[{gi}]['eps'] must be >= 0, got {eps}")
            h.eps = <float>eps
        if self._kind == GD_SGD:
            mom = _num(grp, "momentum", gi)
            damp = _num(grp, "dampening", gi)
            if not mom >= 0:
                raise ValueError(f"param_groups[{gi}]['momentum'] must be >= 0, got {mom}")
            if grp["nesterov"]:
                if mom <= 0 or damp != 0:
                    raise ValueError(f"param_groups[{gi}]: nesterov needs momentum > 0 and "
                                     f"dampening == 0, got momentum={mom}, dampening={damp}")
                flags |= GD_F_NESTEROV
            if mom != 0:
                self._need(0, gi, "momentum > 0")
                flags |= GD_F_MOMENTUM | (0 if self._momentum_started[gi] else GD_F_FIRST)
            h.momentum = <float>mom
            h.dampening1m = <float>(1.0 - damp)
        elif self._kind == GD_RMSPROP:
            alpha = _num(grp, "alpha", gi)
            mom = _num(grp, "momentum", gi)
            if not alpha >= 0:
                raise ValueError(f"param_groups[{gi}]['alpha'] must be >= 0, got {alpha}")
            if not mom >= 0:
                raise ValueError(f"param_groups[{gi}]['momentum'] must be >= 0, got {mom}")
            if mom > 0:
                self._need(1, gi, "momentum > 0")
                flags |= GD_F_MOMENTUM
            if grp["centered"]:
                self._need(2, gi, "centered=True")
                flags |= GD_F_CENTERED
            h.alpha = <float>alpha
            h.alpha1m = <float>(1.0 - alpha)
            h.momentum = <float>mom
        elif self._kind == GD_ADAM or self._kind == GD_LION:
            betas = grp["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ValueError(f"param_groups[{gi}]['betas'] must be a pair (beta1, beta2), "
                                 f"got {betas!r}")
            b1 = betas[0]
            b2 = betas[1]
            if not (0 <= b1 < 1 and 0 <= b2 < 1):
                raise ValueError(f"param_groups[{gi}]['betas'] must lie in [0, 1), got {betas!r}")
            h.beta1 = <float>b1
            h.beta1m = <float>(1.0 - b1)
            h.beta2 = <float>b2
            h.beta2m = <float>(1.0 - b2)
            if self._kind == GD_ADAM:
                if grp["amsgrad"]:
                    self._need(2, gi, "amsgrad=True")
                    flags |= GD_F_AMSGRAD
                bc1 = 1.0 - pow(b1, <double>t)
                bc2 = 1.0 - pow(b2, <double>t)
                h.step_size = <float>(lr / bc1)
                h.inv_bc2_sqrt = <float>(1.0 / sqrt(bc2))
        elif self._kind == GD_ADAGRAD:
            lr_decay = _num(grp, "lr_decay", gi)
            if not lr_decay >= 0:
                raise ValueError(f"param_groups[{gi}]['lr_decay'] must be >= 0, got {lr_decay}")
            h.lr = <float>(lr / (1.0 + <double>(t - 1) * lr_decay))
        h.flags = flags
        ema = grp["ema"]
        if ema is not None and ema is not False:
            mom = _num(grp, "ema", gi)
            if not 0 <= mom < 1:
                raise ValueError(f"param_groups[{gi}]['ema'] must be None or a momentum in "
                                 f"[0, 1), got {ema!r}")
            self._need(3, gi, "ema")
            h.ema = 1
            # Keras's use_ema: the average starts as the weights after the first step
            h.ema_m = <float>mom if t > 1 else 0.0
            h.ema_m1m = 1.0 - h.ema_m
        self._agc_clip[gi] = _agc_value(grp, "agc", gi, False)
        self._agc_eps[gi] = _agc_value(grp, "agc_eps", gi, True)
        return 0

    cdef int _need(self, int k, int gi, str what) except -1:
        if not (self._states >> k) & 1:
            raise ValueError(f"param_groups[{gi}]: {what} needs a state buffer this optimizer "
                             f"did not allocate; set it when constructing the optimizer")
        return 0

    cdef int _sync(self, long long t) except -1:
        cdef list groups = self.param_groups
        cdef int gi
        if len(groups) != self._plan.plan.ngroups:
            raise ValueError(f"param_groups has {len(groups)} groups, the optimizer was "
                             f"built with {self._plan.plan.ngroups}")
        for gi in range(self._plan.plan.ngroups):
            grp = groups[gi]
            if not isinstance(grp, dict):
                raise TypeError(f"param_groups[{gi}] must be a dict, got {type(grp).__name__}")
            self._fill(&self._plan.plan.hyper[gi], <dict>grp, gi, t)
        cdef gd_plan *pl = &self._plan.plan
        cdef int k, grp_k
        pl.agc_on = 0
        pl.ema_on = 0
        for k in range(pl.nagc):
            grp_k = self._plan.agc_group[k]
            pl.agc[k].clip = self._agc_clip[grp_k]
            pl.agc[k].eps = self._agc_eps[grp_k]
            if pl.agc[k].clip > 0:
                pl.agc_on = 1
        for gi in range(pl.ngroups):
            if pl.hyper[gi].ema:
                pl.ema_on = 1
        return 0

    def _check_hyper(self):
        """Validate param_groups as the next step would (changes no state)."""
        self._sync(self._step + 1)

    def step(self, grads=None, max_grad_norm=None):
        """One update of every parameter, in place.

        grads: a list of float32 arrays aligned with params (list mode), or
        omitted when the optimizer was built over a Params arena (it reads
        params.grad). max_grad_norm: clip by the global gradient norm inside
        the update (one read of the gradients for the norm, no write to
        them); then the norm before clipping is returned, else None.
        NaN/Inf in gradients propagate into the parameters, as in PyTorch.
        """
        cdef double mx = max_norm_arg(max_grad_norm)
        self._enter()
        try:
            if self._arena is not None:
                if grads is not None:
                    raise TypeError("grads must be omitted: this optimizer reads the "
                                    "gradients of its Params arena (params.grad)")
                self._check_arena(self._arena)
                self._check_writeable()
            else:
                if grads is None:
                    raise TypeError("grads is required: pass a list of gradient arrays "
                                    "aligned with params")
                self._check_writeable()
                self._bind_grads(grads)
            self._sync(self._step + 1)
            self._step += 1
            self._plan.plan.max_norm = mx
            with nogil:
                self._plan.run()
            self._mark_started()
            norm = self._plan.plan.norm if mx > 0 else None
        finally:
            self._busy = False
        return norm

    def _begin_step(self, params):
        """Before a GIL-free fused step: check, sync, count the step, return the plan."""
        if self._arena is None:
            raise ValueError("_begin_step needs an optimizer built over a Params arena")
        self._enter()
        try:
            self._check_arena(params)
            self._check_writeable()
            self._sync(self._step + 1)
        except BaseException:
            self._busy = False
            raise
        self._step += 1
        self._plan.plan.max_norm = 0.0
        return self._plan

    def _end_step(self, stepped=True):
        """After the GIL-free step: the optimizer may step again. stepped=False:
        the update was not applied (a skipped step), so it is not counted."""
        if not stepped:
            self._step -= 1
        else:
            self._mark_started()
        self._busy = False

    cdef int _mark_started(self) except -1:
        """After an applied step: groups that stepped with momentum have a buffer."""
        cdef int gi
        if self._kind == GD_SGD:
            for gi in range(self._plan.plan.ngroups):
                if self._plan.plan.hyper[gi].flags & GD_F_MOMENTUM:
                    self._momentum_started[gi] = True
        return 0


cdef StepPlan _grads_plan(object grads, str name, bint writeable):
    """A plan over a list of gradient arrays (or one array), checked and alias-free."""
    if cnp.PyArray_Check(grads):
        grads = [grads]
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"{name} must be a float32 array or a list of them, "
                        f"got {type(grads).__name__}")
    segs = []
    spans = []
    cdef Py_ssize_t i
    for i in range(len(grads)):
        a = check_f32(grads[i], f"{name}[{i}]", writeable)
        segs.append((a, a, None, None, None, 0))
        if cnp.PyArray_NBYTES(a):
            spans.append((<uintptr_t>cnp.PyArray_DATA(a), <uintptr_t>cnp.PyArray_NBYTES(a), i))
    spans.sort()
    for i in range(1, len(spans)):
        if spans[i][0] < spans[i - 1][0] + spans[i - 1][1]:
            raise ValueError(f"{name}[{spans[i - 1][2]}] and {name}[{spans[i][2]}] share memory; "
                             f"each gradient must be passed once")
    cdef StepPlan plan = StepPlan()
    plan._setup(segs, 1)
    return plan


def _thread_ranges(gd_index total, int nt):
    """[(lo, hi)] of each of nt threads in an optimizer pass over total floats
    (the driver's own 64-bit arithmetic, for tests of sizes over 2^31)."""
    cdef gd_index lo, hi
    cdef int t
    out = []
    for t in range(nt):
        gdfast_optim_split(total, nt, t, &lo, &hi)
        out.append((lo, hi))
    return out


def adaptive_clip_grad(params, grads, double clip_factor, double eps):
    """AGC on lists of aligned params and grads (checked by the caller): grads
    scaled in place, unit by unit (columns of matrices, whole vectors)."""
    if not clip_factor > 0 or clip_factor == float("inf"):
        raise ValueError(f"clip_factor must be a finite number > 0, got {clip_factor}")
    if not eps > 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    cdef StepPlan gplan = _grads_plan(grads, "grads", True)
    cdef StepPlan plan = StepPlan()
    segs, tensors = [], []
    for i, (p, g) in enumerate(zip(params, grads)):
        segs.append((check_f32(p, f"params[{i}]", False), g, None, None, None, 0))
        if g.size:
            tensors.append((i, 0, g.size, g.shape[g.ndim - 1] if g.ndim >= 2 else 1, 0))
    plan._setup(segs, 1)
    plan._set_agc(tensors)
    plan._agc_only_below(clip_factor, eps, plan.plan.total)
    with nogil:
        gdfast_optim_agc_clip(&plan.plan)


def grad_norm(grads):
    """Global L2 norm of a list of float32 arrays, reduced deterministically."""
    cdef StepPlan plan = _grads_plan(grads, "grads", False)
    cdef double norm
    with nogil:
        norm = gdfast_optim_grad_norm(&plan.plan)
    return norm


def clip_grad_norm(grads, double max_norm):
    """Scale grads in place so their global L2 norm is at most max_norm.

    Returns the norm before clipping (a Python float). Like PyTorch's
    clip_grad_norm_, the scale is max_norm / (norm + 1e-6) when below 1; a
    NaN or Inf norm propagates into the gradients."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    cdef StepPlan plan = _grads_plan(grads, "grads", True)
    cdef double norm, coef
    cdef float hi, lo
    with nogil:
        norm = gdfast_optim_grad_norm(&plan.plan)
        coef = max_norm / (norm + 1e-6)
        if not coef >= 1.0:
            gdfast_clip_split(coef, &hi, &lo)
            gdfast_optim_scale(&plan.plan, hi)
            if lo != 1.0:  # a coefficient below FLT_MIN, in two factors
                gdfast_optim_scale(&plan.plan, lo)
    return norm


def clip_grad_value(grads, double clip_value):
    """Clamp every gradient entry to [-clip_value, clip_value] in place (NaN stays NaN)."""
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    cdef StepPlan plan = _grads_plan(grads, "grads", True)
    with nogil:
        gdfast_optim_clamp(&plan.plan, <float>-clip_value, <float>clip_value)


def bandwidth_rmw(gd_index n=10_000_000, int rw=3, int ro=1, int reps=5):
    """Best in-place read-modify-write bandwidth in bytes/s over reps passes.

    rw streams are read and written in place and ro streams only read, all in
    one pass like an optimizer step (Adam: rw=3 for p, m, v and ro=1 for g:
    28 bytes per element)."""
    if n < 1 or rw < 1 or rw > 16 or ro < 0 or ro > 16 or reps < 1:
        raise ValueError("need n >= 1, 1 <= rw <= 16, 0 <= ro <= 16, reps >= 1")
    import numpy as np
    arrays = [np.full(n, 1.0, dtype=np.float32) for _ in range(rw + ro)]
    cdef float *w[16]
    cdef const float *r[16]
    cdef int k
    for k in range(rw):
        w[k] = _fptr(arrays[k])
    for k in range(ro):
        r[k] = _fptr(arrays[rw + k])
    best = float("inf")
    for _ in range(reps + 1):  # the first pass faults the pages in
        t0 = _perf_counter()
        with nogil:
            gdfast_rmw_pass(w, rw, r, ro, n)
        best = min(best, _perf_counter() - t0)
    return (2.0 * rw + ro) * 4.0 * n / best


def bandwidth_triad(gd_index n=10_000_000, int reps=5):
    """Best STREAM triad (a = b + s * c) bandwidth in bytes/s (12 bytes per element)."""
    if n < 1 or reps < 1:
        raise ValueError("need n >= 1 and reps >= 1")
    import numpy as np
    a = np.zeros(n, dtype=np.float32)
    b = np.full(n, 1.0, dtype=np.float32)
    c = np.full(n, 2.0, dtype=np.float32)
    cdef float *pa = _fptr(a)
    cdef float *pb = _fptr(b)
    cdef float *pc = _fptr(c)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = _perf_counter()
        with nogil:
            gdfast_triad_pass(pa, pb, pc, 0.5, n)
        best = min(best, _perf_counter() - t0)
    return 12.0 * n / best
