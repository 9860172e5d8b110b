"""The training loop: batches, schedule, metrics, checkpoints, early stopping.

>>> trainer = Trainer(model, gdfast.Adam(model.params, lr=1e-3), (x, y), batch_size=128,
...                   schedule=schedules.Warmup(schedules.Cosine(1e-3, 5000), 200),
...                   test=(x_test, y_test), checkpoint_dir="run1")   # doctest: +SKIP
>>> history = trainer.fit(epochs=10)                                 # doctest: +SKIP

The model needs ``params`` (a Params arena), ``loss_and_grad(x, y)`` -> loss
(gradients into params.grad), ``predict(x)`` and ``evaluate(x, y, batch_size)``
-> (loss, accuracy); the optimizer ``step()``, ``param_groups`` and
``state_dict()``/``load_state_dict()``. gdfast's MLP with a gdfast optimizer
steps in one ``train_step`` call instead (the same parameters, faster). A
checkpoint is written after every epoch; ``fit(resume=True)`` continues from
it bit for bit as if never interrupted (same seed, same thread count).
"""
import csv
import inspect
import json
import math
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .batching import Batches
from .mlp import MLP, _check_activation, _check_dropout
from .reference.mlp import MLP as _ReferenceMLP, hidden_activations
from .optim import clip_grad_norm
from .schedules import Constant, ReduceOnPlateau

__all__ = ["Trainer", "fit", "TrainingDiverged"]

_MONITORS = {"val_loss": "min", "val_acc": "max", "test_loss": "min", "test_acc": "max",
             "train_loss": "min"}
_CSV_FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "grad_norm", "val_loss", "val_acc",
               "test_loss", "test_acc", "samples_per_s", "train_time", "eval_time"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


def _pair(data, name):
    if data is None:
        return None
    try:
        x, y = data
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (x, y) pair, got {type(data).__name__}") from None
    if len(x) != len(y):
        raise ValueError(f"{name}: x and y lengths differ ({len(x)} vs {len(y)})")
    return x, y


