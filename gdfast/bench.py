"""`gdfast bench`: gdfast against pure NumPy and the machine's ceilings.

Every figure is a median over repeated timed runs after a warm-up, and every
ratio compares numbers measured in the same run: the speed-up over the NumPy
reference, and the fraction of a ceiling measured here (memory bandwidth for
optimizer steps, the FMA loop for GEMM).
"""
import argparse
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


def median_time(fn, *, repeats=7, min_batch_seconds=0.01, max_seconds=2.0):
    """Median seconds per call of fn(), after one warm-up call.

    Calls are grouped in batches lasting at least `min_batch_seconds` so that
    the timer's resolution never matters; fewer repeats are made when one call
    is so slow that `max_seconds` would be exceeded.
    """
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-9)
    per_batch = max(1, math.ceil(min_batch_seconds / once))
    repeats = max(3, min(repeats, int(max_seconds / (once * per_batch))))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter() - start) / per_batch)
    return statistics.median(samples)


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


def fma_peak(threads, quick=False):
    """GFLOP/s of the FMA loop on `threads` threads: the GEMM ceiling."""
    iters = 2_000_000 if quick else 20_000_000
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        flops = _kernels.fma_loop(iters, threads)
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


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


def table(rows, extra_columns=()):
    """The rows as an aligned text table, one block per section."""
    headers = ["case", "threads", "gdfast", "numpy", "speed-up", "rate", "of ceiling",
               *extra_columns]
    lines = []
    for section in dict.fromkeys(r.section for r in rows):
        body = []
        for r in (r for r in rows if r.section == section):
            body.append([
                r.case, str(r.threads), _fmt_time(r.gdfast_s), _fmt_time(r.numpy_s),
                f"{_fmt_num(r.speedup)}x" if not math.isnan(r.speedup) else "-",
                f"{_fmt_num(r.rate, 4)} {r.unit}",
                f"{r.fraction:.0%}" if not math.isnan(r.fraction) else "-",
                *[_fmt_extra(r.extra.get(c)) for c in extra_columns],
            ])
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
        lines.append(f"## {section}")
        lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
        lines.append("")
    return "\n".join(lines)


def _fmt_extra(value):
    return value if isinstance(value, str) else _fmt_time(value)


def plot(rows, path):
    """A bar chart of the speed-ups over NumPy, one bar per case and thread count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'gdfast[plot]'") from None
    rows = [r for r in rows if not math.isnan(r.speedup)]
    labels = [f"{r.section}: {r.case} ({r.threads}t)" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    ax.barh(range(len(rows)), [r.speedup for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the NumPy reference (median times, same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Bytes an update must move per parameter, as (arrays read and written in
# place, arrays only read): the gradient is read, the rest is read and written.
OPTIMIZERS = {
    "sgd": ({"lr": 1e-3}, (1, 1)),
    "sgd-momentum": ({"lr": 1e-3, "momentum": 0.9}, (2, 1)),
    "rmsprop": ({"lr": 1e-3}, (2, 1)),
    "adagrad": ({"lr": 1e-2}, (2, 1)),
    "adam": ({"lr": 1e-3}, (3, 1)),
    "adamw": ({"lr": 1e-3}, (3, 1)),
}
_CLASS = {"sgd": "SGD", "sgd-momentum": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad",
          "adam": "Adam", "adamw": "AdamW"}

GEMM_SHAPES = [  # (m, n, k, trans_a, trans_b, what it is in the MLP)
    (64, 256, 784, False, False, "X @ W1 (forward)"),
    (64, 128, 256, False, False, "H1 @ W2 (forward)"),
    (64, 256, 128, False, True, "dZ2 @ W2.T (backward)"),
    (784, 256, 64, True, False, "X.T @ dZ1 (weight grad)"),
    (1024, 1024, 1024, False, False, "square"),
]
MLP_SIZES = [784, 256, 128, 10]


def mlp_flops_per_sample(sizes):
    """Forward, weight-gradient and input-gradient GEMMs (no dX for the first layer)."""
    macs = [a * b for a, b in zip(sizes, sizes[1:])]
    return 2.0 * (3 * sum(macs) - macs[0])


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _blas_threads(n):
    """Limit NumPy's BLAS to n threads if threadpoolctl is there, else None."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


