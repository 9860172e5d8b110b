"""`gdfast bench` end to end on tiny sizes: the table and JSON are well formed.

Timings are not checked here (they belong to benchmarks, not tests)."""
import json
import math
import time

import pytest

from gdfast import bench, datasets


@pytest.fixture(autouse=True, scope="module")
def no_settling():
    """Timings are not checked here, so skip the pauses that make them clean."""
    saved, bench.SETTLE_SECONDS = bench.SETTLE_SECONDS, 0.0
    yield
    bench.SETTLE_SECONDS = saved


@pytest.fixture(scope="module")
def result_json(no_settling, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    code = bench.main(["--quick", "--threads", "1", "--sizes", "1000", "--batches", "1", "4",
                       "--repeats", "3", "--sections", "optim", "gemm", "mlp",
                       "--json", str(path)])
    assert code == 0
    return json.loads(path.read_text())


def test_json_names_the_machine_and_ceilings(result_json):
    m = result_json["machine"]
    assert m["simd"] in m["simd_available"] and m["cores"] >= 1
    ceilings = result_json["ceilings"]["1"]
    assert ceilings["fma_gflops"] > 0 and ceilings["rmw_gbs"] > 0 and ceilings["triad_gbs"] > 0
    assert ceilings["rootdiv_gelems"] > 0


def test_every_section_and_case_is_there(result_json):
    rows = result_json["rows"]
    sections = {r["section"] for r in rows}
    assert sections == {"optimizer step", "GEMM", "MLP train step 784-256-128-10"}
    optim_cases = {r["case"] for r in rows if r["section"] == "optimizer step"}
    assert optim_cases == {f"{name} n=1e+03" for name in bench.OPTIMIZERS}
    assert len([r for r in rows if r["section"] == "GEMM"]) == len(bench.GEMM_SHAPES) - 1
    assert {r["case"] for r in rows if r["section"].startswith("MLP")} == {
        "batch 1, Adam", "batch 4, Adam", "batch 1, SGD"}


def test_rows_are_consistent(result_json):
    for r in result_json["rows"]:
        assert r["threads"] == 1
        assert r["gdfast_s"] > 0 and r["numpy_s"] > 0
        assert math.isclose(r["speedup"], r["numpy_s"] / r["gdfast_s"], rel_tol=1e-9)
        assert math.isclose(r["rate"], r["work"] / r["gdfast_s"], rel_tol=1e-9)
        assert r["unit"] in {"GB/s", "GFLOP/s", "samples/s"}
        if r["section"] != "optimizer step":
            assert r["ceiling"] is not None
            continue
        # Small steps have no memory ceiling, but those that take a square root
        # and a division per parameter have the divider's when they stay under it.
        name = r["case"].split()[0]
        bound = r["extra"]["bound"]
        assert bound == ("sqrt+div" if name in bench.ROOT_DIV else "-")
        assert (r["ceiling"] is None) == (bound == "-")
        if bound == "sqrt+div":
            param_bytes = r["work"] * 1e9 / 1000     # GB per step over n = 1e3 parameters
            root_div = result_json["ceilings"]["1"]["rootdiv_gelems"]
            assert math.isclose(r["ceiling"], root_div * param_bytes, rel_tol=1e-9)


def test_table_has_a_block_per_section(capsys):
    result = bench.run(quick=True, threads=[1], sizes=[100], batches=[1], repeats=3,
                       sections=["optim"], log=lambda *a: None)
    text = bench.report(result)
    assert "## optimizer step" in text
    header = next(line for line in text.splitlines() if line.startswith("case"))
    for column in ("threads", "gdfast", "numpy", "speed-up", "rate", "of ceiling"):
        assert column in header
    assert text.count("n=1e+02") == len(bench.OPTIMIZERS)


def test_median_time_takes_the_median():
    calls = []
    assert bench.median_time(lambda: calls.append(1), repeats=3) > 0
    assert len(calls) >= 4  # one warm-up call, then at least three timed batches


def test_median_time_warms_up_for_the_given_time():
    starts = []

    def slow():
        starts.append(time.perf_counter())
        time.sleep(0.01)
    bench.median_time(slow, repeats=3, min_batch_seconds=0.001, warmup_seconds=0.05)
    # one call per timed batch (a call outlasts min_batch_seconds): the last
    # three calls are timed, and every call before them is warm-up, however
    # long the sleeps took on a loaded machine
    warmup, timed = starts[:-3], starts[-3:]
    assert len(warmup) >= 2 and warmup[-1] - starts[0] < 0.05 and timed[0] - starts[0] > 0.049


def test_markdown_page_is_a_benchmarks_file(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    argv = ["--quick", "--threads", "1", "--sizes", "100", "--repeats", "3",
            "--sections", "optim", "--markdown", str(path)]
    assert bench.main(argv) == 0
    text = path.read_text()
    assert text.startswith("# Benchmarks")
    assert "gdfast bench " + " ".join(argv) in text     # how to reproduce it
    assert "### optimizer step" in text
    assert "Ceilings are the best of repeated measurements" in text
    assert "| case | threads | gdfast | numpy | speed-up | rate | of ceiling |" in text
    assert text.count("| adam n=1e+02 | 1 |") == 1


@pytest.mark.parametrize("error", [
    FileNotFoundError("mnist not found. Looked for train-images-idx3-ubyte[.gz] in:\n"
                      "  /nowhere/mnist\nProvide the files by one of: ..."),
    datasets.DatasetError("could not download train-images-idx3-ubyte.gz for mnist:\n"
                          "  https://mirror/x: timed out")])
def test_mnist_skip_says_why_and_how_in_one_line(error, tmp_path, monkeypatch):
    monkeypatch.setenv("GDFAST_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))

    def no_mnist(*args, **kwargs):    # no files, and never a download
        raise error
    monkeypatch.setattr(datasets, "load_mnist", no_mnist)
    lines = []
    assert bench.bench_mnist_epoch(1, True, 100.0, lines.append) == []
    assert len(lines) == 1 and "\n" not in lines[0]
    if isinstance(error, FileNotFoundError):
        assert lines[0] == ("MNIST epoch skipped: MNIST files not found (set GDFAST_DATA=DIR "
                            "with the IDX files in DIR/mnist/, or run `gdfast train` once "
                            "with network access to download them)")
    else:
        assert lines[0].startswith("MNIST epoch skipped: MNIST files unusable: could not")
        assert lines[0].endswith("https://mirror/x: timed out")


def test_no_row_shows_more_than_its_ceiling():
    # 28 MB in 0.14 ms is 200 GB/s: a 150 GB/s probe was no bound, a 400 GB/s one is.
    beaten = bench.Row("optimizer step", "adam n=1e+06", 1, gdfast_s=1.4e-4, unit="GB/s",
                       work=0.028, ceiling=150.0)
    bounded = bench.Row("optimizer step", "adam n=1e+07", 1, gdfast_s=1.4e-4, unit="GB/s",
                        work=0.028, ceiling=400.0)
    assert math.isnan(beaten.fraction) and beaten.as_dict()["fraction_of_ceiling"] is None
    assert math.isclose(bounded.fraction, 0.5)
    rows = {line.split()[1]: line.split()[-1] for line in bench.table([beaten, bounded]).splitlines()
            if line.startswith("adam")}
    assert rows == {"n=1e+06": "-", "n=1e+07": "50%"}


def test_n_thread_ceiling_is_never_below_the_1_thread_one():
    measured = {1: 113.0, 2: 79.0, 4: 300.0}     # a neighbour held a core at 2 threads
    assert bench.thread_ceilings([2, 4], measured.get) == {2: 113.0, 4: 300.0}
    assert bench.thread_ceilings([1, 2], measured.get) == {1: 113.0, 2: 113.0}


def test_step_ceiling_is_the_lower_of_the_probes_that_apply(monkeypatch):
    monkeypatch.setattr(bench, "rmw_ceiling", lambda n, rw, ro, rate: 100.0)
    # Adam moves 28 bytes a parameter: 3 G elements/s of sqrt+div bound it at 84 GB/s.
    assert bench.step_ceiling(10**6, 3, 1, 50.0, 3.0, 28) == (84.0, "sqrt+div")
    assert bench.step_ceiling(10**6, 3, 1, 50.0, 5.0, 28) == (100.0, "memory")
    assert bench.step_ceiling(10**6, 1, 1, 50.0) == (100.0, "memory")           # SGD: no divider
    assert bench.step_ceiling(10**4, 3, 1, 50.0, 3.0, 28) == (84.0, "sqrt+div")  # no memory probe
    ceiling, bound = bench.step_ceiling(10**4, 1, 1, 50.0)
    assert math.isnan(ceiling) and bound == "-"
    # a step beating the lower probe shows no fraction, even if the other holds
    beaten = bench.Row("optimizer step", "adam n=1e+06", 1, gdfast_s=1.0, unit="GB/s", work=90.0,
                       ceiling=bench.step_ceiling(10**6, 3, 1, 90.0, 3.0, 28)[0])
    assert math.isnan(beaten.fraction)


def test_rootdiv_loop_counts_its_elements():
    one, two = bench._kernels.rootdiv_loop(1000, 1), bench._kernels.rootdiv_loop(1000, 2)
    assert one > 0 and one % 1000 == 0 and two == 2 * one
    with pytest.raises(ValueError, match="iters must be >= 0"):
        bench._kernels.rootdiv_loop(-1, 1)


def test_rmw_ceiling_is_measured_again_while_the_step_beats_it(monkeypatch):
    def probes(*gbs):     # bytes/s per call; the first call only sizes the passes
        calls = iter([10e9, *(g * 1e9 for g in gbs)])
        monkeypatch.setattr(bench._kernels, "bandwidth_rmw", lambda n, rw, ro, reps: next(calls))
    probes(20, 30, 40)
    assert bench.rmw_ceiling(1_000_000, 3, 1, rate=25.0) == 30.0
    probes(50)
    assert bench.rmw_ceiling(1_000_000, 3, 1, rate=5.0) == 50.0
    probes(20, 40, 30)    # never a bound: the best of three tries, which fraction then drops
    assert bench.rmw_ceiling(1_000_000, 3, 1, rate=100.0) == 40.0


def full_run_rows(threads=(1, 2)):
    """Fake rows shaped like a full `gdfast bench` run (74 rows on 2 cores)."""
    cases = [("optimizer step", f"{name} n={n:.0e}")
             for n in bench.OPTIMIZER_SIZES for name in bench.OPTIMIZERS]
    cases += [("GEMM", name) for name in bench.GEMM_SHAPES]
    cases += [("MLP", f"batch {bs}, {opt}") for bs, opt, _ in bench.mlp_cases(bench.MLP_BATCHES)]
    cases += [("MNIST epoch", "784-256-128-10")]
    return [bench.Row(section, case, nt, gdfast_s=1e-3, numpy_s=5e-3)
            for nt in threads for section, case in cases]


def test_plot_fits_a_screen_with_readable_labels():
    rows = full_run_rows()
    layout = bench.plot_layout(rows)
    width, height = layout["figsize"]
    assert width * bench.PLOT_DPI <= 1600 and height * bench.PLOT_DPI <= 900
    assert layout["fontsize"] >= 7
    assert layout["threads"] == [1, 2]                  # a bar per thread count ...
    assert sum(len(cases) for _, cases, _ in layout["panels"]) == len(rows) // 2  # ... per label
    assert [p[0] for p in layout["panels"]] == ["optimizer step", "GEMM", "MLP", "MNIST epoch"]
    small = bench.plot_layout(full_run_rows(threads=(1,))[:3])
    assert small["figsize"][1] < 3 and small["fontsize"] > 9     # few rows: a small figure


def _children_alive(procs):
    return [p for p in procs if p.poll() is None]


def test_under_load_reports_one_thread_against_the_team(monkeypatch):
    cases = bench.under_load_cases(quick=True)
    small = {k: cases[k] for k in ("MLP train step, batch 1, Adam", "GEMM 64x256 @ 256x128",
                                   "GEMM 64x256 @ 256x128, 30 calls between 30 numpy.matmul")}
    monkeypatch.setattr(bench, "under_load_cases", lambda quick: small)
    seen = []
    real = bench.busy_processes.__enter__

    def enter(self):
        out = real(self)
        seen.extend(self.procs)
        return out

    monkeypatch.setattr(bench.busy_processes, "__enter__", enter)
    result = bench.run_under_load(busy=2, threads=[2], quick=True, block_seconds=0.02,
                                  rounds=2, log=lambda *a: None)
    assert len(seen) == 2 and not _children_alive(seen)   # the busy processes are gone
    assert [r["case"] for r in result["rows"]] == list(small)
    for r in result["rows"]:
        assert r["threads"] == 2 and r["busy"] == 2 and r["guard_trips"] >= 0
        # per-call times, not what the calls return (a loss, an array)
        assert all(0 < r[k] < 0.1 for k in ("one_median_s", "team_median_s", "one_mean_s",
                                            "team_mean_s"))
    text = bench.under_load_report(result)
    assert "beside 2 CPU-bound processes" in text and "GEMM 64x256 @ 256x128" in text
    assert bench.under_load_report(result, markdown=True).count("\n| ") == 4


def test_under_load_stops_its_busy_processes_on_ctrl_c(monkeypatch):
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(bench, "under_load_cases", lambda quick: {"x": (interrupted, 1, False)})
    with bench.busy_processes(1) as busy:
        procs = list(busy.procs)
        assert _children_alive(procs)
    assert not _children_alive(procs)
    seen = []

    def exit_(self, *exc):
        seen.extend(self.procs)
        self.kill_all()
    monkeypatch.setattr(bench.busy_processes, "__exit__", exit_)
    with pytest.raises(KeyboardInterrupt):
        bench.run_under_load(busy=1, quick=True, log=lambda *a: None)
    assert seen and not _children_alive(seen)


def test_under_load_flag(capsys, monkeypatch):
    got = {}
    monkeypatch.setattr(bench, "run_under_load", lambda busy, threads, quick, log: got.update(
        busy=busy, threads=threads) or {"machine": bench.machine(), "busy": busy,
                                          "threads": 2, "rows": []})
    assert bench.main(["--under-load"]) == 0 and got == {"busy": 1, "threads": None}
    assert bench.main(["--under-load", "2", "--threads", "4"]) == 0
    assert got == {"busy": 2, "threads": [4]}
    with pytest.raises(SystemExit):
        bench.main(["--under-load", "-1"])
    assert "number of processes >= 0" in capsys.readouterr().err


def test_bigger_networks_rate_their_matrix_products_against_the_fma_ceiling():
    rows = bench.bench_big_mlps([[12, 16, 8, 3]], [4, 6], threads=1, repeats=3, peak=1e6,
                                torch=None)
    assert [r.case for r in rows] == ["12-16-8-3, batch 4", "12-16-8-3, batch 6"]
    for r, bs in zip(rows, (4, 6)):
        assert r.section == "MLP train step, bigger networks (Adam)" and r.unit == "GFLOP/s"
        assert r.work == bench.mlp_flops_per_sample([12, 16, 8, 3]) * bs / 1e9
        assert r.ceiling == 1e6 and 0 < r.fraction < 1 and r.numpy_s > 0


def test_bigger_networks_compare_with_torch_in_the_same_run():
    torch = pytest.importorskip("torch")
    (r,) = bench.bench_big_mlps([[12, 16, 3]], [4], threads=1, repeats=3, peak=1e6, torch=torch)
    assert r.extra["torch"] > 0
    assert r.extra["torch / gdfast"] == f"{r.extra['torch'] / r.gdfast_s:.2f}x"