class Trainer:
    """Train `model` with `optimizer` on `train` = (x, y) or a `Batches`.

    batch_size: mini-batch size, 128 by default; 1 for SGD; None or 0 for
        full-batch gradient descent (ignored when `train` is already a Batches).
    schedule: a callable lr(step) from gdfast.schedules, or None to keep the
        optimizer's lr; a ReduceOnPlateau is stepped with `monitor` each epoch.
    validation, test: (x, y) pairs evaluated after each epoch.
    early_stopping: patience in epochs without improvement of `monitor`
        (by more than min_delta), or None; restore_best puts the best
        parameters back when training ends.
    checkpoint_dir: where last.npz and history.json/.csv go each epoch, and
        best.npz whenever `monitor` improves (with or without early stopping).
    progress: an object with on_epoch_begin(epoch, steps), on_step(loss, acc),
        on_epoch_end(record) (see gdfast.cli's progress bar), or None.
    clip_norm: clip the gradients' global L2 norm to this (inside the
        optimizer's step when it supports max_grad_norm, as gdfast's do).
    acc_every: estimate the training accuracy ("train_acc") from every
        acc_every-th batch, predicted right after its update (0: never; integer
        labels only).
    accumulate: gradient accumulation, one optimizer step per `accumulate`
        consecutive batches (the last step of an epoch takes what is left),
        with the gradients of their mean, the same step as one batch that
        many times larger (to float32 rounding): the model's
        loss_and_grad(x, y, accumulate=..., mean_over=...) adds each batch's
        share into the gradients (gdfast.MLP: in the weight-gradient GEMMs,
        no extra pass). `step`, the schedule and the history count optimizer
        steps.
    eval_ema: evaluate (validation, test, and the best parameters kept for
        early stopping) with the optimizer's moving average of the weights
        (an optimizer built with ema=...), training with the weights.
    monitor_layers: record per tensor, on each epoch's last step, the
        gradient norm ("grad_norm/w1"), weight norm ("weight_norm/w1") and
        update-to-weight norm ratio ("update_ratio/w1"), and per ReLU hidden
        layer of an MLP the fraction of units dead on that step's batch
        ("dead/1"). Off by default; on, it costs one copy of the parameters
        and one NumPy forward pass of a batch per epoch.

    The optimizer may instead take ``step(closure)`` (gdfast.LBFGS): each
    batch is then one call, the closure computing the loss and gradients
    (full batch is what L-BFGS expects: batch_size=None).
    """

    def __init__(self, model, optimizer, train, *, batch_size=128, schedule=None,
                 validation=None, test=None, seed=0, shuffle=True, drop_last=False, shift=0,
                 early_stopping=None, monitor=None, min_delta=0.0, restore_best=True,
                 checkpoint_dir=None, eval_batch_size=2000, track_grad_norm=True, progress=None,
                 acc_every=25, clip_norm=None, accumulate=1, eval_ema=False,
                 monitor_layers=False):
        self.model, self.optimizer = model, optimizer
        if isinstance(accumulate, bool) or not isinstance(accumulate, (int, np.integer)) \
                or accumulate < 1:
            raise ValueError(f"accumulate must be an integer >= 1, got {accumulate!r}")
        if accumulate > 1 and "accumulate" not in inspect.signature(model.loss_and_grad).parameters:
            raise TypeError(f"accumulate={accumulate} needs a model whose loss_and_grad takes "
                            f"accumulate= and mean_over= (as gdfast.MLP's), "
                            f"got {type(model).__name__}")
        self.accumulate = int(accumulate)
        ema_state = getattr(optimizer, "ema_state", None)
        if eval_ema and not (ema_state and ema_state()):
            raise ValueError("eval_ema=True needs an optimizer with a moving average of the "
                             "weights (built with ema=..., e.g. gdfast.Adam(params, ema=0.999))")
        self.eval_ema, self.monitor_layers = bool(eval_ema), bool(monitor_layers)
        if isinstance(train, Batches):
            self.batches = train
        else:
            x, y = _pair(train, "train")
            if batch_size is not None and not isinstance(batch_size, bool) and batch_size == 0:
                batch_size = None       # 0 means full batch, as in `gdfast train --batch-size 0`
            self.batches = Batches(x, y, batch_size, shuffle=shuffle, drop_last=drop_last,
                                   seed=seed, shift=shift)
        self.validation, self.test = _pair(validation, "validation"), _pair(test, "test")
        self.schedule = schedule if schedule is not None else Constant(optimizer.param_groups[0]["lr"])
        if monitor is None:
            monitor = "val_loss" if self.validation is not None else "train_loss"
        if monitor not in _MONITORS:
            raise ValueError(f"monitor must be one of {sorted(_MONITORS)}, got {monitor!r}")
        if monitor.startswith("val") and self.validation is None:
            raise ValueError(f"monitor={monitor!r} needs validation=(x, y)")
        if monitor.startswith("test") and self.test is None:
            raise ValueError(f"monitor={monitor!r} needs test=(x, y)")
        if early_stopping is not None and (int(early_stopping) != early_stopping or early_stopping < 1):
            raise ValueError(f"early_stopping must be a patience >= 1 epochs or None, got {early_stopping!r}")
        self.monitor, self.mode = monitor, _MONITORS[monitor]
        self.early_stopping, self.min_delta, self.restore_best = early_stopping, min_delta, restore_best
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.eval_batch_size, self.track_grad_norm, self.progress = eval_batch_size, track_grad_norm, progress
        self.acc_every = int(acc_every)
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")
        self.clip_norm = clip_norm
        # what steps that clip or measure inside are asked for (None: neither)
        self._max_norm = clip_norm or (math.inf if track_grad_norm else None)
        step_args = inspect.signature(optimizer.step).parameters
        self._fused_norm = "max_grad_norm" in step_args and self._max_norm is not None
        # optimizers that evaluate the loss themselves (L-BFGS): step(closure)
        self._closure = "closure" in step_args
        if self._closure and self.accumulate > 1:
            raise ValueError(f"accumulate does not apply to {type(optimizer).__name__}, which "
                             f"evaluates the loss and gradients itself")
        if self._closure and clip_norm is not None:
            raise ValueError(f"clip_norm does not apply to {type(optimizer).__name__}, which "
                             f"evaluates the loss and gradients itself")
        # gdfast's MLP and optimizers: forward, backward and update in one call
        # (dW is never stored at batch 1; MNIST, 2 threads: 15.8k -> 21.3k examples/s)
        self._one_call = isinstance(model, MLP) and hasattr(optimizer, "_begin_step")
        self.params = model.params
        self.step = 0            # optimizer steps taken: the schedule's position
        self.epoch = 0           # epochs completed
        self.history = []
        self.best = math.inf if self.mode == "min" else -math.inf
        self.bad_epochs = 0
        self.best_params = None
        self.stopped_early = False
        self.last_checkpoint = None

    # -- the loop ----------------------------------------------------------

    def fit(self, epochs, resume=False):
        """Train until `epochs` epochs are completed in total; returns the history.

        resume: continue from checkpoint_dir/last.npz (or the given path) if it exists.
        """
        if resume:
            path = Path(resume) if isinstance(resume, (str, Path)) else self._ckpt_path("last")
            if path is None:
                raise ValueError("resume=True needs checkpoint_dir (or pass the checkpoint path)")
            if path.exists():
                self.load_checkpoint(path)
        while self.epoch < epochs and not self.stopped_early:
            self._run_epoch()
        if self.restore_best and self.best_params is not None and self.early_stopping:
            self.params.data[...] = self.best_params
        return self.history

    def _train_step(self, xb, yb, lr):
        """One update; returns (loss, gradient norm before clipping, or nan)."""
        if self._closure:               # the loss before the step; none when not finite
            loss = self.optimizer.step(lambda: self._loss_and_grad(xb, yb))
            self._check_loss(loss, lr)
            return loss, math.nan
        if self._one_call:              # no update when the loss is not finite
            out = self.model.train_step(xb, yb, self.optimizer, max_grad_norm=self._max_norm,
                                        skip_nonfinite=True)
            loss, norm = out if self._max_norm is not None else (out, math.nan)
            self._check_loss(loss, lr)
            return loss, norm
        loss = self._loss_and_grad(xb, yb)
        self._check_loss(loss, lr)
        return loss, self._step_stored()

    def _accumulated_step(self, xb, yb, lr, first, mean_over, last):
        """One micro-batch of an accumulated step; the update after the last.
        Returns (loss, norm or nan)."""
        loss = self.model.loss_and_grad(xb, yb, accumulate=not first, mean_over=mean_over)
        self._check_loss(loss, lr)
        if not last:
            return loss, math.nan
        return loss, self._step_stored()

    def _step_stored(self):
        """The optimizer step on the gradients in params.grad; the norm or nan."""
        if self._fused_norm:            # gdfast optimizers: norm (and clip) inside the step
            return self.optimizer.step(max_grad_norm=self._max_norm)
        if self.clip_norm:
            norm = clip_grad_norm(self.params.grad, self.clip_norm)
        elif self.track_grad_norm:
            g = self.params.grad
            norm = math.sqrt(float(np.dot(g, g)))
        else:
            norm = math.nan
        self.optimizer.step()
        return norm

    def _run_epoch(self):
        batches, schedule, progress = self.batches, self.schedule, self.progress
        if progress:
            progress.on_epoch_begin(self.epoch + 1, len(batches))
        loss_sum = norm_sum = 0.0
        seen = steps = acc_hits = acc_seen = 0
        acc = None
        k, sizes = self.accumulate, _batch_sizes(batches)
        layers = None
        t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(batches):
            pos, last = i % k, i % k == k - 1 or i == len(sizes) - 1
            if pos == 0:
                lr = schedule.apply(self.optimizer, self.step)
            monitored = self.monitor_layers and i == len(sizes) - 1
            if monitored:
                before = self.params.data.copy()
            if k > 1:
                loss, gnorm = self._accumulated_step(xb, yb, lr, pos == 0,
                                                     sum(sizes[i - pos:i - pos + k]), last)
            elif monitored and not self._closure:   # gradients stored (train_step's bits)
                loss = self._loss_and_grad(xb, yb)
                self._check_loss(loss, lr)
                grads = self.params.grad.copy()
                gnorm = self._step_stored()
            else:
                loss, gnorm = self._train_step(xb, yb, lr)
            if monitored:
                layers = self._layer_stats(xb, before, self.params.grad if k > 1 or
                                           self._closure else grads)
            if last:
                self.step += 1
                steps += 1
                norm_sum += gnorm
            loss_sum += loss * len(yb)
            seen += len(yb)
            if self.acc_every and yb.ndim == 1 and (i + 1) % self.acc_every == 1 % self.acc_every:
                acc_hits += self._hits(xb, yb)
                acc_seen += len(yb)
                acc = acc_hits / acc_seen
            if progress:
                progress.on_step(loss, acc)
        train_time = time.perf_counter() - t0
        if not np.isfinite(self.params.data).all():
            # an update overflowed after the last loss was computed: never
            # checkpoint (or keep as best) parameters that are no longer numbers
            self._diverged(f"the parameters became NaN/Inf by step {self.step}", lr)
        self.epoch += 1
        record = {"epoch": self.epoch, "step": self.step, "lr": lr,
                  "train_loss": loss_sum / seen, "train_acc": acc,
                  "grad_norm": None if math.isnan(norm_sum) else norm_sum / steps,   # None: not tracked
                  "samples_per_s": seen / train_time, "train_time": train_time}
        t1 = time.perf_counter()
        trained = self._swap_ema() if self.eval_ema else None
        for name, pair in (("val", self.validation), ("test", self.test)):
            if pair is not None:
                loss, acc = self.model.evaluate(pair[0], pair[1], batch_size=self.eval_batch_size)
                record[f"{name}_loss"] = float(loss)
                record[f"{name}_acc"] = None if acc is None else float(acc)   # None: regression
        record["eval_time"] = time.perf_counter() - t1
        if layers:
            record.update(layers)
        self.history.append(record)
        if record[self.monitor] is None:
            if trained is not None:
                self._swap_ema(trained)
            raise ValueError(f"monitor={self.monitor!r} needs class labels, but the targets are "
                             f"regression values (no accuracy): monitor a loss instead")
        improved = self._track_best(record[self.monitor])
        if trained is not None:     # back to the weights that train
            self._swap_ema(trained)
        if isinstance(schedule, ReduceOnPlateau):
            schedule.step(record[self.monitor])
        self._save_epoch(improved)
        if progress:
            progress.on_epoch_end(record)
        return record

    def _loss_and_grad(self, xb, yb):
        """The batch's mean loss, its gradients into params.grad (a data-parallel
        trainer takes its share of the batch and sums the gradients across ranks)."""
        return self.model.loss_and_grad(xb, yb)

    def _hits(self, xb, yb):
        """How many of the batch's rows the model now classifies right."""
        return int(np.count_nonzero(self.model.predict(xb) == yb))

    def _save_epoch(self, improved):
        """The end of an epoch's files: last.npz, best.npz when improved, the history."""
        if self.checkpoint_dir is None:
            return
        state = self.state_dict()   # copies every array: taken once for both files
        self.last_checkpoint = ckpt.save(self._ckpt_path("last"), state)
        if improved:    # last_checkpoint stays last.npz, the one to resume
            ckpt.save(self._ckpt_path("best"), state)
        self.save_history(self.checkpoint_dir / "history")

    def _swap_ema(self, trained=None):
        """Put the moving average in the parameters and return the weights it
        replaced; given those, put them back."""
        if trained is not None:
            for key, w in trained.items():
                self.params[key] = w
            return None
        ema = self.optimizer.ema_state()
        trained = {key: self.params[key].copy() for key in ema}
        for key, e in ema.items():
            self.params[key] = e
        return trained

    def _layer_stats(self, xb, before, grads):
        """Per tensor: gradient norm, weight norm and update-to-weight ratio of
        the step that moved the parameters from `before`; per ReLU hidden layer
        of an MLP: the fraction of its units that are zero on every row of xb."""
        out = {}
        for name in self.params.names:
            off, size = self.params.offset(name), int(np.prod(self.params.shape(name)))
            w0 = before[off:off + size].astype(np.float64)
            g = grads[off:off + size].astype(np.float64)
            du = self.params.data[off:off + size].astype(np.float64) - w0
            w_norm = float(np.sqrt(w0 @ w0))
            out[f"grad_norm/{name}"] = float(np.sqrt(g @ g))
            out[f"weight_norm/{name}"] = w_norm
            out[f"update_ratio/{name}"] = float(np.sqrt(du @ du)) / w_norm if w_norm else None
        if isinstance(self.model, MLP):
            m = self.model
            ref = _ReferenceMLP(m.sizes, m.activation, m.loss, m.output_activation,
                                {n: before[self.params.offset(n):self.params.offset(n)
                                           + int(np.prod(self.params.shape(n)))]
                                 .reshape(self.params.shape(n)) for n in self.params.names})
            acts = ref._forward(np.asarray(xb))[1:-1]
            for l, (name, a) in enumerate(zip(hidden_activations(m.activation, m.n_layers - 1),
                                              acts), start=1):
                if name == "relu":
                    out[f"dead/{l}"] = float(np.mean(~(a > 0).any(axis=0)))
        return out

    def _track_best(self, value):
        improved = (value < self.best - self.min_delta) if self.mode == "min" \
            else (value > self.best + self.min_delta)
        if improved:
            self.best, self.bad_epochs = value, 0
            if self.early_stopping:     # kept in memory only to be restored at the end
                if self.best_params is None:
                    self.best_params = np.empty_like(self.params.data)
                self.best_params[...] = self.params.data
        else:
            self.bad_epochs += 1
            if self.early_stopping and self.bad_epochs >= self.early_stopping:
                self.stopped_early = True
        return improved

    def _check_loss(self, loss, lr):
        """Stop on a NaN or Inf loss; no update has used it, so the parameters stay good."""
        if not math.isfinite(loss):
            self._diverged(f"loss became {loss} at step {self.step}", lr)

    def _diverged(self, what, lr):
        where = self.last_checkpoint or (
            "none yet (one is written at the end of each epoch)" if self.checkpoint_dir is not None
            else "none (no checkpoint_dir was given)")
        raise TrainingDiverged(
            f"{what} (epoch {self.epoch + 1}, lr {lr:.6g}); "
            f"the parameters are no longer usable. Last good checkpoint: {where}. "
            "Try a lower learning rate, gradient clipping or a longer warmup.")

    # -- checkpoints and history ----------------------------------------------

    def _ckpt_path(self, kind):
        return self.checkpoint_dir / f"{kind}.npz" if self.checkpoint_dir is not None else None

    def state_dict(self):
        return {
            "params": {name: np.array(arr) for name, arr in self.params.items()},
            "layout": [[name, list(shape)] for name, shape in self.params.layout()],
            "model": _model_info(self.model),
            "optimizer_class": _optimizer_name(self.optimizer),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step, "epoch": self.epoch,
            "model_step": getattr(self.model, "step", None),   # the MLP's dropout counter
            "rng": self.batches.get_state(),
            "history": self.history,
            "early_stopping": {"best": self.best, "bad_epochs": self.bad_epochs,
                               "stopped": self.stopped_early,
                               "best_params": self.best_params},
        }

    def load_state_dict(self, state):
        """Restore what state_dict() returned: all or nothing. A checkpoint for
        another model or optimizer is refused with what differs, and if any
        part fails to load, everything is put back as it was."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ckpt.CheckpointError(f"checkpoint lacks {missing}: not a Trainer checkpoint")
        layout = [(name, tuple(shape)) for name, shape in state["layout"]]
        if layout != self.params.layout():
            raise ValueError(f"checkpoint is for a model with layout {layout}, "
                             f"this model has {self.params.layout()}")
        saved, mine = state.get("model"), _same_layers(_model_info(self.model))
        if saved is not None:
            saved = _same_layers(saved)
        if saved is not None and saved != mine:
            diff = ", ".join(f"{k}: checkpoint {saved.get(k)!r}, this model {mine.get(k)!r}"
                             for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k))
            raise ValueError(f"checkpoint is for a different model ({diff})")
        saved = state.get("optimizer_class")
        if saved is not None and saved != _optimizer_name(self.optimizer):
            raise ValueError(f"checkpoint was written with optimizer {saved}, this trainer "
                             f"uses {_optimizer_name(self.optimizer)}")
        _check_counters(state)
        params = state["params"]
        if sorted(params) != sorted(self.params.names):
            raise ValueError(f"checkpoint has tensors {sorted(params)}, "
                             f"this model has {sorted(self.params.names)}")
        for name, arr in params.items():
            arr = np.asarray(arr)
            if arr.dtype != np.float32 or arr.shape != self.params.shape(name):
                raise ValueError(f"checkpoint tensor {name!r} is {arr.dtype} {arr.shape}, "
                                 f"expected float32 {self.params.shape(name)}")
        best = state["early_stopping"]["best_params"]
        if best is not None and not (isinstance(best, np.ndarray) and best.dtype == np.float32
                                     and best.shape == self.params.data.shape):
            got = f"{best.dtype} {best.shape}" if isinstance(best, np.ndarray) else repr(best)
            raise ValueError(f"checkpoint early_stopping['best_params'] must be None or float32 "
                             f"of shape {self.params.data.shape}, got {got}")
        backup = self.state_dict()
        try:
            self._restore(state)
        except BaseException:
            self._restore(backup)
            raise

    def _restore(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.batches.set_state(state["rng"])
        es = state["early_stopping"]
        best, bad_epochs, stopped = float(es["best"]), int(es["bad_epochs"]), bool(es["stopped"])
        best_params = None if es["best_params"] is None else np.array(es["best_params"])
        step, epoch, history = int(state["step"]), int(state["epoch"]), list(state["history"])
        for name, arr in state["params"].items():
            self.params[name] = arr
        if state.get("model_step") is not None and hasattr(self.model, "step"):
            self.model.step = state["model_step"]
        self.step, self.epoch, self.history = step, epoch, history
        self.best, self.bad_epochs, self.stopped_early = best, bad_epochs, stopped
        self.best_params = best_params

    def save_checkpoint(self, path):
        self.last_checkpoint = ckpt.save(path, self.state_dict())
        return self.last_checkpoint

    def load_checkpoint(self, path):
        self.load_state_dict(ckpt.load(path))
        self.last_checkpoint = Path(path)

    def save_history(self, stem):
        """Write the per-epoch history to <stem>.json and <stem>.csv."""
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(self.history, indent=1))
        layers = list(dict.fromkeys(k for r in self.history for k in r if "/" in k))
        with open(stem.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS + layers, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.history)


_STATE_KEYS = ("params", "layout", "optimizer", "schedule", "step", "epoch", "rng", "history",
               "early_stopping")


def _batch_sizes(batches):
    """The sizes of an epoch's batches, in order."""
    n, b = len(batches.x), batches.batch_size
    full, rest = divmod(n, b)
    return [b] * full + ([rest] if rest and not batches.drop_last else [])


