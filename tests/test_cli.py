"""The gdfast command, run in-process on small generated data sets."""
import dataclasses
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

import gdfast
from conftest import child_python
from gdfast import cli, datasets, testfuncs
from test_datasets import idx_bytes


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A learnable MNIST-shaped set: the label is written into the image."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GDFAST_DATA", raising=False)
    d = tmp_path / "mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 100)):
        y = rng.integers(0, 10, n)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for k, label in enumerate(y):
            x[k, 2 * label:2 * label + 4, 4:24] = 255    # a bar whose height is the class
        (d / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
        (d / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    return d


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"gdfast {gdfast.__version__}"


def test_module_entry_point_runs():
    env, cwd = child_python()
    out = subprocess.run([sys.executable, "-m", "gdfast", "--version"], capture_output=True,
                         text=True, env=env, cwd=cwd)
    assert out.returncode == 0 and out.stdout.startswith("gdfast ")


def test_train_checkpoints_and_resume(data_dir, tmp_path, capsys):
    ck = tmp_path / "ck"
    args = ["train", "--data", str(data_dir), "--hidden", "32", "--epochs", "3", "--batch-size", "32",
            "--lr", "5e-3", "--warmup", "0.5", "--checkpoint-dir", str(ck), "--no-progress",
            "--threads", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "784-32-10 relu cross_entropy, adam" in out and "epoch   3/3" in out
    acc = float(out.split("final test accuracy ")[1].split("%")[0])
    assert acc > 60, out                   # chance is 10%
    assert "samples/s" in out
    history = json.loads((ck / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # resume to 5 epochs: only epochs 4 and 5 run
    assert cli.main(args[:6] + ["5"] + args[7:] + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch   4/5" in out and "epoch   3/5" not in out
    assert len(json.loads((ck / "history.json").read_text())) == 5


def captured_figures(monkeypatch):
    """The figures the CLI draws, kept when it closes them."""
    plt = pytest.importorskip("matplotlib.pyplot")     # the optional 'plot' extra
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    return figures


def test_train_plots_curves(data_dir, tmp_path, capsys, monkeypatch):
    figures = captured_figures(monkeypatch)
    assert cli.main(["train", "--data", str(data_dir), "--hidden", "8", "--epochs", "2",
                     "--plot", str(tmp_path / "curves"), "--no-progress", "--threads", "1"]) == 0
    png = tmp_path / "curves.png"                      # the name reported is the file written
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"curves saved to {png}\n" in capsys.readouterr().out
    fig, = figures
    assert "mnist: 784-8-10 relu cross_entropy, adam lr 0.002 cosine, batch 128" in fig._suptitle.get_text()
    acc_axis = fig.axes[1]
    assert [line.get_label() for line in acc_axis.get_lines()] == ["train (estimate)", "test"]


def test_optimizer_paths_are_told_apart(tmp_path, capsys, monkeypatch):
    figures = captured_figures(monkeypatch)
    assert cli.main(["optimizers", "--steps", "50", "--functions", "beale",
                     "--plot", str(tmp_path / "paths.png")]) == 0
    fig, = figures
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"{o} (lr {lr:g})" for o, lr in cli.TRAJECTORY_LRS["beale"].items()]
    paths = [ln for ln in ax.get_lines() if ln.get_label() in labels]
    assert len({ln.get_marker() for ln in paths}) == len(paths)           # a marker each
    assert all(ln.get_markevery() == 5 for ln in paths)                   # every 10th of the way


def test_progress_bar_shows_live_loss_and_accuracy(data_dir, capsys):
    pytest.importorskip("tqdm")
    assert cli.main(["train", "--data", str(data_dir), "--hidden", "16", "--epochs", "1",
                     "--batch-size", "4", "--threads", "1"]) == 0
    assert "epoch 1/1" in capsys.readouterr().err
    bar = cli._ProgressBar(2, mininterval=0)
    bar.on_epoch_begin(2, 50)
    for k in range(50):
        bar.on_step(1.0 / (k + 1), 0.5 if k else None)
    bar.on_epoch_end({"epoch": 2, "train_loss": 0.1, "test_loss": 0.2, "test_acc": 0.9, "lr": 0.01,
                      "grad_norm": 1.5, "samples_per_s": 1000.0})
    captured = capsys.readouterr()
    assert "epoch 2/2" in captured.err and "loss=" in captured.err and "train acc=50.0%" in captured.err
    assert "test acc 90.00%" in captured.out


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import fails
    with pytest.raises(SystemExit) as e:
        cli._plot_history([{"epoch": 1, "train_loss": 1.0, "lr": 0.1}], "x.png", "title")
    assert "pip install 'gdfast[plot]'" in str(e.value)


def test_nielsen_preset_values_and_overrides():
    parser = cli.build_parser()
    argv = ["train", "--preset", "nielsen", "--epochs", "2"]
    args = parser.parse_args(argv)
    cli._apply_preset(args, argv)
    assert (args.hidden, args.activation, args.loss, args.optimizer) == ([30], "sigmoid", "mse", "sgd")
    assert (args.lr, args.batch_size, args.schedule, args.shift) == (3.0, 10, "constant", 0)
    assert args.epochs == 2                 # explicit flag wins over the preset


def test_missing_data_exits_with_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GDFAST_DATA", str(tmp_path / "none"))
    # Debian's dataset-fashion-mnist may be installed on this machine: hide it.
    spec = datasets.DATASETS["fashion-mnist"]
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", dataclasses.replace(spec, system_dirs=()))
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "fashion-mnist", "--no-download", "--no-progress"])
    msg = capsys.readouterr().err
    assert e.value.code == 2 and len(msg.splitlines()) == 1   # a usage error, on one line
    assert "fashion-mnist not found" in msg and str(tmp_path / "none" / "fashion-mnist") in msg


def test_train_offline_uses_the_bundled_sample(tmp_path):
    """A fresh machine, no network: `gdfast train` still trains, on the sample."""
    (tmp_path / "empty").mkdir()
    env, cwd = child_python(HOME=str(tmp_path), GDFAST_DATA=str(tmp_path / "empty"),
                            no_proxy="", https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-m", "gdfast", "train", "--epochs", "1", "--hidden", "16",
                           "--no-progress"], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "using the MNIST sample bundled with gdfast (17,196 train / 10,000 test images)" in proc.stdout
    assert "from bundled sample" in proc.stdout
    acc = float(proc.stdout.split("final test accuracy ")[1].split("%")[0])
    assert acc > 80


def test_bad_flags_are_refused(capsys):
    for argv in (["train", "--hidden", "a,b"], ["train", "--optimizer", "newton"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    refused(capsys, ["train", "--resume"], "--resume needs --checkpoint-dir")


def refused(capsys, argv, message):
    """`gdfast argv` exits with status 2 and one line on stderr holding `message`."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gdfast") and message in err, err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr: expected a number > 0"),
    (["--lr", "-0.1"], "--lr: expected a number > 0"),
    (["--betas", "0.9", "1.5"], "--betas: expected a number >= 0 and < 1, got '1.5'"),
    (["--eps", "-1"], "--eps: expected a number > 0"),
    (["--batch-size", "-5"], "--batch-size: expected an integer >= 0"),
    (["--init", "foo"], "--init: invalid choice: 'foo'"),
    (["--shift", "30"], "--shift: expected an integer >= 0 and < 28"),
    (["--shift", "-1"], "--shift: expected an integer >= 0 and < 28"),
    (["--threads", "-1"], "--threads: expected an integer >= 1"),
    (["--threads", "0"], "--threads: expected an integer >= 1"),
    (["--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["--epochs", "-1"], "--epochs: expected an integer >= 1"),
    (["--momentum", "-1"], "--momentum: expected a number >= 0 and < 1"),
    (["--weight-decay", "-1"], "--weight-decay: expected a number >= 0"),
    (["--clip-norm", "0"], "--clip-norm: expected a number > 0"),
    (["--warmup", "-1"], "--warmup: expected a number >= 0"),
    (["--validation", "-1"], "--validation: expected a number >= 0"),
    (["--validation", "2.5"], "--validation: expected a fraction in (0, 1) or a whole count"),
    (["--validation", "inf"], "--validation: expected a number >= 0"),
    (["--plot", "no-such-folder/curves.png"], "--plot: folder 'no-such-folder' does not exist"),
    (["--overlap"], "--overlap applies to runs on several ranks"),
])
def test_bad_values_are_one_line_usage_errors(capsys, flags, message):
    refused(capsys, ["train", *flags], message)


def test_init_and_activation_choices_match_the_model():
    assert cli.INITS == gdfast.mlp.INITS
    assert cli.ACTIVATIONS == tuple(a for a in gdfast.mlp.ACTIVATIONS if a != "identity")


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adagrad"])
def test_momentum_is_refused_where_it_does_nothing(capsys, optimizer):
    refused(capsys, ["train", "--optimizer", optimizer, "--momentum", "0.5"],
            "--momentum applies to momentum, nesterov and rmsprop")


def test_momentum_reaches_rmsprop_only_when_given():
    import argparse
    params = gdfast.MLP(sizes=(4, 3), seed=0).params
    args = argparse.Namespace(lr=0.01, weight_decay=0.0, eps=None, momentum=None, betas=(0.9, 0.999))
    assert cli._make_optimizer("rmsprop", params, args).defaults["momentum"] == 0.0
    assert cli._make_optimizer("momentum", params, args).defaults["momentum"] == 0.9
    args.momentum = 0.5
    assert cli._make_optimizer("rmsprop", params, args).defaults["momentum"] == 0.5


def test_validation_count_or_fraction():
    assert cli._validation("2") == 2 and cli._validation("2.0") == 2
    assert isinstance(cli._validation("2.0"), int) and cli._validation("0.25") == 0.25


def test_plot_name_without_suffix_is_reported_as_written(tmp_path):
    assert cli._png_path(str(tmp_path / "curves")) == tmp_path / "curves.png"
    assert cli._png_path(str(tmp_path / "curves.svg")) == tmp_path / "curves.svg"


def train_argv(data_dir, *flags):
    return ["train", "--data", str(data_dir), "--no-download", "--no-progress", "--epochs", "1",
            "--hidden", "8", "--batch-size", "50", *flags]


def test_checkpoint_dir_with_a_run_needs_resume(data_dir, tmp_path, capsys):
    ckpt = tmp_path / "run"
    assert cli.main(train_argv(data_dir, "--checkpoint-dir", str(ckpt))) == 0
    before = (ckpt / "history.json").read_text()
    refused(capsys, train_argv(data_dir, "--checkpoint-dir", str(ckpt)),
            f"{ckpt} holds a run; pass --resume to continue it or choose another directory")
    assert (ckpt / "history.json").read_text() == before          # nothing overwritten
    refused(capsys, train_argv(data_dir, "--checkpoint-dir", str(ckpt), "--resume", "--hidden", "9"),
            f"cannot resume from {ckpt / 'last.npz'}: checkpoint is for a model")


def test_subcommands_are_a_table():
    assert {"train", "optimizers"} <= set(cli.COMMANDS)
    added = dict(cli.COMMANDS)
    added["hello"] = ("say hello", lambda p: p.add_argument("--name", default="x"),
                      lambda args, argv: print("hello", args.name) or 0)
    try:
        cli.COMMANDS["hello"] = added["hello"]
        assert cli.main(["hello", "--name", "bench"]) == 0
    finally:
        del cli.COMMANDS["hello"]


@pytest.mark.parametrize("func", list(testfuncs.FUNCTIONS.values()), ids=lambda f: f.name)
def test_test_function_gradients_match_finite_differences(func):
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y = rng.uniform(*func.xlim), rng.uniform(*func.ylim)
        gx, gy = func.gradient(x, y)       # no rng: the noise-free gradient
        h = 1e-6
        assert gx == pytest.approx((func.value(x + h, y) - func.value(x - h, y)) / (2 * h), rel=1e-5, abs=1e-5)
        assert gy == pytest.approx((func.value(x, y + h) - func.value(x, y - h)) / (2 * h), rel=1e-5, abs=1e-5)
    assert func.value(*func.minimum) == pytest.approx(0.0, abs=1e-12)
    assert func.gradient(*func.minimum) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_optimizers_move_toward_the_minima_and_plot(tmp_path, capsys):
    png = tmp_path / "paths.png"
    argv = ["optimizers", "--steps", "300"]
    import importlib.util
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    if has_mpl:
        argv += ["--plot", str(png)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for name in cli.TRAJECTORY_LRS["rosenbrock"]:
        assert out.count(f"  {name} ") == 3
    if has_mpl:
        assert png.read_bytes()[:4] == b"\x89PNG"
    for fname in cli.TRAJECTORY_LRS:
        func = testfuncs.FUNCTIONS[fname]
        start = func.value(*func.start)
        for opt, lr in cli.TRAJECTORY_LRS[fname].items():
            path = testfuncs.trajectory(func, cli.optimizer_factory(opt, lr), 300)
            assert len(path) == 301, f"{opt} diverged on {fname}"
            assert func.value(*path[-1]) < 0.5 * start, (fname, opt, path[-1])


def test_bench_subcommand_is_wired(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0 and "--quick" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "sgd", "--betas", "0.9", "0.99"], "--betas applies to adam, adamw and lion"),
    (["--optimizer", "lion", "--eps", "1e-6"], "--eps does not apply to lion"),
    (["--optimizer", "momentum", "--eps", "1e-6"], "--eps does not apply to momentum"),
])
def test_betas_and_eps_are_refused_where_they_do_nothing(capsys, argv, message):
    refused(capsys, ["train"] + argv, message)


def test_lion_gets_its_own_default_betas():
    import argparse
    params = gdfast.MLP(sizes=(4, 3), seed=0).params
    args = argparse.Namespace(lr=1e-4, weight_decay=0.0, eps=None, momentum=None, betas=None)
    lion = cli._make_optimizer("lion", params, args)
    assert isinstance(lion, gdfast.Lion) and lion.defaults["betas"] == (0.9, 0.99)
    assert cli._make_optimizer("adam", params, args).defaults["betas"] == (0.9, 0.999)
    args.betas = [0.8, 0.9]
    assert cli._make_optimizer("lion", params, args).defaults["betas"] == (0.8, 0.9)
