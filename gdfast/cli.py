"""The ``gdfast`` command: ``gdfast train``, ``gdfast evaluate``, ``gdfast optimizers``,
``gdfast bench``.

Each subcommand is one entry in COMMANDS: a function adding its arguments
and a function running it, so a new one is a few lines.
"""
import argparse
import math
import sys
import time
from pathlib import Path

__all__ = ["main", "COMMANDS"]

_IMAGE_SIDE = 28    # MNIST and Fashion-MNIST images are 28x28: a shift must stay inside
INITS = ("he", "xavier", "glorot", "normal")    # gdfast.mlp.INITS, without importing the extension
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "adagrad", "lion", "lbfgs")
SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "sgdr", "onecycle", "plateau")

# nielsen: the classic network of Nielsen's "Neural Networks and Deep Learning",
# chapter 1. fashion-mnist: >= 90% test accuracy in under a minute on 2 cores
# (README), the default of --dataset fashion-mnist.
PRESETS = {
    "nielsen": dict(hidden=[30], activation="sigmoid", loss="mse", init="normal",
                    optimizer="sgd", lr=3.0, schedule="constant", warmup=0.0,
                    epochs=30, batch_size=10, shift=0, weight_decay=0.0),
    "fashion-mnist": dict(hidden=[256, 128], dropout=0.25, epochs=40, batch_size=256, shift=0),
}
PRESET_HELP = {"nielsen": "784-30-10 sigmoid, quadratic cost, SGD batch 10, lr 3.0, 30 epochs",
               "fashion-mnist": "784-256-128-10 relu, dropout 0.25, Adam lr 2e-3 cosine, batch 256, "
                                "no shift, 40 epochs (the default with --dataset fashion-mnist)"}


