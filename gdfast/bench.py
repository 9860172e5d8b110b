"""`gdfast bench`: gdfast against pure NumPy and the machine's ceilings.

Every figure is a median over repeated timed runs after a warm-up, and every
ratio compares numbers measured in the same run: the speed-up over the NumPy
reference, and the fraction of a ceiling measured here (memory bandwidth for
optimizer steps, or the square-root-and-divide loop for the updates that need
both per parameter when that is lower; the FMA loop for GEMM), each ceiling
the best of repeated measurements and never shown as beaten (no row prints
more than 100%).
"""
import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import gdfast
from gdfast import _kernels


def median_time(fn, *, repeats=7, min_batch_seconds=0.01, max_seconds=2.0,
                warmup_seconds=0.05):
    """Median seconds per call of fn(), after `warmup_seconds` of warm-up calls
    (at least one): after a pause (quiet_cores) the first few dozen small
    calls run up to 30% slower on this kind of VM while the cores wake up.

    Calls are grouped in batches lasting at least `min_batch_seconds` so that
    the timer's resolution never matters; fewer repeats are made when one call
    is so slow that `max_seconds` would be exceeded.
    """
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-9)
    while time.perf_counter() - start < warmup_seconds:
        fn()
    per_batch = max(1, math.ceil(min_batch_seconds / once))
    repeats = max(3, min(repeats, int(max_seconds / (once * per_batch))))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter() - start) / per_batch)
    return statistics.median(samples)


SETTLE_SECONDS = 0.25


def quiet_cores():
    """Wait for other libraries' idle worker threads to stop spinning.

    OpenBLAS and torch's OpenMP keep their workers busy-waiting for a while
    after each call (OpenBLAS about 0.1 s); gdfast timed in that window shares
    its cores with them and looks up to 2x slower than it is."""
    time.sleep(SETTLE_SECONDS)


@dataclass
class Row:
    """One benchmark case: gdfast vs the NumPy reference (and torch if present)."""
    section: str
    case: str
    threads: int
    gdfast_s: float
    numpy_s: float = float("nan")
    unit: str = ""            # what `rate` counts per second: GB/s, GFLOP/s, samples/s
    work: float = 0.0         # units of `unit` done per call (bytes/1e9, flop/1e9, samples)
    ceiling: float = float("nan")  # the machine's ceiling in `unit`
    extra: dict = field(default_factory=dict)  # torch timings etc., seconds per call

    @property
    def speedup(self):
        return self.numpy_s / self.gdfast_s

    @property
    def rate(self):
        return self.work / self.gdfast_s

    @property
    def fraction(self):
        """rate / ceiling, or NaN (no figure) when there is no ceiling or the
        kernel beat it: a probe that was beaten was no bound, and a fraction
        above 100% of it would mean nothing."""
        if not self.rate <= self.ceiling:
            return float("nan")
        return self.rate / self.ceiling

    def as_dict(self):
        d = asdict(self)
        d.update(speedup=self.speedup, rate=self.rate, fraction_of_ceiling=self.fraction)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def machine():
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, **gdfast.build_info()}


CEILING_REPEATS = 5