def _optimizer_name(optimizer):
    """The optimizer class, with the inner one for a wrapper: "Lookahead(Adam)"."""
    inner = getattr(optimizer, "optimizer", None)
    name = type(optimizer).__name__
    return f"{name}({type(inner).__name__})" if inner is not None else name


def _check_counters(state):
    """The Trainer's own entries of a checkpoint (step, epoch, history, early stopping)."""
    for key in ("step", "epoch"):
        v = state[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"checkpoint {key!r} must be an integer >= 0, got {v!r}")
    if not isinstance(state["history"], list):
        raise ValueError(f"checkpoint 'history' must be a list, "
                         f"got {type(state['history']).__name__}")
    es = state["early_stopping"]
    if not isinstance(es, dict) or set(es) != {"best", "bad_epochs", "stopped", "best_params"}:
        raise ValueError("checkpoint 'early_stopping' must be a dict with keys "
                         "best, bad_epochs, stopped, best_params")
    best, bad, stopped = es["best"], es["bad_epochs"], es["stopped"]
    if isinstance(best, bool) or not isinstance(best, (int, float, np.integer, np.floating)):
        raise ValueError(f"checkpoint early_stopping['best'] must be a number, got {best!r}")
    if isinstance(bad, bool) or not isinstance(bad, (int, np.integer)) or bad < 0:
        raise ValueError(f"checkpoint early_stopping['bad_epochs'] must be an integer >= 0, "
                         f"got {bad!r}")
    if not isinstance(stopped, (bool, np.bool_)):
        raise ValueError(f"checkpoint early_stopping['stopped'] must be a bool, got {stopped!r}")