def _sizes(text):
    try:
        sizes = [int(s) for s in text.replace("-", ",").split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden sizes must be integers like 256,128, got {text!r}")
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be >= 1, got {text!r}")
    return sizes


def _rates(text):
    """Dropout: one rate for every hidden layer, or one per layer (0.2 or 0.2,0.1)."""
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            rate = math.nan
        if not 0 <= rate < 1:
            raise argparse.ArgumentTypeError(f"dropout rates must be numbers in [0, 1) like 0.2 or "
                                             f"0.2,0.1, got {text!r}")
        rates.append(rate)
    return rates[0] if len(rates) == 1 else rates


# gdfast.mlp.ACTIVATIONS without identity (a hidden layer needs a nonlinearity), without
# importing the extension
ACTIVATIONS = ("relu", "sigmoid", "tanh")


def _activations(text):
    """One activation for every hidden layer, or one per layer (relu or relu,tanh)."""
    names = text.split(",")
    bad = [n for n in names if n not in ACTIVATIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"activations must be {', '.join(ACTIVATIONS)} (one, or "
                                         f"one per hidden layer like relu,tanh), got {text!r}")
    return names[0] if len(names) == 1 else names


def _number(kind=float, low=None, high=None, low_open=False, high_open=True):
    """An argparse type: a finite `kind` in [low, high) (open/closed ends as given)."""
    bounds = (f"{'>' if low_open else '>='} {low:g}" if low is not None else "",
              f"{'<' if high_open else '<='} {high:g}" if high is not None else "")
    expected = f"{'an integer' if kind is int else 'a number'} {' and '.join(b for b in bounds if b)}".strip()

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) \
                or (high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


def _validation(text):
    """A fraction in (0, 1), or a whole count (2 or 2.0); not 2.5."""
    value = _number(float, 0)(text)
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a whole count, got {text!r}")
    return int(value) if value >= 1 else value


def _add_train(p):
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    d.add_argument("--data", metavar="DIR", help="directory holding the IDX files "
                   "(default: $GDFAST_DATA/<dataset>, ~/.cache/gdfast/<dataset>, ...)")
    d.add_argument("--train", metavar="FILE", dest="train_file",
                   help="train on your own data instead: a .csv (header row, a label column) "
                        "or a .npz (arrays x and y)")
    d.add_argument("--test", metavar="FILE", dest="test_file",
                   help="your own test data, as --train (optional)")
    d.add_argument("--label-column", metavar="NAME", default="label",
                   help="the label column of --train/--test .csv files (default label)")
    d.add_argument("--no-download", dest="download", action="store_false",
                   help="never try to download missing files")
    d.add_argument("--validation", type=_validation, default=0,
                   help="held-out validation examples: below 1 a fraction of the training set "
                        "(0.1), else a count (5000 or 5000.0; 2.5 is refused) (default 0)")
    d.add_argument("--shift", type=_number(int, 0, _IMAGE_SIDE), default=None,
                   help="augment by random translations of up to this many pixels, "
                        f"0 to {_IMAGE_SIDE - 1} (default 1 for 28x28 images, else 0)")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS),
                   help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) +
                        "; flags given explicitly win")
    m.add_argument("--hidden", type=_sizes, default=[256, 128], help="hidden sizes (default 256,128)")
    m.add_argument("--activation", type=_activations, default="relu", metavar="NAME",
                   help=f"{', '.join(ACTIVATIONS)}: one for all hidden layers, or one per "
                        "layer (relu,tanh) (default relu)")
    m.add_argument("--loss", choices=["cross_entropy", "mse"], default="cross_entropy")
    m.add_argument("--init", choices=INITS, default="he", help="weight initialisation (default he)")
    m.add_argument("--dropout", type=_rates, default=0.0, metavar="P",
                   help="inverted dropout of the hidden layers: one rate, or one per hidden "
                        "layer (0.2,0.1) (default 0)")
    m.add_argument("--alpha", type=_number(float, 0), default=0.0,
                   help="L2 penalty on the weights, as scikit-learn's alpha (default 0)")
    o = p.add_argument_group("optimizer")
    o.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="lbfgs: full batch, strong-Wolfe line search, lr 1 (default adam)")
    o.add_argument("--lr", type=_number(float, 0, low_open=True), default=2e-3,
                   help="peak learning rate (default 2e-3)")
    o.add_argument("--momentum", type=_number(float, 0, 1),
                   help="for momentum and nesterov (default 0.9) and rmsprop (default 0)")
    o.add_argument("--betas", type=_number(float, 0, 1), nargs=2, metavar=("B1", "B2"),
                   help="for adam/adamw (default 0.9 0.999) and lion (default 0.9 0.99)")
    o.add_argument("--eps", type=_number(float, 0, low_open=True), default=None,
                   help="optimizer epsilon (default: its own)")
    o.add_argument("--weight-decay", type=_number(float, 0), default=0.0)
    o.add_argument("--clip-norm", type=_number(float, 0, low_open=True),
                   help="clip the global gradient norm to this")
    o.add_argument("--agc", type=_number(float, 0, low_open=True), metavar="CLIP",
                   help="adaptive gradient clipping (Brock et al. 2021) of every layer but the "
                        "output layer with this clip factor (the paper: 0.01)")
    o.add_argument("--ema", type=_number(float, 0, 1, low_open=True), metavar="MOMENTUM",
                   help="keep a moving average of the weights (e.g. 0.999) and evaluate with it")
    o.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    o.add_argument("--warmup", type=_number(float, 0), default=1.0,
                   help="linear warmup in epochs (default 1)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_number(int, 1), default=15)
    t.add_argument("--batch-size", type=_number(int, 0), default=128,
                   help="0 for full-batch gradient descent (default 128)")
    t.add_argument("--accumulate", type=_number(int, 1), default=1, metavar="K",
                   help="gradient accumulation: one optimizer step per K batches, the same "
                        "step as one batch K times larger (default 1)")
    t.add_argument("--monitor-layers", action="store_true",
                   help="record per layer gradient norm, weight norm, update/weight ratio and "
                        "dead ReLU units each epoch (in the history; drawn by --plot)")
    t.add_argument("--early-stopping", type=_number(int, 1), metavar="PATIENCE",
                   help="stop after this many epochs without improvement (needs --validation)")
    t.add_argument("--threads", type=_number(int, 1), help="worker threads (default: OMP_NUM_THREADS or all cores; "
                   "under mpirun, per rank: the host's cores divided between its ranks)")
    t.add_argument("--overlap", action="store_true",
                   help="under mpirun: start each layer's allreduce inside backward, as soon as "
                        "the layer is done (measured slower on one host; see docs/distributed.md)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write last.npz and history.json/.csv here every epoch, and best.npz "
                        "whenever the monitored metric improves")
    t.add_argument("--resume", action="store_true", help="continue from DIR/last.npz")
    t.add_argument("--plot", metavar="PNG", type=_png_path,
                   help="save loss, accuracy and lr curves (needs matplotlib); .png is added "
                        "when the name has no suffix")
    t.add_argument("--save-model", metavar="PATH",
                   help="write the trained model here at the end (gdfast.MLP.load reads it)")
    t.add_argument("--no-progress", dest="progress", action="store_false")


def _png_path(text):
    """The path the plot is written to: matplotlib adds .png to a name without a suffix."""
    path = Path(text)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {str(path.parent)!r} does not exist")
    return path


def _fail(command, message):
    """A usage error: one line and exit status 2, as argparse's own."""
    print(f"gdfast {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _apply_preset(args, argv):
    """Preset values, except for flags given explicitly on the command line;
    --dataset fashion-mnist without --preset takes its own."""
    if args.preset is None and args.dataset == "fashion-mnist" and not args.train_file:
        args.preset = "fashion-mnist"
    if args.preset is None:
        return
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for key, value in PRESETS[args.preset].items():
        if "--" + key.replace("_", "-") not in given:
            setattr(args, key, value)


def _lbfgs_settings(args, argv):
    """L-BFGS trains full batch with a line search: lr 1 (its first trial
    step) and a constant schedule unless given; no weight decay or clipping."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    for flag, ok in (("--batch-size", "--batch-size" not in given or args.batch_size == 0),
                     ("--weight-decay", not args.weight_decay),
                     ("--clip-norm", args.clip_norm is None), ("--agc", args.agc is None),
                     ("--ema", args.ema is None), ("--accumulate", args.accumulate == 1)):
        if not ok:
            _fail("train", f"{flag} does not apply to lbfgs (full batch, no weight decay or "
                  f"clipping)")
    args.batch_size = 0
    if "--lr" not in given:
        args.lr = 1.0
    if "--schedule" not in given:
        args.schedule, args.warmup = "constant", 0.0


def _make_optimizer(name, params, args):
    import gdfast
    if name == "lbfgs":     # 20 iterations per epoch, each with its line search
        return gdfast.LBFGS(params, lr=args.lr, line_search_fn="strong_wolfe")
    kw = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.eps is not None:
        kw["eps"] = args.eps
    if getattr(args, "ema", None):
        kw["ema"] = args.ema
    if getattr(args, "agc", None):     # the output layer (the last w, b) is left out, as the paper
        kw["groups"] = [{"params": params.names[:-2], "agc": args.agc}]
    if name == "sgd":
        return gdfast.SGD(params, **kw)
    if name in ("momentum", "nesterov"):
        momentum = 0.9 if args.momentum is None else args.momentum
        return gdfast.SGD(params, momentum=momentum, nesterov=name == "nesterov", **kw)
    if name == "rmsprop":
        return gdfast.RMSprop(params, momentum=args.momentum or 0.0, **kw)
    if name in ("adam", "adamw"):
        betas = tuple(args.betas or (0.9, 0.999))
        return (gdfast.Adam if name == "adam" else gdfast.AdamW)(params, betas=betas, **kw)
    if name == "lion":
        return gdfast.Lion(params, betas=tuple(args.betas or (0.9, 0.99)), **kw)
    return gdfast.Adagrad(params, **kw)


class _ProgressBar:
    """A tqdm bar per epoch with the live running loss and training accuracy."""

    def __init__(self, epochs, enabled=True, mininterval=0.2):
        self.epochs, self.enabled, self.mininterval = epochs, enabled, mininterval
        self.bar = None

    def on_epoch_begin(self, epoch, steps):
        self.loss_sum, self.count, self.epoch = 0.0, 0, epoch
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:     # a declared dependency; without it, epoch lines only
                self.enabled = False
                return
            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", unit="step",
                            leave=False, dynamic_ncols=True, mininterval=self.mininterval,
                            file=sys.stderr)

    def on_step(self, loss, acc):
        self.loss_sum += loss
        self.count += 1
        if self.bar is not None:
            self.bar.update()
            if self.count % 25 == 0:
                post = {"loss": f"{self.loss_sum / self.count:.4f}"}
                if acc is not None:
                    post["train acc"] = f"{100 * acc:.1f}%"
                self.bar.set_postfix(post, refresh=False)

    def on_epoch_end(self, r):
        if self.bar is not None:
            self.bar.close()
        parts = [f"epoch {r['epoch']:>3}/{self.epochs}", f"loss {r['train_loss']:.4f}"]
        if "val_acc" in r:
            parts.append(f"val acc {100 * r['val_acc']:.2f}%")
        if "test_acc" in r:
            parts += [f"test loss {r['test_loss']:.4f}", f"test acc {100 * r['test_acc']:.2f}%"]
        parts.append(f"lr {r['lr']:.3g}")
        if r.get("grad_norm") is not None:
            parts.append(f"|g| {r['grad_norm']:.3g}")
        parts.append(f"{r['samples_per_s']:,.0f} samples/s")
        print("  ".join(parts), flush=True)


def _run_train(args, argv):
    t_start = time.perf_counter()
    _apply_preset(args, argv)
    if args.resume and not args.checkpoint_dir:
        _fail("train", "--resume needs --checkpoint-dir")
    if args.early_stopping and not args.validation:
        _fail("train", "--early-stopping needs --validation (a held-out split to watch)")
    if args.momentum is not None and args.optimizer not in ("momentum", "nesterov", "rmsprop"):
        _fail("train", f"--momentum applies to momentum, nesterov and rmsprop, not {args.optimizer}")
    if args.betas is not None and args.optimizer not in ("adam", "adamw", "lion"):
        _fail("train", f"--betas applies to adam, adamw and lion, not {args.optimizer}")
    if args.eps is not None and args.optimizer in ("sgd", "momentum", "nesterov", "lion", "lbfgs"):
        _fail("train", f"--eps does not apply to {args.optimizer}")
    if args.agc and not args.hidden:
        _fail("train", "--agc clips the hidden layers (the output layer is left out): "
              "give --hidden sizes")
    if args.optimizer == "lbfgs":
        _lbfgs_settings(args, argv)
    if args.test_file and not args.train_file:
        _fail("train", "--test needs --train (the test set of --dataset is used otherwise)")
    if args.checkpoint_dir and not args.resume and (Path(args.checkpoint_dir) / "last.npz").exists():
        _fail("train", f"{args.checkpoint_dir} holds a run; pass --resume to continue it "
              "or choose another directory")
    if args.plot:
        _pyplot()       # a missing matplotlib is said before training, not after
    from gdfast import distributed
    if not distributed.launched():
        if args.overlap:
            _fail("train", "--overlap applies to runs on several ranks (mpirun -n N gdfast train)")
        return _train(args, t_start, None)
    comm = distributed.start(args.threads)     # under mpirun: every rank runs this command
    with distributed.abort_on_error(comm):
        return _train(args, t_start, comm)


def _train(args, t_start, comm):
    """gdfast train once its arguments are checked; comm: MPI's world when
    several ranks train together (rank 0 prints and writes files)."""
    import gdfast
    from gdfast import datasets, distributed, schedules
    from gdfast.train import Trainer, TrainingDiverged
    root = comm is None or comm.Get_rank() == 0
    if args.threads:
        gdfast.set_num_threads(args.threads)
    try:
        if args.train_file:
            data = _load_user_data(args)
        else:
            data = datasets.load(args.dataset, args.data, download=args.download,
                                 validation=args.validation)
    except (FileNotFoundError, datasets.DatasetError) as e:
        _fail("train", " ".join(str(e).split()))
    except ValueError as e:         # a --validation count as large as the training set
        _fail("train", f"--validation: {e}")
    image_data = data.x_train.shape[1] == _IMAGE_SIDE ** 2
    if args.shift is None:          # augmentation by translation only makes sense for images
        args.shift = 1 if image_data else 0
    elif args.shift and not image_data:
        _fail("train", f"--shift needs {_IMAGE_SIDE}x{_IMAGE_SIDE} images ({_IMAGE_SIDE ** 2} "
              f"features), the data has {data.x_train.shape[1]}")
    if data.source == "bundled sample":
        n_val = 0 if data.x_val is None else len(data.x_val)
        print(f"using the MNIST sample bundled with gdfast ({len(data.x_train) + n_val:,} train / "
              f"{len(data.x_test):,} test images); the full 60,000-image set downloads when the "
              "network allows", flush=True)
    n_out = 10 if not args.train_file else 1 + max(
        int(y.max()) for y in (data.y_train, data.y_val, data.y_test) if y is not None)
    sizes = [data.x_train.shape[1]] + list(args.hidden) + [n_out]
    for flag, value, what in (("--dropout", args.dropout, "rates"),
                              ("--activation", args.activation, "names")):
        if isinstance(value, list) and len(value) != len(args.hidden):
            _fail("train", f"{flag} has {len(value)} {what} but --hidden has "
                  f"{len(args.hidden)} layers (give one for all, or one per layer)")
    model = gdfast.MLP(sizes=sizes, activation=args.activation, loss=args.loss, init=args.init,
                       seed=args.seed, alpha=args.alpha, dropout=args.dropout)
    optimizer = _make_optimizer(args.optimizer, model.params, args)
    batch = args.batch_size or None
    n = len(data.x_train)
    steps_per_epoch = -(-(1 if batch is None else -(-n // batch)) // args.accumulate)
    total = steps_per_epoch * args.epochs
    warmup = 0 if args.schedule == "onecycle" else round(args.warmup * steps_per_epoch)  # it has its own
    schedule = schedules.make(args.schedule, args.lr, total, warmup=warmup,
                              steps_per_epoch=steps_per_epoch)
    reg = "".join(f", {k} {v if isinstance(v, float) else ','.join(map(str, v))}"
                  for k, v in (("dropout", args.dropout), ("alpha", args.alpha)) if v)
    act = args.activation if isinstance(args.activation, str) else ",".join(args.activation)
    settings = (f"{'-'.join(map(str, sizes))} {act} {args.loss}{reg}, {args.optimizer} "
                f"lr {args.lr:g} {args.schedule}, batch {batch or 'full'}, shift {args.shift if batch else 0}, "
                f"{args.epochs} epochs")
    n_test = "no" if data.x_test is None else len(data.x_test)
    print(f"gdfast {gdfast.__version__}: {data.name} {n} train / {n_test} test"
          f"{f' / {len(data.x_val)} val' if data.x_val is not None else ''} from {data.source}; "
          f"{settings}, {f'{comm.Get_size()} ranks x ' if comm else ''}"
          f"{gdfast.get_num_threads()} threads", flush=True)
    last = Path(args.checkpoint_dir) / "last.npz" if args.checkpoint_dir else None
    has_run = last is not None and last.exists()
    if comm is not None:            # rank 0's files decide: the others may not see them
        has_run = comm.bcast(has_run, root=0)
    if args.resume and not has_run:
        print(f"no checkpoint in {args.checkpoint_dir} yet: starting from scratch")
    progress = _ProgressBar(args.epochs, enabled=args.progress and root)
    ranks = {} if comm is None else {"overlap": args.overlap}
    trainer = (Trainer if comm is None else distributed.DistributedTrainer)(model, optimizer, (data.x_train, data.y_train), batch_size=batch,
                      schedule=schedule, seed=args.seed, shift=args.shift if batch else 0,
                      validation=(data.x_val, data.y_val) if data.x_val is not None else None,
                      test=(data.x_test, data.y_test) if data.x_test is not None else None,
                      early_stopping=args.early_stopping,
                      checkpoint_dir=args.checkpoint_dir, progress=progress,
                      clip_norm=args.clip_norm, accumulate=args.accumulate,
                      eval_ema=bool(args.ema), monitor_layers=args.monitor_layers, **ranks)
    if args.resume and has_run:
        try:
            trainer.load_checkpoint(last)
        except (ValueError, OSError) as e:     # CheckpointError is a ValueError
            _fail("train", f"cannot resume from {last}: {e}")
    try:
        history = trainer.fit(args.epochs)
    except TrainingDiverged as e:
        sys.exit(f"gdfast train: {e}")
    if not history:
        sys.exit("gdfast train: nothing to do (the checkpoint already has all epochs)")
    last = history[-1]
    if trainer.stopped_early:
        print(f"early stopping after epoch {last['epoch']}: no {trainer.monitor} improvement "
              f"for {args.early_stopping} epochs")
    if args.early_stopping:
        print(f"best {trainer.monitor} {trainer.best:.4g}: its parameters restored")
    if data.x_test is None:     # nothing held out to measure accuracy on
        result = f"final training loss {last['train_loss']:.4f}"
    elif args.early_stopping:   # the best epoch's parameters are back: measure those
        result = f"final test accuracy {100 * model.evaluate(data.x_test, data.y_test)[1]:.2f}%"
    else:
        result = f"final test accuracy {100 * last['test_acc']:.2f}%"
    rate = sum(r["samples_per_s"] * r["train_time"] for r in history) / sum(r["train_time"] for r in history)
    print(f"{result}  |  training throughput {rate:,.0f} samples/s  |  "
          f"total {time.perf_counter() - t_start:.1f} s")
    if args.save_model and root:
        model.save(args.save_model)
        print(f"model saved to {args.save_model}")
    if args.plot and root:
        _plot_history(history, args.plot, f"{data.name}: {settings}")
    return 0


def _load_user_data(args):
    """The --train (and --test) files as a datasets.Data; x_test is None without --test."""
    from gdfast import datasets
    x, y = datasets.load_file(args.train_file, args.label_column)
    x_test = y_test = None
    if args.test_file:
        x_test, y_test = datasets.load_file(args.test_file, args.label_column)
        if x_test.shape[1] != x.shape[1]:
            raise datasets.DatasetError(f"{args.test_file} has {x_test.shape[1]} features but "
                                        f"{args.train_file} has {x.shape[1]}")
    data = datasets.Data(Path(args.train_file).name, str(args.train_file), x, y, x_test, y_test)
    return data.hold_out(args.validation)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("gdfast: --plot needs matplotlib: pip install 'gdfast[plot]' (or pip install matplotlib)")
    return plt


def _plot_history(history, path, title):
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    layers = [k for k in history[0] if k.startswith(("update_ratio/", "dead/"))]
    if layers:      # --monitor-layers: a second row with the per-layer figures
        fig, axes = plt.subplots(2, 3, figsize=(14, 8))
        (ax_loss, ax_acc, ax_lr), monitor = axes
        _plot_layers(history, epochs, monitor)
    else:
        fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation"), ("test_loss", "test")):
        if key in history[0]:
            ax_loss.plot(epochs, [r[key] for r in history], marker=".", label=label)
    ax_loss.set(title="loss", xlabel="epoch", yscale="log")
    for key, label in (("train_acc", "train (estimate)"), ("val_acc", "validation"),
                       ("test_acc", "test")):
        if history[0].get(key) is not None:
            ax_acc.plot(epochs, [100 * r[key] for r in history], marker=".", label=label)
    ax_acc.set(title="accuracy (%)", xlabel="epoch")
    ax_lr.plot(epochs, [r["lr"] for r in history], marker=".")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"curves saved to {path}")


def _plot_layers(history, epochs, axes):
    """Gradient norms, update/weight ratios and dead ReLU fractions per tensor/layer."""
    ax_grad, ax_ratio, ax_dead = axes
    for ax, prefix, title, log in ((ax_grad, "grad_norm/", "gradient norm (last step)", True),
                                   (ax_ratio, "update_ratio/", "update / weight norm", True),
                                   (ax_dead, "dead/", "dead ReLU units (fraction)", False)):
        for key in [k for k in history[0] if k.startswith(prefix)]:
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [math.nan if v is None else v for v in values], marker=".",
                        label=key[len(prefix):] if prefix != "dead/" else f"layer {key[5:]}")
        ax.set(title=title, xlabel="epoch", yscale="log" if log else "linear")
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)


# -- gdfast optimizers ---------------------------------------------------------

# Per test function: (optimizer, learning rate) chosen so each makes visible progress.
TRAJECTORY_LRS = {
    "rosenbrock": {"gd": 1e-3, "momentum": 5e-4, "nesterov": 5e-4, "rmsprop": 1e-2,
                   "adam": 0.1, "adamw": 0.1, "adagrad": 0.5},
    "beale": {"gd": 1e-2, "momentum": 2e-3, "nesterov": 2e-3, "rmsprop": 1e-2,
              "adam": 5e-2, "adamw": 5e-2, "adagrad": 0.5},
    "noisy-bowl": {"gd": 0.05, "momentum": 0.01, "nesterov": 0.01, "rmsprop": 0.05,
                   "adam": 0.1, "adamw": 0.1, "adagrad": 1.0},
}


def optimizer_factory(name, lr):
    """A make_optimizer(params) for testfuncs.trajectory, using gdfast's own classes."""
    import gdfast
    makers = {
        "gd": lambda p: gdfast.SGD(p, lr=lr),
        "momentum": lambda p: gdfast.SGD(p, lr=lr, momentum=0.9),
        "nesterov": lambda p: gdfast.SGD(p, lr=lr, momentum=0.9, nesterov=True),
        "rmsprop": lambda p: gdfast.RMSprop(p, lr=lr),
        "adam": lambda p: gdfast.Adam(p, lr=lr),
        "adamw": lambda p: gdfast.AdamW(p, lr=lr, weight_decay=0.01),
        "adagrad": lambda p: gdfast.Adagrad(p, lr=lr),
    }
    return makers[name]


def _add_optimizers(p):
    p.add_argument("--plot", metavar="PNG", type=_png_path,
                   help="draw the trajectories over contour plots (.png added when no suffix)")
    p.add_argument("--steps", type=_number(int, 1), default=1000,
                   help="steps per optimizer (default 1000)")
    p.add_argument("--functions", nargs="+", choices=list(TRAJECTORY_LRS), default=list(TRAJECTORY_LRS))
    p.add_argument("--seed", type=int, default=0, help="seed of the noisy bowl's gradient noise")


def _run_optimizers(args, argv):
    import numpy as np
    from gdfast.testfuncs import FUNCTIONS, trajectory
    results = {}
    for fname in args.functions:
        func = FUNCTIONS[fname]
        print(f"{fname}: start {func.start}, minimum {func.minimum}")
        for opt, lr in TRAJECTORY_LRS[fname].items():
            path = trajectory(func, optimizer_factory(opt, lr), args.steps, seed=args.seed)
            results[fname, opt] = path
            end = path[-1]
            dist = float(np.hypot(*(end - np.array(func.minimum))))
            status = "" if len(path) == args.steps + 1 else f"  (diverged after {len(path) - 1} steps)"
            print(f"  {opt:<9} lr {lr:<7g} end ({end[0]:+.4f}, {end[1]:+.4f})  "
                  f"f {func.value(*end):.3g}  distance to minimum {dist:.3g}{status}")
    if args.plot:
        _plot_trajectories(results, args.functions, args.plot)
    return 0


def _plot_trajectories(results, functions, path):
    import numpy as np
    from gdfast.testfuncs import FUNCTIONS
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(functions), figsize=(6.5 * len(functions), 5.5), squeeze=False)
    for ax, fname in zip(axes[0], functions):
        func = FUNCTIONS[fname]
        xs, ys = np.linspace(*func.xlim, 300), np.linspace(*func.ylim, 300)
        X, Y = np.meshgrid(xs, ys)
        Z = func.value(X, Y)
        levels = np.logspace(-1, np.log10(Z.max()), 25) if func.log_contours else 25
        ax.contour(X, Y, Z, levels=levels, cmap="Greys", linewidths=0.6,
                   norm=plt.matplotlib.colors.LogNorm() if func.log_contours else None)
        # Paths often overlap: each gets its own marker every ~10th of the way
        # and a large one at its end, and the legend says its learning rate.
        for opt, marker in zip(TRAJECTORY_LRS[fname], "os^Dvph"):    # "*" marks the minimum
            traj = results[fname, opt]
            line, = ax.plot(traj[:, 0], traj[:, 1], lw=1.3, marker=marker, ms=3.5,
                            markevery=max(1, len(traj) // 10),
                            label=f"{opt} (lr {TRAJECTORY_LRS[fname][opt]:g})")
            ax.plot(*traj[-1], marker=marker, ms=9, color=line.get_color(), mec="k")
        ax.plot(*func.start, "ko", ms=5)
        ax.plot(*func.minimum, "r*", ms=12)
        ax.set(xlim=func.xlim, ylim=func.ylim, title=fname)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"trajectories saved to {path}")


# -- gdfast evaluate -------------------------------------------------------------

def _add_evaluate(p):
    p.add_argument("model", metavar="MODEL",
                   help="a model from gdfast train --save-model or MLP.save, or a checkpoint "
                        "(last.npz, best.npz)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=["mnist", "fashion-mnist"],
                     help="evaluate on this data set's test split")
    src.add_argument("--file", metavar="FILE", help="evaluate on your own .csv or .npz data")
    p.add_argument("--data", metavar="DIR", help="directory holding the IDX files of --dataset")
    p.add_argument("--label-column", metavar="NAME", default="label",
                   help="the label column of a --file .csv (default label)")
    p.add_argument("--predictions", metavar="CSV",
                   help="write the predicted label of each example here (header: prediction)")


def _run_evaluate(args, argv):
    import gdfast
    from gdfast import datasets
    from gdfast.checkpoint import CheckpointError
    if args.data and not args.dataset:
        _fail("evaluate", "--data applies to --dataset")
    try:
        model = gdfast.MLP.load(args.model)
    except (OSError, CheckpointError) as e:
        _fail("evaluate", f"cannot load the model: {e}")
    try:
        if args.file:
            x, y = datasets.load_file(args.file, args.label_column)
        else:
            data = datasets.load(args.dataset, args.data, download=False)
            x, y = data.x_test, data.y_test
    except (FileNotFoundError, datasets.DatasetError) as e:
        _fail("evaluate", str(e))
    name = args.file or f"{args.dataset} test"
    if x.shape[1] != model.sizes[0]:
        _fail("evaluate", f"{name} has {x.shape[1]} features but the model takes {model.sizes[0]}")
    if y.max() >= model.sizes[-1]:
        _fail("evaluate", f"{name} has label {int(y.max())} but the model has only "
              f"{model.sizes[-1]} classes")
    loss, acc = model.evaluate(x, y)
    print(f"{name}: {len(x)} examples  loss {loss:.4f}  accuracy {100 * acc:.2f}%")
    if args.predictions:
        lines = ["prediction"] + [str(int(c)) for c in model.predict(x)]
        try:
            Path(args.predictions).write_text("\n".join(lines) + "\n")
        except OSError as e:
            _fail("evaluate", f"cannot write --predictions: {e}")
        print(f"predictions saved to {args.predictions}")
    return 0


def _add_bench(p):
    from . import bench
    bench.add_arguments(p)


def _run_bench(args, argv):
    from . import bench
    return bench.run_from_args(args, argv[1:])


COMMANDS = {
    "train": ("train an MLP on MNIST, Fashion-MNIST or your own data", _add_train, _run_train),
    "optimizers": ("run the optimizers on 2-D test functions (and plot their paths)",
                   _add_optimizers, _run_optimizers),
    "evaluate": ("measure a saved model's loss and accuracy (and write its predictions)",
                 _add_evaluate, _run_evaluate),
    "bench": ("benchmark the kernels against NumPy (and PyTorch if installed)",
              _add_bench, _run_bench),
}


def build_parser():
    from ._version import __version__
    parser = argparse.ArgumentParser(prog="gdfast", description="Fast gradient descent on the CPU.")
    parser.add_argument("--version", action="version", version=f"gdfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        # no abbreviations: a preset must see every flag given explicitly
        add_args(sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False))
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][2](args, argv)