def bench_optimizers(sizes, threads, repeats, torch=None):
    from gdfast import reference
    import gdfast.reference.optim  # noqa: F401  (the NumPy twins)
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        params = gdfast.Params({"p": n})
        params.data[...] = rng.standard_normal(n, dtype=np.float32)
        params.grad[...] = rng.standard_normal(n, dtype=np.float32) * 1e-2
        ref_p, ref_g = params.data.copy(), params.grad.copy()
        for name, (hyper, (rw, ro)) in OPTIMIZERS.items():
            opt = getattr(gdfast, _CLASS[name])(params, **hyper)
            ref = getattr(reference.optim, _CLASS[name])([ref_p], **hyper)
            bytes_per_step = (2 * rw + ro) * 4 * n
            row = Row("optimizer step", f"{name} n={n:.0e}", threads,
                      gdfast_s=median_time(opt.step, repeats=repeats),
                      numpy_s=median_time(lambda: ref.step([ref_g]), repeats=repeats),
                      unit="GB/s", work=bytes_per_step / 1e9)
            reps = max(5, min(200, int(2e8 / bytes_per_step)))
            row.ceiling = _kernels.bandwidth_rmw(n, rw, ro, reps) / 1e9
            if torch is not None:
                row.extra.update(_torch_optimizer(torch, name, hyper, n, repeats))
            rows.append(row)
    return rows


def _torch_optimizer(torch, name, hyper, n, repeats):
    out = {}
    for impl in ("foreach", "fused"):
        p = torch.zeros(n, requires_grad=True)
        p.grad = torch.randn(n) * 1e-2
        cls = getattr(torch.optim, _CLASS[name])
        try:
            opt = cls([p], **hyper, **{impl: True})
        except (TypeError, RuntimeError, ValueError):
            out[f"torch {impl}"] = "n/a"
            continue
        out[f"torch {impl}"] = median_time(opt.step, repeats=repeats)
    return out


def bench_gemm(shapes, threads, repeats, peak, torch=None):
    rows = []
    rng = np.random.default_rng(0)
    for m, n, k, ta, tb, what in shapes:
        a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        a_op, b_op = (a.T if ta else a), (b.T if tb else b)
        row = Row("GEMM", f"{m}x{k} @ {k}x{n} {what}", threads,
                  gdfast_s=median_time(lambda: gdfast.matmul(a, b, trans_a=ta, trans_b=tb, out=c),
                                       repeats=repeats),
                  numpy_s=median_time(lambda: np.matmul(a_op, b_op, out=c), repeats=repeats),
                  unit="GFLOP/s", work=2.0 * m * n * k / 1e9, ceiling=peak)
        if torch is not None:
            ta_, tb_, tc = torch.from_numpy(a_op), torch.from_numpy(b_op), torch.from_numpy(c)
            row.extra["torch"] = median_time(lambda: torch.matmul(ta_, tb_, out=tc),
                                             repeats=repeats)
        rows.append(row)
    return rows


def _batch(n, rng):
    x = rng.random((n, MLP_SIZES[0]), dtype=np.float32)
    y = rng.integers(0, MLP_SIZES[-1], n)
    return x, y


def bench_mlp(batches, threads, repeats, peak, torch=None):
    rows = []
    rng = np.random.default_rng(0)
    for bs in batches:
        x, y = _batch(bs, rng)
        model = gdfast.MLP(MLP_SIZES, seed=0)
        opt = gdfast.Adam(model.params, lr=1e-3)
        ref_step = _ref_trainer(MLP_SIZES, model.params)
        row = Row("MLP train step 784-256-128-10, Adam", f"batch {bs}", threads,
                  gdfast_s=median_time(lambda: model.train_step(x, y, opt), repeats=repeats),
                  numpy_s=median_time(lambda: ref_step(x, y), repeats=repeats),
                  unit="samples/s", work=bs, ceiling=peak * 1e9 / mlp_flops_per_sample(MLP_SIZES))
        if torch is not None:
            row.extra["torch"] = _torch_mlp(torch, x, y, repeats)
        rows.append(row)
    return rows


