"""scikit-learn estimators trained by gdfast's kernels: MLPClassifier, MLPRegressor.

Drop-ins for ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor``:
the same constructor parameters, defaults and meaning, the same fitted
attributes and methods, plus two of gdfast's own (``dropout``, ``n_threads``).
Needs scikit-learn (``pip install "gdfast[sklearn]"``); the rest of gdfast
does not.

What differs from scikit-learn, and why:
- Arithmetic is float32: X (and regression targets) are converted once to
  C-contiguous float32 when fit or predict is called (float64 data is copied
  once, float32 C-contiguous data is used as is). coefs_ and intercepts_ are
  float32; predictions come back in the input's float dtype (float64 for
  integer input).
- Adam is PyTorch's (gdfast.Adam): epsilon is added to the bias-corrected
  sqrt(v), where scikit-learn adds it to the uncorrected one. SGD momentum is
  PyTorch's too; with a constant learning rate the steps are the same as
  scikit-learn's, with 'invscaling' or 'adaptive' the velocity is not rescaled
  when the rate changes.
- The L2 term (alpha) is gdfast.MLP's alpha: scikit-learn's penalty, fused.
- solver='lbfgs' is gdfast.LBFGS (strong Wolfe line search), not SciPy's
  L-BFGS-B: the same kind of minimum, not the same path.
- dropout (training only) needs a stochastic solver.
- No sparse input and no sample_weight (scikit-learn >= 1.7 has it).
  MLPRegressor's loss='poisson' is refused.
- n_threads: the threads gdfast's kernels use during fit and predict (None:
  gdfast's current setting, gdfast.get_num_threads(), itself from
  OMP_NUM_THREADS or the core count). joblib's process workers (GridSearchCV
  with n_jobs, the default "loky" backend) start with OMP_NUM_THREADS set to
  cores // n_jobs, so n_jobs=2 on 2 cores trains each candidate on one
  thread: no oversubscription. The thread count is process-wide, so with
  joblib's "threading" backend set n_threads=1 or leave all at None.
"""
from contextlib import contextmanager
from numbers import Integral, Real
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
except ImportError as e:  # scikit-learn is an optional extra
    raise ImportError("gdfast.sklearn needs scikit-learn: pip install 'gdfast[sklearn]' "
                      "(or pip install scikit-learn)") from e
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import _kernels
from .lbfgs import LBFGS
from .mlp import MLP
from .optim import SGD, Adam

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names -> gdfast's
_ACTIVATION = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
# out_activation_ -> the gdfast loss that pairs with it
_LOSS = {"softmax": "cross_entropy", "logistic": "binary_cross_entropy", "identity": "mse"}


@contextmanager
def _threads(n):
    """gdfast's kernels on n threads (None: as they are) for a block."""
    if n is None:
        yield
        return
    old = _kernels.get_num_threads()
    _kernels.set_num_threads(n)
    try:
        yield
    finally:
        _kernels.set_num_threads(old)


def _batches(X, T, size, rng, order):
    """One epoch of (x, targets) mini-batches, shuffled by rng (a RandomState)
    unless it is None. order is permuted in place, as scikit-learn shuffles its
    sample indices, so a random_state gives scikit-learn's batches."""
    if rng is None:
        for start in range(0, len(X), size):
            yield X[start:start + size], T[start:start + size]
        return
    rng.shuffle(order)
    xb, tb = np.empty((size,) + X.shape[1:], X.dtype), np.empty((size,) + T.shape[1:], T.dtype)
    for start in range(0, len(X), size):
        idx = order[start:start + size]
        m = len(idx)
        _kernels.take_rows(X, idx, xb[:m])
        # mode="clip" lets np.take write straight into out (the indices are valid)
        np.take(T, idx, axis=0, out=tb[:m], mode="clip")
        yield xb[:m], tb[:m]