def _best_rate(loop, iters, threads, repeats):
    """Billions of what loop(iters, threads) counts per second, best of `repeats` runs."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        done = loop(iters, threads)
        best = max(best, done / (time.perf_counter() - start) / 1e9)
    return best


def fma_peak(threads, quick=False, repeats=CEILING_REPEATS):
    """GFLOP/s of the FMA loop on `threads` threads, best of `repeats` runs."""
    return _best_rate(_kernels.fma_loop, 2_000_000 if quick else 20_000_000, threads, repeats)


def rootdiv_peak(threads, quick=False, repeats=CEILING_REPEATS):
    """G elements/s of the square-root-and-divide loop on `threads` threads,
    best of `repeats` runs: no update taking one root and one division per
    parameter (Adam, RMSprop, Adagrad) can go faster."""
    return _best_rate(_kernels.rootdiv_loop, 200_000 if quick else 2_000_000, threads, repeats)


def thread_ceilings(threads, measure):
    """{threads: ceiling}: measure(t) for every t in `threads` and 1, each
    raised to the best of the fewer-thread ones. More threads can always do
    what fewer do (the others idle), so a lower N-thread figure only means
    another process held a core during its measurement."""
    peaks, best = {}, 0.0
    for t in sorted({1, *threads}):
        best = max(best, measure(t))
        peaks[t] = best
    return {t: peaks[t] for t in threads}


def rmw_ceiling(n, rw, ro, rate=0.0, seconds=0.1, tries=3):
    """GB/s of the in-place read-modify-write probe with an optimizer step's
    streams (rw in place, ro read) at its size n: the best pass of as many as
    fit in `seconds` (at least 20), measured again up to `tries` times in all
    while the step's `rate` beats it (a short pass is easily slowed by a
    neighbour, and at cache-resident sizes one slow pass is no bound)."""
    bytes_per_pass = (2 * rw + ro) * 4 * n
    pass_seconds = bytes_per_pass / _kernels.bandwidth_rmw(n, rw, ro, 1)
    reps = max(20, int(seconds / pass_seconds))
    best = 0.0
    for _ in range(tries):
        best = max(best, _kernels.bandwidth_rmw(n, rw, ro, reps) / 1e9)
        if best >= rate:
            break
    return best


def step_ceiling(n, rw, ro, rate, rootdiv=None, param_bytes=0.0):
    """(GB/s, which probe) for an optimizer step over n parameters moving
    param_bytes each: the lower of the memory probe with its streams (sizes
    from 1e6; small steps' overheads keep them far from it) and, for updates
    taking a square root and a division per parameter, `rootdiv` (G elements/s
    of that loop) times param_bytes. (NaN, "-") when neither applies; a step
    at `rate` beating the lower one has no ceiling shown (Row.fraction)."""
    bounds = []
    if n >= 1_000_000:
        bounds.append((rmw_ceiling(n, rw, ro, rate), "memory"))
    if rootdiv:
        bounds.append((rootdiv * param_bytes, "sqrt+div"))
    return min(bounds) if bounds else (float("nan"), "-")


def _fmt_time(seconds):
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt_num(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def table(rows, markdown=False):
    """The rows as an aligned text table (or Markdown), one block per section,
    with the further columns (torch, ...) that section's rows have."""
    lines = []
    for section in dict.fromkeys(r.section for r in rows):
        section_rows = [r for r in rows if r.section == section]
        extra_columns = list(dict.fromkeys(k for r in section_rows for k in r.extra))
        headers = ["case", "threads", "gdfast", "numpy", "speed-up", "rate", "of ceiling",
                   *extra_columns]
        body = []
        for r in section_rows:
            body.append([
                r.case, str(r.threads), _fmt_time(r.gdfast_s), _fmt_time(r.numpy_s),
                f"{_fmt_num(r.speedup)}x" if not math.isnan(r.speedup) else "-",
                f"{_fmt_num(r.rate, 4)} {r.unit}",
                f"{r.fraction:.0%}" if not math.isnan(r.fraction) else "-",
                *[_fmt_extra(r.extra.get(c)) for c in extra_columns],
            ])
        if markdown:
            lines += [f"### {section}", "", "| " + " | ".join(headers) + " |",
                      "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(b) + " |" for b in body]
        else:
            widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
            lines.append(f"## {section}")
            lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
            lines.append("  ".join("-" * w for w in widths))
            lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
        lines.append("")
    return "\n".join(lines)


def _fmt_extra(value):
    return value if isinstance(value, str) else _fmt_time(value)


PLOT_INCHES = (12.0, 9.0)   # width and largest height: 1200x900 px at PLOT_DPI fits a screen
PLOT_DPI = 100


def plot_layout(rows):
    """How the speed-up chart is laid out: one panel per section, one label per
    case with a bar per thread count, in a figure no larger than PLOT_INCHES
    whose label font shrinks with the number of labels (but stays >= 7 pt).

    Returns {"figsize", "fontsize", "threads", "panels": [(section, cases, rows)]}."""
    rows = [r for r in rows if not math.isnan(r.speedup)]
    panels = []
    for section in dict.fromkeys(r.section for r in rows):
        section_rows = [r for r in rows if r.section == section]
        panels.append((section, list(dict.fromkeys(r.case for r in section_rows)), section_rows))
    labels = sum(len(cases) for _, cases, _ in panels)
    width, max_height = PLOT_INCHES
    # Each label needs about 0.22 in; each panel a title and axis ~0.6 in more.
    height = min(max_height, 0.22 * labels + 0.6 * len(panels) + 0.6)
    per_label = (height - 0.6 * len(panels) - 0.6) / max(labels, 1)
    return {"figsize": (width, height),
            "fontsize": max(7.0, min(10.0, 0.6 * 72 * per_label)),
            "threads": sorted({r.threads for r in rows}),
            "panels": panels}


def plot(rows, path):
    """A bar chart of the speed-ups over NumPy: a panel per section, a bar per
    case and thread count, sized to fit a screen (plot_layout)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'gdfast[plot]'") from None
    layout = plot_layout(rows)
    panels, threads, fontsize = layout["panels"], layout["threads"], layout["fontsize"]
    if not panels:
        raise SystemExit("--plot: no row has a NumPy time to compare with")
    fig, axes = plt.subplots(len(panels), 1, figsize=layout["figsize"], sharex=True,
                             squeeze=False,
                             gridspec_kw={"height_ratios": [len(c) + 1 for _, c, _ in panels]})
    bar = 0.8 / len(threads)
    colors = plt.get_cmap("tab10")
    for ax, (section, cases, section_rows) in zip(axes[:, 0], panels):
        for j, nt in enumerate(threads):
            bars = [(cases.index(r.case) + (j - (len(threads) - 1) / 2) * bar, r.speedup)
                    for r in section_rows if r.threads == nt]
            if bars:
                ax.barh(*zip(*bars), height=bar, color=colors(j),
                        label=f"{nt} thread{'s' if nt > 1 else ''}")
        ax.set_yticks(range(len(cases)), cases, fontsize=fontsize)
        ax.set_ylim(len(cases) - 0.5, -0.5)
        ax.set_title(section, fontsize=fontsize + 1, loc="left")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(axis="x", labelsize=fontsize)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=fontsize, loc="lower right")
    axes[-1, 0].set_xlabel("speed-up over the NumPy reference (median times, same run)",
                           fontsize=fontsize + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


# name: (class, hyperparameters, (arrays read and written in place, arrays
# only read)). The gradient is read; the rest is read and written, so the
# bytes a step must move are (2*rw + ro) * 4 per parameter (Adam: 28).
OPTIMIZERS = {
    "sgd": ("SGD", {"lr": 1e-3}, (1, 1)),
    "sgd-momentum": ("SGD", {"lr": 1e-3, "momentum": 0.9}, (2, 1)),
    "rmsprop": ("RMSprop", {"lr": 1e-3}, (2, 1)),
    "adagrad": ("Adagrad", {"lr": 1e-2}, (2, 1)),
    "adam": ("Adam", {"lr": 1e-3}, (3, 1)),
    "adamw": ("AdamW", {"lr": 1e-3}, (3, 1)),
    "lion": ("Lion", {"lr": 1e-4}, (2, 1)),
}
OPTIMIZER_SIZES = [10_000, 100_000, 1_000_000, 10_000_000]
# The updates that take a square root and a division per parameter.
ROOT_DIV = {"rmsprop", "adagrad", "adam", "adamw"}

# name: (m, n, k, trans_a, trans_b), the products one MLP step at batch 64 makes.
GEMM_SHAPES = {
    "X @ W1 (forward) 64x784 @ 784x256": (64, 256, 784, False, False),
    "H1 @ W2 (forward) 64x256 @ 256x128": (64, 128, 256, False, False),
    "dZ2 @ W2.T (backward) 64x128 @ 128x256": (64, 256, 128, False, True),
    "X.T @ dZ1 (weight grad) 784x64 @ 64x256": (784, 256, 64, True, False),
    "x @ W1 (batch-1 forward) 1x784 @ 784x256": (1, 256, 784, False, False),
    "dz2 @ W2.T (batch-1 backward) 1x128 @ 128x256": (1, 256, 128, False, True),
    "square 1024^3": (1024, 1024, 1024, False, False),
}
MLP_SIZES = [784, 256, 128, 10]
MLP_BATCHES = [1, 32, 128, 512]
# Networks far larger than the default, timed at the batches where their
# steps are GEMM-bound; the second is Ciresan et al. 2010's 12M-weight MLP.
BIG_MLPS = [[784, 1024, 1024, 10], [784, 2500, 2000, 1500, 1000, 500, 10]]
BIG_BATCHES = [128, 512]


def mlp_flops_per_sample(sizes):
    """Forward, weight-gradient and input-gradient GEMMs (no dX for the first layer)."""
    macs = [a * b for a, b in zip(sizes, sizes[1:])]
    return 2.0 * (3 * sum(macs) - macs[0])


def gemm_operands(m, n, k, trans_a, trans_b, seed=0):
    """(a, b, out) for gdfast.matmul(a, b, trans_a, trans_b, out)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    return a, b, np.empty((m, n), np.float32)


def mlp_batch(n, seed=0, sizes=MLP_SIZES):
    rng = np.random.default_rng(seed)
    return rng.random((n, sizes[0]), dtype=np.float32), rng.integers(0, sizes[-1], n)


def mlp_batches(n, samples=8192, sizes=MLP_SIZES):
    """A cycle of distinct random batches of n: steps on one batch over and
    over would fit it, which is not what a training run times."""
    return itertools.cycle([mlp_batch(n, seed, sizes) for seed in range(max(4, samples // n))])


def mlp_cases(batches):
    """(batch, optimizer, lr): Adam at every batch size, and true single-example
    SGD (plain SGD at batch 1)."""
    return [(bs, "Adam", 1e-3) for bs in batches] + [(1, "SGD", 1e-2)] * (1 in batches)


def mlp_pair(seed=0, optimizer="Adam", lr=1e-3, sizes=MLP_SIZES):
    """gdfast's MLP + optimizer and the NumPy reference twins, from the same start."""
    from gdfast.reference.train import ReferenceMLP, ReferenceOptimizer
    model = gdfast.MLP(sizes, seed=seed)
    ref = ReferenceMLP(sizes, init_from=model.params)
    return ((model, getattr(gdfast, optimizer)(model.params, lr=lr)),
            (ref, ReferenceOptimizer(optimizer, ref.params, lr=lr)))


def blas_threads(n):
    """Pin NumPy's BLAS to n threads (threadpoolctl, the `bench` extra).

    Returns the limiter (call .restore_original_limits()), or None when
    threadpoolctl is missing and the BLAS keeps its own thread count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def bench_optimizers(sizes, threads, repeats, rootdiv, torch=None):
    from gdfast.reference import optim as ref_optim
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        params = gdfast.Params({"p": n})
        params.data[...] = rng.standard_normal(n, dtype=np.float32)
        params.grad[...] = rng.standard_normal(n, dtype=np.float32) * 1e-2
        ref_p, ref_g = params.data.copy(), params.grad.copy()
        for name, (cls, hyper, (rw, ro)) in OPTIMIZERS.items():
            opt = getattr(gdfast, cls)(params, **hyper)
            ref = getattr(ref_optim, cls)([ref_p], **hyper)
            bytes_per_step = (2 * rw + ro) * 4 * n
            quiet_cores()
            row = Row("optimizer step", f"{name} n={n:.0e}", threads,
                      gdfast_s=median_time(opt.step, repeats=repeats),
                      numpy_s=median_time(lambda: ref.step([ref_g]), repeats=repeats),
                      unit="GB/s", work=bytes_per_step / 1e9)
            row.ceiling, row.extra["bound"] = step_ceiling(
                n, rw, ro, row.rate, rootdiv if name in ROOT_DIV else None, (2 * rw + ro) * 4)
            if torch is not None:
                row.extra.update(_torch_optimizer(torch, cls, hyper, n, repeats))
            rows.append(row)
    return rows


# name: (Adam's extra options, (rw, ro) streams of the update). AGC adds a
# read of p and g for the unit norms (8 bytes per parameter), EMA one stream
# read and written in the update's pass (8 bytes).
AIDS = {
    "adam": ({}, (3, 1), 0),
    "adam+agc": ({"agc": 0.01}, (3, 1), 8),
    "adam+ema": ({"ema": 0.999}, (4, 1), 0),
    "adam+agc+ema": ({"agc": 0.01, "ema": 0.999}, (4, 1), 8),
}
AIDS_COLUMNS = 1000


def bench_aids(sizes, threads, repeats, rootdiv):
    """Adam with AGC and EMA on one (n / 1000, 1000) weight, each row timed in
    the same run as plain Adam on the same arena: the cost of the aids."""
    from gdfast.reference import optim as ref_optim
    rows = []
    rng = np.random.default_rng(0)
    for n in [n for n in sizes if n >= 1_000_000]:
        shape = (n // AIDS_COLUMNS, AIDS_COLUMNS)
        params = gdfast.Params({"w": shape})
        params.data[...] = rng.standard_normal(params.size, dtype=np.float32)
        params.grad[...] = rng.standard_normal(params.size, dtype=np.float32) * 1e-2
        start = params.data.copy()
        ref_p, ref_g = params["w"].copy(), params.grad_of("w").copy()
        base = None
        for name, (extra, (rw, ro), norm_bytes) in AIDS.items():
            params.data[...] = start
            opt = gdfast.Adam(params, lr=1e-3, **extra)
            ref = ref_optim.Adam([ref_p], lr=1e-3, **extra)
            quiet_cores()
            row = Row("optimizer step with AGC / EMA (Adam, one weight of 1000 columns)",
                      f"{name} n={params.size:.0e}", threads,
                      gdfast_s=median_time(opt.step, repeats=repeats),
                      numpy_s=median_time(lambda: ref.step([ref_g]), repeats=repeats),
                      unit="GB/s", work=((2 * rw + ro) * 4 + norm_bytes) * params.size / 1e9)
            if not norm_bytes:     # AGC's norms are a pass of their own: no one probe bounds it
                row.ceiling, row.extra["bound"] = step_ceiling(
                    params.size, rw, ro, row.rate, rootdiv, (2 * rw + ro) * 4)
            base = base or row.gdfast_s
            row.extra["vs adam"] = f"{row.gdfast_s / base:.3f}x"
            rows.append(row)
    return rows


def _torch_optimizer(torch, cls, hyper, n, repeats):
    out = {}
    for impl in ("foreach", "fused"):
        p = torch.zeros(n, requires_grad=True)
        p.grad = torch.randn(n) * 1e-2
        try:
            opt = getattr(torch.optim, cls)([p], **hyper, **{impl: True})
        except (AttributeError, TypeError, RuntimeError, ValueError):  # torch has no Lion
            out[f"torch {impl}"] = "n/a"
            continue
        out[f"torch {impl}"] = median_time(opt.step, repeats=repeats)
    return out


def bench_gemm(shapes, threads, repeats, peak, torch=None):
    rows = []
    for name, (m, n, k, ta, tb) in shapes.items():
        a, b, c = gemm_operands(m, n, k, ta, tb)
        a_op, b_op = (a.T if ta else a), (b.T if tb else b)
        quiet_cores()
        row = Row("GEMM", name, threads,
                  gdfast_s=median_time(lambda: gdfast.matmul(a, b, ta, tb, c), repeats=repeats),
                  numpy_s=median_time(lambda: np.matmul(a_op, b_op, out=c), repeats=repeats),
                  unit="GFLOP/s", work=2.0 * m * n * k / 1e9, ceiling=peak)
        if torch is not None:
            ta_, tb_, tc = torch.from_numpy(a_op), torch.from_numpy(b_op), torch.from_numpy(c)
            row.extra["torch"] = median_time(lambda: torch.matmul(ta_, tb_, out=tc),
                                             repeats=repeats)
        rows.append(row)
    return rows


def bench_mlp(batches, threads, repeats, peak, torch=None):
    rows = []
    for bs, optimizer, lr in mlp_cases(batches):
        data = mlp_batches(bs)
        (model, opt), (ref, ref_opt) = mlp_pair(optimizer=optimizer, lr=lr)

        def ref_step():
            ref.loss_and_grad(*next(data))
            ref_opt.step()

        quiet_cores()
        row = Row("MLP train step 784-256-128-10", f"batch {bs}, {optimizer}", threads,
                  gdfast_s=median_time(lambda: model.train_step(*next(data), opt),
                                       repeats=repeats),
                  numpy_s=median_time(ref_step, repeats=repeats),
                  unit="samples/s", work=bs, ceiling=peak * 1e9 / mlp_flops_per_sample(MLP_SIZES))
        if torch is not None:
            row.extra["torch"] = median_time(torch_mlp_step(torch, data, optimizer, lr),
                                             repeats=repeats)
        rows.append(row)
    return rows


def torch_mlp_step(torch, data, optimizer="Adam", lr=1e-3, sizes=MLP_SIZES):
    """One PyTorch training step of the same MLP (nn.Sequential; Adam fused) per call."""
    layers = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    fused = {"fused": True} if optimizer == "Adam" else {}
    opt = getattr(torch.optim, optimizer)(net.parameters(), lr=lr, **fused)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return step


def bench_big_mlps(networks, batches, threads, repeats, peak, torch=None):
    """Adam train steps of bigger MLPs, as GFLOP/s of their matrix products
    (mlp_flops_per_sample) against the FMA ceiling, and against torch."""
    rows = []
    for sizes in networks:
        for bs in batches:
            data = mlp_batches(bs, sizes=sizes)
            (model, opt), (ref, ref_opt) = mlp_pair(sizes=sizes)

            def ref_step():
                ref.loss_and_grad(*next(data))
                ref_opt.step()

            quiet_cores()
            row = Row("MLP train step, bigger networks (Adam)",
                      f"{'-'.join(map(str, sizes))}, batch {bs}", threads,
                      gdfast_s=median_time(lambda: model.train_step(*next(data), opt),
                                           repeats=repeats),
                      numpy_s=median_time(ref_step, repeats=repeats), unit="GFLOP/s",
                      work=mlp_flops_per_sample(sizes) * bs / 1e9, ceiling=peak)
            if torch is not None:
                quiet_cores()
                t = median_time(torch_mlp_step(torch, data, sizes=sizes), repeats=repeats)
                row.extra.update({"torch": t, "torch / gdfast": f"{t / row.gdfast_s:.2f}x"})
            rows.append(row)
    return rows


def mnist_trainers(x, y, batch_size=128, shift=0):
    """One Trainer over gdfast's kernels and one over the NumPy reference,
    the same loop (shuffling, batch gathering, schedule) around both."""
    from gdfast import schedules
    from gdfast.train import Trainer
    trainers = []
    steps = -(-len(x) // batch_size)
    for model, opt in mlp_pair():
        schedule = schedules.Warmup(schedules.Cosine(1e-3, 100 * steps), steps)
        trainers.append(Trainer(model, opt, (x, y), batch_size=batch_size, schedule=schedule,
                                shift=shift, track_grad_norm=False, acc_every=0))
    return trainers


MNIST_MISSING = ("MNIST epoch skipped: MNIST files not found (set GDFAST_DATA=DIR with the "
                 "IDX files in DIR/mnist/, or run `gdfast train` once with network access "
                 "to download them)")


def bench_mnist_epoch(threads, quick, peak, log, batch_size=128):
    """One shuffled mini-batch epoch over the MNIST training set, data handling included."""
    from gdfast.datasets import DatasetError, load_mnist
    try:
        data = load_mnist(progress=False)
    except FileNotFoundError:
        log(MNIST_MISSING)
        return []
    except (DatasetError, OSError) as exc:
        # The loader's messages span lines (a list of paths or mirrors): one line here.
        log(f"MNIST epoch skipped: MNIST files unusable: {' '.join(str(exc).split())}")
        return []
    x, y = data.x_train, data.y_train
    if quick:
        x, y = x[:4096], y[:4096]
    fast, ref = mnist_trainers(x, y, batch_size)
    quiet_cores()
    return [Row(f"MNIST epoch ({len(x)} images, batch {batch_size}, Adam, Trainer loop)",
                "784-256-128-10", threads,
                gdfast_s=median_time(fast._run_epoch, repeats=3),
                numpy_s=median_time(ref._run_epoch, repeats=3),
                unit="samples/s", work=len(x),
                ceiling=peak * 1e9 / mlp_flops_per_sample(MLP_SIZES))]


def bench_lbfgs(threads, quick, log):
    """L-BFGS on the MNIST MLP, full batch: time per iteration of gdfast.LBFGS
    (strong Wolfe) against SciPy's L-BFGS-B driving the same loss_and_grad
    (with its float64 conversions), both with 10 pairs, in the same run.
    "outside closure" is each optimizer's own time per iteration: everything
    but loss_and_grad."""
    from gdfast.datasets import DatasetError, load_mnist
    try:
        data = load_mnist(progress=False)
    except (FileNotFoundError, DatasetError, OSError) as exc:
        log(f"L-BFGS skipped: MNIST files unusable: {' '.join(str(exc).split())}")
        return []
    x, y = data.x_train, data.y_train
    if quick:
        x, y = x[:4096], y[:4096]
    iters = 3 if quick else 10
    inside = {"gdfast": 0.0, "scipy": 0.0}

    def timed(model, who):
        t0 = time.perf_counter()
        loss = model.loss_and_grad(x, y)
        inside[who] += time.perf_counter() - t0
        return loss

    model = gdfast.MLP(MLP_SIZES, seed=0)
    start = model.params.data.copy()
    opt = gdfast.LBFGS(model.params, max_iter=iters, history_size=10, tolerance_grad=0,
                       tolerance_change=0, line_search_fn="strong_wolfe")
    quiet_cores()
    t0 = time.perf_counter()
    opt.step(lambda: timed(model, "gdfast"))
    total = time.perf_counter() - t0
    row = Row(f"L-BFGS full batch ({len(x)} MNIST images, 10 pairs, {iters} iterations)",
              "784-256-128-10", threads, gdfast_s=total / opt.n_iter, unit="iterations/s",
              work=1.0)
    row.extra["evals/iter"] = f"{opt.func_evals / opt.n_iter:.2f}"
    row.extra["outside closure"] = (total - inside["gdfast"]) / opt.n_iter
    try:
        from scipy.optimize import minimize
    except ImportError:
        row.extra["scipy L-BFGS-B"] = "n/a"
        return [row]
    twin = gdfast.MLP(MLP_SIZES, seed=0)

    def fun(w):
        twin.params.data[...] = w
        loss = timed(twin, "scipy")
        return float(loss), twin.params.grad.astype(np.float64)

    quiet_cores()
    t0 = time.perf_counter()
    res = minimize(fun, start.astype(np.float64), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=iters, maxcor=10, ftol=0.0, gtol=0.0))
    total = time.perf_counter() - t0
    row.extra["scipy L-BFGS-B"] = total / res.nit
    row.extra["scipy evals/iter"] = f"{res.nfev / res.nit:.2f}"
    row.extra["scipy outside closure"] = (total - inside["scipy"]) / res.nit
    return [row]


SKLEARN_EPOCHS = 10
SKLEARN_PARAMS = dict(hidden_layer_sizes=(256, 128), solver="adam", batch_size=200,
                      random_state=0)


def bench_sklearn(threads, quick, peak, log):
    """scikit-learn's MLPClassifier and gdfast.sklearn's fit one after the other on
    Fashion-MNIST (the same data, parameters and epochs), with their test
    accuracies: on float64 input (what most data is; scikit-learn then trains in
    float64, gdfast converts it once to float32) and on float32 input (both
    train in float32)."""
    import warnings
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier as SkMLPClassifier
        from gdfast.sklearn import MLPClassifier
    except ImportError:
        log("scikit-learn section skipped: scikit-learn is not installed")
        return []
    from gdfast.datasets import DatasetError, load
    try:
        data = load("fashion-mnist", progress=False)
    except (FileNotFoundError, DatasetError, OSError) as exc:
        log(f"scikit-learn section skipped: Fashion-MNIST not usable: {' '.join(str(exc).split())}")
        return []
    n = 10000 if quick else len(data.x_train)
    epochs = 2 if quick else SKLEARN_EPOCHS
    rows = []
    for dtype in (np.float64, np.float32):
        x, x_test = data.x_train[:n].astype(dtype), data.x_test.astype(dtype)
        fits = {}
        for name, cls in (("gdfast", MLPClassifier), ("scikit-learn", SkMLPClassifier)):
            est = cls(max_iter=epochs, **SKLEARN_PARAMS)
            quiet_cores()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter epochs, as asked
                start = time.perf_counter()
                est.fit(x, data.y_train[:n])
                fits[name] = time.perf_counter() - start, est.score(x_test, data.y_test)
            log(f"{name} MLPClassifier.fit on {np.dtype(dtype).name}: {fits[name][0]:.1f} s, "
                f"test accuracy {100 * fits[name][1]:.2f}%")
        (ours, our_acc), (theirs, their_acc) = fits["gdfast"], fits["scikit-learn"]
        rows.append(Row(
            f"MLPClassifier.fit, Fashion-MNIST ({n} images, {epochs} epochs, (256, 128), adam, "
            f"batch 200)", f"{np.dtype(dtype).name} input", threads, gdfast_s=ours,
            unit="samples/s", work=n * epochs,
            ceiling=peak * 1e9 / mlp_flops_per_sample(MLP_SIZES),
            extra={"scikit-learn": theirs, "vs scikit-learn": f"{theirs / ours:.1f}x",
                   "test acc gdfast": f"{100 * our_acc:.2f}%",
                   "test acc scikit-learn": f"{100 * their_acc:.2f}%"}))
    return rows


def run(quick=False, threads=None, sizes=None, batches=None, sections=None, repeats=None,
        log=print):
    """Every benchmark row for each thread count, plus the machine they ran on."""
    all_threads = os.cpu_count() or 1
    threads = threads or sorted({1, all_threads})
    sizes = sizes or (OPTIMIZER_SIZES[:-1] if quick else OPTIMIZER_SIZES)
    batches = batches or (MLP_BATCHES[:-1] if quick else MLP_BATCHES)
    repeats = repeats or (5 if quick else 9)
    sections = sections or ["optim", "gemm", "mlp", "big", "mnist", "lbfgs"]
    shapes = dict(list(GEMM_SHAPES.items())[:-1]) if quick else GEMM_SHAPES
    torch = _torch()
    info = machine()
    info["torch"] = torch.__version__ if torch is not None else None
    rows, ceilings = [], {}
    peaks = thread_ceilings(threads, lambda t: fma_peak(t, quick))
    roots = thread_ceilings(threads, lambda t: rootdiv_peak(t, quick))
    probe_n = 2_000_000 if quick else 10_000_000
    saved = gdfast.get_num_threads()
    try:
        for nt in threads:
            gdfast.set_num_threads(nt)
            if torch is not None:
                torch.set_num_threads(nt)
            limits = blas_threads(nt)
            peak = peaks[nt]
            ceilings[nt] = {"fma_gflops": peak,
                            "rootdiv_gelems": roots[nt],
                            "rmw_gbs": _kernels.bandwidth_rmw(probe_n, 3, 1, 20) / 1e9,
                            "triad_gbs": _kernels.bandwidth_triad(probe_n, 20) / 1e9}
            log(f"threads={nt}: FMA peak {peak:.0f} GFLOP/s, sqrt+div "
                f"{roots[nt]:.2f} G/s, in-place RMW "
                f"{ceilings[nt]['rmw_gbs']:.1f} GB/s, triad {ceilings[nt]['triad_gbs']:.1f} GB/s")
            if "optim" in sections:
                rows += bench_optimizers(sizes, nt, repeats, roots[nt], torch)
                rows += bench_aids(sizes, nt, repeats, roots[nt])
            if "gemm" in sections:
                rows += bench_gemm(shapes, nt, repeats, peak, torch)
            if "mlp" in sections:
                rows += bench_mlp(batches, nt, repeats, peak, torch)
            if "big" in sections:
                rows += bench_big_mlps(BIG_MLPS, BIG_BATCHES[:1] if quick else BIG_BATCHES,
                                       nt, repeats, peak, torch)
            if "mnist" in sections:
                rows += bench_mnist_epoch(nt, quick, peak, log)
            if "lbfgs" in sections:
                rows += bench_lbfgs(nt, quick, log)
            if "sklearn" in sections:
                rows += bench_sklearn(nt, quick, peak, log)
            if limits is not None:
                limits.restore_original_limits()
    finally:
        gdfast.set_num_threads(saved)
    info["blas_threads_limited"] = blas_threads(1) is not None
    return {"machine": info, "ceilings": ceilings, "rows": rows}


# `gdfast bench --under-load`: the multi-threaded paths beside CPU-bound
# processes, as on a laptop with a busy browser or a shared CI runner.
BUSY_LOOP = ("import os, sys\n"
             "parent = int(sys.argv[1])\n"
             "while os.getppid() == parent:   # the bench is gone: stop too\n"
             "    for _ in range(1_000_000): pass\n")


class busy_processes:
    """Context manager: `n` CPU-bound child processes for as long as it is
    open, killed on the way out (also on Ctrl-C or an error); each also
    stops by itself within a second if the bench dies without cleaning up."""

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        import subprocess
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", BUSY_LOOP, str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        except BaseException:
            self.kill_all()
            raise
        time.sleep(0.2)   # let them start spinning
        return self

    def __exit__(self, *exc):
        self.kill_all()

    def kill_all(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def under_load_cases(quick=False):
    """{name: (setup, calls per timing, self-timed)}: setup() returns the
    call to time (self-timed: it returns the seconds to count itself),
    the issue-15 cases (a batch-128 Adam step of the default MLP, a small
    GEMM, a GEMM alternated with numpy.matmul, a Trainer epoch, ...)."""
    def step(bs):
        def setup():
            data = mlp_batches(bs)
            (model, opt), _ = mlp_pair()
            return lambda: model.train_step(*next(data), opt)
        return setup

    def adam(n):
        def setup():
            params = gdfast.Params({"p": n})
            params.grad[...] = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
            return gdfast.Adam(params, lr=1e-3).step
        return setup

    def gemm(with_numpy):
        def setup():
            a, b, c = gemm_operands(64, 128, 256, False, False)
            if not with_numpy:
                return lambda: gdfast.matmul(a, b, out=c)
            c2 = c.copy()

            def alternate():   # 30 calls of each, as in a NumPy-heavy loop; times ours
                start = time.perf_counter()
                for _ in range(30):
                    gdfast.matmul(a, b, out=c)
                elapsed = time.perf_counter() - start
                for _ in range(30):
                    np.matmul(a, b, out=c2)
                return elapsed
            return alternate
        return setup

    def epoch():
        rng = np.random.default_rng(0)
        n = 2048 if quick else 8192
        x = rng.random((n, MLP_SIZES[0]), dtype=np.float32)
        y = rng.integers(0, MLP_SIZES[-1], n)
        return mnist_trainers(x, y)[0]._run_epoch

    return {"MLP train step, batch 128, Adam": (step(128), 1, False),
            "MLP train step, batch 32, Adam": (step(32), 1, False),
            "MLP train step, batch 1, Adam": (step(1), 1, False),
            "Adam step n=1e5": (adam(100_000), 1, False),
            "Adam step n=1e6": (adam(1_000_000), 1, False),
            "GEMM 64x256 @ 256x128": (gemm(False), 1, False),
            "GEMM 64x256 @ 256x128, 30 calls between 30 numpy.matmul": (gemm(True), 30, True),
            f"Trainer epoch, {2048 if quick else 8192} random images, batch 128":
                (epoch, 1, False)}


def timed_block(fn, calls, seconds, self_timed=False, min_sample=0.002):
    """Per-call seconds of fn (doing `calls` calls; self_timed: fn returns
    the seconds to count), in samples of at least `min_sample` s, for
    `seconds` s; returns (samples, total time, calls)."""
    samples, total, count = [], 0.0, 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        n, elapsed = 0, 0.0
        while elapsed < min_sample:
            t0 = time.perf_counter()
            counted = fn()
            elapsed += counted if self_timed else time.perf_counter() - t0
            n += calls
        samples.append(elapsed / n)
        total, count = total + elapsed, count + n
    return samples, total, count


def run_under_load(busy=1, threads=None, quick=False, block_seconds=None, rounds=None,
                   log=print):
    """Each case on 1 thread and on N (all cores by default) beside `busy`
    CPU-bound processes, in alternating blocks of `block_seconds` so both
    meet the same load: per-call medians, and the mean (total time / calls,
    which counts every slow call)."""
    nt = max(threads or [os.cpu_count() or 1])
    block_seconds = block_seconds or (0.3 if quick else 1.0)
    rounds = rounds or (2 if quick else 3)
    rows = []
    saved = gdfast.get_num_threads()
    try:
        with busy_processes(busy):
            for name, (setup, calls, self_timed) in under_load_cases(quick).items():
                fn = setup()
                stats = {1: [[], 0.0, 0], nt: [[], 0.0, 0]}
                for t in (1, nt):   # warm-up
                    gdfast.set_num_threads(t)
                    timed_block(fn, calls, min(0.2, block_seconds), self_timed)
                trips = _kernels._guard_trips()
                for r in range(rounds):
                    for t in ((1, nt) if r % 2 == 0 else (nt, 1)):
                        gdfast.set_num_threads(t)
                        samples, total, count = timed_block(fn, calls, block_seconds,
                                                            self_timed)
                        stats[t][0] += samples
                        stats[t][1] += total
                        stats[t][2] += count
                row = {"case": name, "threads": nt, "busy": busy,
                       "guard_trips": _kernels._guard_trips() - trips}
                for t, key in ((1, "one"), (nt, "team")):
                    row[f"{key}_median_s"] = statistics.median(stats[t][0])
                    row[f"{key}_mean_s"] = stats[t][1] / stats[t][2]
                log(f"{name}: 1 thread {_fmt_time(row['one_median_s'])}, {nt} threads "
                    f"{_fmt_time(row['team_median_s'])}")
                rows.append(row)
    finally:
        gdfast.set_num_threads(saved)
    return {"machine": machine(), "busy": busy, "threads": nt, "rows": rows}


def under_load_report(result, markdown=False):
    m, nt, busy = result["machine"], result["threads"], result["busy"]
    head = (f"gdfast {m['version']} on {m['cpu']} ({m['cores']} cores), SIMD {m['simd']}, "
            f"OpenMP {'on' if m['openmp'] else 'off'}, beside {busy} CPU-bound "
            f"process{'es' if busy != 1 else ''}. 1 and {nt} threads timed in alternating "
            f"blocks; median per call, and mean (total time / calls); ratio = {nt} threads "
            f"/ 1 thread (below 1: the team is faster). Guard trips: times a team lost to "
            f"one thread and the passes ran alone for a while.")
    headers = ["case", "1 thread", f"{nt} threads", "ratio", "1 thread (mean)",
               f"{nt} threads (mean)", "ratio (mean)", "guard trips"]
    body = [[r["case"], _fmt_time(r["one_median_s"]), _fmt_time(r["team_median_s"]),
             f"{r['team_median_s'] / r['one_median_s']:.2f}", _fmt_time(r["one_mean_s"]),
             _fmt_time(r["team_mean_s"]), f"{r['team_mean_s'] / r['one_mean_s']:.2f}",
             str(r["guard_trips"])] for r in result["rows"]]
    if markdown:
        lines = [head, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
    else:
        widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(headers)]
        lines = [head, "", "  ".join(h.ljust(w) for h, w in zip(headers, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines) + "\n"


def to_json(result):
    return json.dumps({"machine": result["machine"],
                       "ceilings": {str(k): v for k, v in result["ceilings"].items()},
                       "rows": [r.as_dict() for r in result["rows"]]}, indent=2)


def report(result, markdown=False):
    m = result["machine"]
    head = [f"gdfast {m['version']} on {m['cpu']} ({m['cores']} cores), SIMD {m['simd']}, "
            f"OpenMP {'on' if m['openmp'] else 'off'}, {m['compiler']}, Python {m['python']}, "
            f"numpy {m['numpy']}, "
            f"torch {m['torch'] or 'not installed (torch columns omitted)'}.",
            "Times are medians per call; speed-up = NumPy reference time / gdfast time, "
            "same run; 'of ceiling' = rate / the machine's measured ceiling "
            "(in-place read-modify-write bandwidth with the same streams at that size, "
            "or, for the updates that take a square root and a division per parameter, "
            "the rate of a loop of just those two when lower ('bound': memory or "
            "sqrt+div); the FMA loop's GFLOP/s for the threads used, never below the "
            "1-thread figure). Ceilings are the best of repeated measurements; a row "
            "that beats its ceiling shows none ('-'): the probe was no bound there.",
            "Ceilings: " + "; ".join(
                f"{nt} thread{'s' if int(nt) > 1 else ''}: FMA {c['fma_gflops']:.0f} GFLOP/s, "
                f"sqrt+div {c['rootdiv_gelems']:.2f} G elements/s, "
                f"in-place RMW {c['rmw_gbs']:.1f} GB/s, triad {c['triad_gbs']:.1f} GB/s"
                for nt, c in result["ceilings"].items()) + ".",
            ""]
    if not m["blas_threads_limited"]:
        head.insert(2, "NumPy's BLAS used its default thread count in every row "
                       "(install threadpoolctl to pin it to the row's thread count).")
    sep = "\n\n" if markdown else "\n"
    return sep.join(head[:-1]) + "\n\n" + table(result["rows"], markdown)


def markdown_file(result, argv):
    """BENCHMARKS.md: the run's tables and how to make them again."""
    command = "gdfast bench " + " ".join(argv)
    return (f"# Benchmarks\n\nGenerated by `{command.strip()}` on "
            f"{time.strftime('%Y-%m-%d')}; run the same command to reproduce on your "
            f"machine (`pip install \".[bench]\"` first for threadpoolctl, and install "
            f"PyTorch for its columns). Timings on shared or virtual machines vary "
            f"between runs (by up to about 30% on the 2-core VM this project is built on, "
            f"most for memory- and thread-bound rows; 2-thread rows of small batches by "
            f"up to 3x when the host moves the vCPUs apart, see README, Threads and "
            f"SIMD): compare the ratios within one run."
            f"\n\n" + report(result, markdown=True))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gdfast bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_from_args(parser.parse_args(argv), argv)


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (< 1 min)")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all)")
    parser.add_argument("--sections", nargs="+",
                        choices=["optim", "gemm", "mlp", "big", "mnist", "lbfgs", "sklearn"],
                        help="which benchmarks to run (default: all but sklearn, gdfast.sklearn's "
                             "MLPClassifier against scikit-learn's, which takes minutes)")
    parser.add_argument("--sizes", type=int, nargs="+", help="optimizer parameter counts")
    parser.add_argument("--batches", type=int, nargs="+", help="MLP batch sizes")
    parser.add_argument("--repeats", type=int, help="timed repeats per case (median taken)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")
    parser.add_argument("--plot", metavar="PNG", help="bar chart of the speed-ups (needs matplotlib)")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the results as a Markdown page (like BENCHMARKS.md)")
    parser.add_argument("--under-load", metavar="N", type=_busy_count, nargs="?", const=1,
                        help="instead: the threaded paths on 1 thread vs all (or the largest "
                             "--threads) beside N CPU-bound processes (default 1)")


def _busy_count(text):
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a number of processes >= 0, got {n}")
    return n


def run_from_args(args, argv):
    """Run what the parsed flags ask; argv (the flags as given) goes into --markdown's page."""
    quiet = args.json == "-"
    log = (lambda *a: print(*a, file=sys.stderr)) if quiet else print
    if args.under_load is not None:
        return _run_under_load_from_args(args, quiet, log)
    result = run(quick=args.quick, threads=args.threads, sizes=args.sizes, batches=args.batches,
                 sections=args.sections, repeats=args.repeats, log=log)
    text = report(result)
    if quiet:
        print(to_json(result))
        print(text, file=sys.stderr)
    else:
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                f.write(to_json(result))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_file(result, argv))
    if args.plot:
        plot(result["rows"], args.plot)
    return 0


def _run_under_load_from_args(args, quiet, log):
    result = run_under_load(args.under_load, args.threads, args.quick, log=log)
    text = under_load_report(result)
    print(text, file=sys.stderr if quiet else sys.stdout)
    if args.json:
        data = json.dumps(result, indent=2)
        if quiet:
            print(data)
        else:
            with open(args.json, "w") as f:
                f.write(data)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(under_load_report(result, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