def _torch_mlp(torch, x, y, repeats):
    layers = []
    for a, b in zip(MLP_SIZES, MLP_SIZES[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(tx), ty).backward()
        opt.step()
    return median_time(step, repeats=repeats)


def _ref_trainer(sizes, params):
    """A NumPy reference model + Adam whose step(x, y) mirrors MLP.train_step."""
    from gdfast.reference.mlp import MLP as RefMLP
    from gdfast.reference.optim import Adam as RefAdam
    ref = RefMLP(sizes, dtype=np.float32, params=dict(params.items()))
    names = list(ref.params)
    opt = RefAdam([ref.params[k] for k in names], lr=1e-3)

    def step(x, y):
        _, grads = ref.loss_and_grad(x, y)
        opt.step([grads[k] for k in names])
    return step


def bench_mnist_epoch(threads, quick, peak, log, batch_size=128):
    """One shuffled mini-batch epoch over the MNIST training set, data handling included."""
    from gdfast.batching import Batches
    from gdfast.datasets import DatasetError, load_mnist
    try:
        data = load_mnist(progress=False)
    except (DatasetError, OSError) as exc:
        log(f"MNIST epoch skipped: {str(exc).splitlines()[0]}")
        return []
    x, y = data.x_train, data.y_train
    if quick:
        x, y = x[:4096], y[:4096]
    model = gdfast.MLP(MLP_SIZES, seed=0)
    opt = gdfast.Adam(model.params, lr=1e-3)
    ref_step = _ref_trainer(MLP_SIZES, model.params)

    def epoch(step):
        for xb, yb in Batches(x, y, batch_size, seed=0):
            step(xb, yb)

    return [Row(f"MNIST epoch ({len(x)} images, batch {batch_size}, Adam)", "784-256-128-10",
                threads,
                gdfast_s=median_time(lambda: epoch(lambda a, b: model.train_step(a, b, opt)),
                                     repeats=3),
                numpy_s=median_time(lambda: epoch(ref_step), repeats=3),
                unit="samples/s", work=len(x), ceiling=peak * 1e9 / mlp_flops_per_sample(MLP_SIZES))]


def run(quick=False, threads=None, sizes=None, batches=None, sections=None, repeats=None,
        log=print):
    """Every benchmark row for each thread count, plus the machine they ran on."""
    all_threads = os.cpu_count() or 1
    threads = threads or sorted({1, all_threads})
    sizes = sizes or ([10_000, 100_000, 1_000_000] if quick else
                      [10_000, 100_000, 1_000_000, 10_000_000])
    batches = batches or ([1, 32, 128] if quick else [1, 32, 128, 512])
    repeats = repeats or (5 if quick else 9)
    sections = sections or ["optim", "gemm", "mlp", "mnist"]
    shapes = GEMM_SHAPES[:-1] if quick else GEMM_SHAPES
    torch = _torch()
    info = machine()
    info["torch"] = torch.__version__ if torch is not None else None
    rows, ceilings = [], {}
    saved = gdfast.get_num_threads()
    try:
        for nt in threads:
            gdfast.set_num_threads(nt)
            if torch is not None:
                torch.set_num_threads(nt)
            limits = _blas_threads(nt)
            peak = fma_peak(nt, quick)
            ceilings[nt] = {"fma_gflops": peak,
                            "rmw_gbs": _kernels.bandwidth_rmw(10_000_000 if not quick else 2_000_000,
                                                              3, 1, 5) / 1e9,
                            "triad_gbs": _kernels.bandwidth_triad(
                                10_000_000 if not quick else 2_000_000, 5) / 1e9}
            log(f"threads={nt}: FMA peak {peak:.0f} GFLOP/s, in-place RMW "
                f"{ceilings[nt]['rmw_gbs']:.1f} GB/s, triad {ceilings[nt]['triad_gbs']:.1f} GB/s")
            if "optim" in sections:
                rows += bench_optimizers(sizes, nt, repeats, torch)
            if "gemm" in sections:
                rows += bench_gemm(shapes, nt, repeats, peak, torch)
            if "mlp" in sections:
                rows += bench_mlp(batches, nt, repeats, peak, torch)
            if "mnist" in sections:
                rows += bench_mnist_epoch(nt, quick, peak, log)
            if limits is not None:
                limits.restore_original_limits()
    finally:
        gdfast.set_num_threads(saved)
    info["blas_threads_limited"] = _blas_threads(1) is not None
    return {"machine": info, "ceilings": ceilings, "rows": rows}


def to_json(result):
    return json.dumps({"machine": result["machine"],
                       "ceilings": {str(k): v for k, v in result["ceilings"].items()},
                       "rows": [r.as_dict() for r in result["rows"]]}, indent=2)


def report(result):
    m = result["machine"]
    head = [f"gdfast {m['version']} on {m['cpu']} ({m['cores']} cores), SIMD {m['simd']}, "
            f"OpenMP {'on' if m['openmp'] else 'off'}, numpy {m['numpy']}, "
            f"torch {m['torch'] or 'not installed (torch columns omitted)'}",
            "Times are medians per call; speed-up = NumPy reference time / gdfast time, "
            "same run; 'of ceiling' = rate / the machine's measured ceiling "
            "(in-place read-modify-write bandwidth at that size, or the FMA loop).",
            ""]
    if not m["blas_threads_limited"]:
        head.insert(2, "NumPy's BLAS used its default thread count in every row "
                       "(install threadpoolctl to pin it to the row's thread count).")
    extra = sorted({k for r in result["rows"] for k in r.extra})
    return "\n".join(head) + table(result["rows"], extra)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gdfast bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (< 1 min)")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all)")
    parser.add_argument("--sections", nargs="+", choices=["optim", "gemm", "mlp", "mnist"],
                        help="which benchmarks to run (default: all)")
    parser.add_argument("--sizes", type=int, nargs="+", help="optimizer parameter counts")
    parser.add_argument("--batches", type=int, nargs="+", help="MLP batch sizes")
    parser.add_argument("--repeats", type=int, help="timed repeats per case (median taken)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")
    parser.add_argument("--plot", metavar="PNG", help="bar chart of the speed-ups (needs matplotlib)")


def run_from_args(args):
    quiet = args.json == "-"
    log = (lambda *a: print(*a, file=sys.stderr)) if quiet else print
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
    if args.plot:
        plot(result["rows"], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