class _BaseMLP(BaseEstimator):
    # scikit-learn's own constraints, so parameters mean and are checked the same
    _parameter_constraints = {
        **_SkMLPClassifier._parameter_constraints,
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "n_threads": [None, Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, hidden_layer_sizes, activation, *, solver, alpha, batch_size,
                 learning_rate, learning_rate_init, power_t, max_iter, shuffle, random_state,
                 tol, verbose, warm_start, momentum, nesterovs_momentum, early_stopping,
                 validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change, max_fun,
                 dropout, n_threads):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.n_threads = n_threads

    # -- fitting --------------------------------------------------------------

    def fit(self, X, y):
        """Fit the model to X (n_samples, n_features) and targets y."""
        self._validate_params()
        return self._fit(X, y, incremental=False)

    def _stochastic(self):
        return self.solver in ("sgd", "adam")

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {sizes}")
        return [int(s) for s in sizes]

    def _fit(self, X, y, incremental):
        if self.dropout and not self._stochastic():
            raise ValueError("dropout > 0 needs solver 'adam' or 'sgd': L-BFGS's line search "
                             "needs the same loss at every evaluation")
        hidden = self._hidden_sizes()
        first = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, T, y = self._validate_input(X, y, incremental, reset=first)
        sizes = [X.shape[1]] + hidden + [T.shape[1] if T.ndim == 2 else len(self.classes_)]
        if not first and sizes != self._net().sizes:
            raise ValueError(f"layer sizes {sizes} (from hidden_layer_sizes and the data) differ "
                             f"from the fitted {self._net().sizes}; refit without warm_start")
        rng = check_random_state(self.random_state)
        if first:
            self._initialize(sizes, rng)
        with _threads(self.n_threads):
            if self._stochastic():
                self._fit_stochastic(X, T, y, rng, incremental)
            else:
                self._fit_lbfgs(X, T)
        if not np.isfinite(self._net().params.data).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        return self

    def _new_model(self, sizes):
        return MLP(sizes, activation=_ACTIVATION[self.activation],
                   loss=_LOSS[self.out_activation_],
                   output_activation="identity" if self.out_activation_ == "identity" else None,
                   alpha=self.alpha, dropout=self.dropout, seed=self._dropout_seed)

    def _initialize(self, sizes, rng):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(sizes)
        self.n_outputs_ = sizes[-1]
        self.out_activation_ = self._out_activation()
        # drawn only for dropout, so that without it the batches stay scikit-learn's
        self._dropout_seed = int(rng.randint(np.iinfo(np.int32).max)) if self.dropout else 0
        model = self._new_model(sizes)
        # Glorot uniform for weights and biases, drawn in scikit-learn's order from
        # the same RandomState, so a random_state starts from the same values
        factor = 2.0 if self.activation == "logistic" else 6.0
        for l in range(1, len(sizes)):
            bound = np.sqrt(factor / (sizes[l - 1] + sizes[l]))
            model.params[f"w{l}"] = rng.uniform(-bound, bound, (sizes[l - 1], sizes[l]))
            model.params[f"b{l}"] = rng.uniform(-bound, bound, sizes[l])
        self._set_model(model)
        self._optimizer = self._optimizer_state = None
        self._best_params = model.params.data.copy()
        if not self._stochastic():
            return
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _set_model(self, model):
        """Make `model` the fitted network; coefs_ and intercepts_ are views of its arena."""
        self._model = model
        self.coefs_ = [model.params[f"w{l}"] for l in range(1, model.n_layers + 1)]
        self.intercepts_ = [model.params[f"b{l}"] for l in range(1, model.n_layers + 1)]

    def _net(self):
        """The gdfast.MLP behind coefs_ and intercepts_: rebuilt from them after
        unpickling, or when alpha or dropout changed since it was built (warm_start,
        partial_fit); the optimizer then continues over the new arena."""
        model = getattr(self, "_model", None)
        if model is not None and (model.alpha, model.dropout) == (self.alpha, self.dropout):
            return model
        sizes = [w.shape[0] for w in self.coefs_] + [self.coefs_[-1].shape[1]]
        new = self._new_model(sizes)
        for l, (w, b) in enumerate(zip(self.coefs_, self.intercepts_), 1):
            new.params[f"w{l}"] = w
            new.params[f"b{l}"] = b
        new.step = model.step if model is not None else self._dropout_step
        if getattr(self, "_optimizer", None) is not None:
            self._optimizer, self._optimizer_state = None, self._optimizer.state_dict()
        self._set_model(new)
        return new

    def _make_optimizer(self, state=None):
        """A fresh optimizer over the network, or one continuing from `state`."""
        model = self._net()
        if self.solver == "adam":
            opt = Adam(model.params, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                       eps=self.epsilon)
        else:
            opt = SGD(model.params, lr=self.learning_rate_init, momentum=self.momentum,
                      nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        if state is not None:
            opt.load_state_dict(state)
        return opt

    def _fit_stochastic(self, X, T, y, rng, incremental):
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        model = self._net()
        if not incremental or self._optimizer is None:
            # partial_fit continues with the optimizer state pickled or moved by _net
            self._optimizer = self._make_optimizer(self._optimizer_state if incremental else None)
            self._optimizer_state = None
        opt = self._optimizer
        X_val = y_val = None
        if self.early_stopping:
            stratify = y if isinstance(self, ClassifierMixin) and self.n_outputs_ == 1 else None
            X, X_val, T, _, _, y_val = train_test_split(
                X, T, y, random_state=rng, test_size=self.validation_fraction, stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch_size = min(self.batch_size, n)
        order = np.arange(n)
        self.n_iter_ = 0
        for _ in range(self.max_iter):
            total = 0.0
            for xb, tb in _batches(X, T, batch_size, rng if self.shuffle else None, order):
                m = xb.shape[0]
                penalty = self._penalty(m)  # of the weights before the step, as the loss's
                total += self._sklearn_loss(model.train_step(xb, tb, opt), penalty) * m
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = total / n
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            self._update_no_improvement_count(X_val, y_val)
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                for g in opt.param_groups:
                    g["lr"] = self.learning_rate_init / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                msg = (f"{what} did not improve more than tol={self.tol:f} for "
                       f"{self.n_iter_no_change} consecutive epochs.")
                lr = opt.param_groups[0]["lr"]
                if self.solver == "sgd" and self.learning_rate == "adaptive" and lr > 1e-6:
                    for g in opt.param_groups:
                        g["lr"] = lr / 5.0
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(f"{msg} Setting learning rate to {lr / 5.0:f}")
                else:
                    if self.verbose:
                        print(f"{msg} Stopping.")
                    break
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                              "reached and the optimization hasn't converged yet.",
                              ConvergenceWarning)
        if self.early_stopping:
            model.params.data[...] = self._best_params

    def _penalty(self, n):
        """The L2 term of the loss over a batch of n (multi-output regression only:
        _sklearn_loss needs it)."""
        if self.out_activation_ != "identity" or self.n_outputs_ == 1 or not self.alpha:
            return 0.0
        return 0.5 * self.alpha / n * sum(float(np.dot(w.ravel(), w.ravel())) for w in self.coefs_)

    def _sklearn_loss(self, loss, penalty):
        """gdfast's loss on scikit-learn's scale: its squared error is a mean over
        the outputs too (0.5 ||a - y||^2 / n_outputs), its L2 term is not."""
        if self.out_activation_ != "identity":
            return loss
        return (loss - penalty) / self.n_outputs_ + penalty

    def _fit_lbfgs(self, X, T):
        """Full-batch L-BFGS (gdfast.LBFGS with a strong Wolfe line search and
        scikit-learn's history of 10 pairs): max_iter iterations, max_fun loss
        evaluations, stopping when every gradient entry is within tol."""
        model = self._net()
        opt = LBFGS(model.params, lr=1, max_iter=self.max_iter, max_eval=self.max_fun,
                    tolerance_grad=self.tol, history_size=10, line_search_fn="strong_wolfe")
        opt.step(lambda: model.loss_and_grad(X, T))
        self.n_iter_ = opt.n_iter
        self.loss_ = self._sklearn_loss(model.loss_and_grad(X, T), self._penalty(len(X)))
        if opt.n_iter >= self.max_iter or opt.func_evals >= self.max_fun:
            warnings.warn(f"lbfgs failed to converge after {opt.n_iter} iterations and "
                          f"{opt.func_evals} loss evaluations (max_iter={self.max_iter}, "
                          f"max_fun={self.max_fun}): increase them or scale the data.",
                          ConvergenceWarning)

    def _update_no_improvement_count(self, X_val, y_val):
        if self.early_stopping:
            score = self._score(X_val, y_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._net().params.data.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])

    # -- prediction -----------------------------------------------------------

    def _forward(self, X, check_input=True):
        """Network outputs for X (validated unless check_input is False), float32."""
        if check_input:
            X = validate_data(self, X, dtype=np.float32, order="C", reset=False)
        with _threads(self.n_threads):
            return self._net().forward(X)

    @staticmethod
    def _out_dtype(X):
        dtype = getattr(X, "dtype", None)
        return np.float32 if dtype == np.float32 else np.float64

    # -- pickling: the C core is rebuilt from coefs_ and intercepts_ ----------

    def __getstate__(self):
        state = dict(super().__getstate__())
        model = state.pop("_model", None)
        if model is not None:
            state["_dropout_step"] = model.step
        if state.get("_optimizer") is not None:
            state["_optimizer"], state["_optimizer_state"] = None, state["_optimizer"].state_dict()
        return state


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, as sklearn.neural_network.MLPClassifier,
    trained by gdfast (see the module docstring for what differs).

    Multiclass targets get a softmax output and cross-entropy; two classes one
    logistic output and binary cross-entropy; multi-label indicator targets
    one logistic output per label (binary cross-entropy each).

    dropout: gdfast's own, the probability of zeroing a hidden unit in training.
    n_threads: the threads gdfast uses in fit and predict (None: as set).
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, n_threads=None):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            dropout=dropout, n_threads=n_threads)

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        """(X as float32, the targets gdfast trains on, y as labels)."""
        X, y = validate_data(self, X, y, multi_output=True, dtype=np.float32, order="C",
                             reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        if self._label_binarizer.y_type_ == "multiclass":
            T = np.searchsorted(self.classes_, y).astype(np.int64)  # class indices
        else:
            T = np.ascontiguousarray(self._label_binarizer.transform(y), dtype=np.float32)
        return X, T, y

    def _score(self, X, y):
        return accuracy_score(y, self._predict(X, check_input=False))

    def predict(self, X):
        """Predicted classes (n_samples,), or label indicators for multi-label targets."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        out = self._forward(X, check_input)
        return self._label_binarizer.inverse_transform(out.ravel() if out.shape[1] == 1 else out)

    @available_if(_BaseMLP._stochastic)
    def partial_fit(self, X, y, classes=None):
        """One epoch over X, y. classes (all the labels, np.unique(y_all)) is needed
        on the first call; multi-label targets take theirs from y."""
        self._validate_params()
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            if hasattr(self, "classes_") and not np.array_equal(self.classes_,
                                                                unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on the last call to "
                                 f"partial_fit, was: {self.classes_!r}")
        if not hasattr(self, "classes_"):
            lb = LabelBinarizer()
            multilabel = type_of_target(np.asarray(y)).startswith("multilabel")
            self._label_binarizer = lb.fit(y if multilabel else classes)
            self.classes_ = lb.classes_
        return self._fit(X, y, incremental=True)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns as classes_."""
        check_is_fitted(self)
        p = self._forward(X).astype(self._out_dtype(X))
        if p.shape[1] == 1:
            return np.hstack([1 - p, p])
        if self.out_activation_ == "softmax":
            p /= p.sum(axis=1, keepdims=True)  # exactly 1 in the output dtype
        return p

    def predict_log_proba(self, X):
        """log of predict_proba."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, as sklearn.neural_network.MLPRegressor,
    trained by gdfast (see the module docstring for what differs): identity
    output and the squared error, one or several outputs.

    loss: 'squared_error' only ('poisson' is scikit-learn's, not gdfast's).
    dropout, n_threads: gdfast's own, as in MLPClassifier.
    """

    _parameter_constraints = {**_SkMLPRegressor._parameter_constraints,
                              **_BaseMLP._parameter_constraints}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, n_threads=None):
        self.loss = loss
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            dropout=dropout, n_threads=n_threads)

    def _out_activation(self):
        return "identity"

    def _validate_input(self, X, y, incremental, reset):
        if self.loss != "squared_error":
            raise ValueError(f"loss must be 'squared_error' (gdfast has no poisson loss), "
                             f"got {self.loss!r}")
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float32,
                             order="C", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        T = np.ascontiguousarray(y.reshape(len(y), -1), dtype=np.float32)
        return X, T, y

    def _score(self, X, y):
        pred = self._predict(X, check_input=False)
        return r2_score(y, pred) if np.isfinite(pred).all() else np.nan

    def predict(self, X):
        """Predictions (n_samples,), or (n_samples, n_outputs) for several targets."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        out = self._forward(X, check_input).astype(self._out_dtype(X))
        return out.ravel() if out.shape[1] == 1 else out

    @available_if(_BaseMLP._stochastic)
    def partial_fit(self, X, y):
        """One epoch over X, y (stochastic solvers only)."""
        self._validate_params()
        return self._fit(X, y, incremental=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