def _model_info(model):
    """What a checkpoint must match beyond the parameter layout (MLP settings)."""
    info = {"class": type(model).__name__}
    for k in ("sizes", "activation", "output_activation", "loss", "alpha", "dropout"):
        v = getattr(model, k, None)
        # no regularization is left out, as in checkpoints from before it existed
        if isinstance(v, (str, int, float, list, tuple)) and not (k in ("alpha", "dropout") and not v):
            info[k] = list(v) if isinstance(v, tuple) else v
    return info


def _same_layers(info):
    """`info` with per-layer settings spelled out: "relu" and ["relu", "relu"]
    are the same layers, dropout 0.2 and [0.2, 0.2] too. A value the model
    could not have been built with is left as it is, for the caller's diff."""
    info = dict(info)
    sizes = info.get("sizes")
    if isinstance(sizes, (list, tuple)):
        for k, spell in (("activation", _check_activation), ("dropout", _check_dropout)):
            if k in info:
                try:
                    info[k] = spell(info[k], len(sizes) - 2)
                except (TypeError, ValueError):
                    pass
    return info


def fit(model, optimizer, x, y, *, epochs, **kwargs):
    """Train in one call: ``Trainer(model, optimizer, (x, y), **kwargs).fit(epochs)``.

    Mini-batches of 128 by default (batch_size=None or 0: full batch).
    Returns the history, as ``Trainer.fit`` does: a list of per-epoch record
    dicts (train_loss, lr, ..., test_acc when test= is given).
    """
    resume = kwargs.pop("resume", False)
    return Trainer(model, optimizer, (x, y), **kwargs).fit(epochs, resume=resume)
