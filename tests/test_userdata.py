"""A user's own data: gdfast.datasets.load_file, gdfast train --train, gdfast evaluate."""
import numpy as np
import pytest

from gdfast import datasets
from gdfast.datasets import DatasetError, load_file


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_good_file(tmp_path):
    path = write(tmp_path, "a,label,b\n1,0,2\n3.5,2,-4\n\n")
    x, y = load_file(path)
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (2, 2)
    np.testing.assert_array_equal(x, [[1, 2], [3.5, -4]])
    assert y.dtype == np.int64 and y.tolist() == [0, 2]


def test_csv_label_column_by_name(tmp_path):
    x, y = load_file(write(tmp_path, "cls,f\n1,0.5\n"), label_column="cls")
    assert x.tolist() == [[0.5]] and y.tolist() == [1]


def test_npz_good_file(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(6, dtype=np.float64).reshape(3, 2), y=np.array([0, 1, 1], np.uint8))
    x, y = load_file(path)
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (3, 2)
    assert y.dtype == np.int64 and y.tolist() == [0, 1, 1]


@pytest.mark.parametrize("text, message", [
    ("a,label\n1,0\n2,1,3\n", "line 3: 3 cells, the header has 2"),
    ("a,label\n1,0\nx,1\n", "line 3, column 'a': not a number: 'x'"),
    ("a,label\nnan,0\n", "line 2, column 'a': feature is not finite"),
    ("a,label\ninf,0\n", "line 2, column 'a': feature is not finite"),
    ("a,b\n1,0\n", "no label column 'label'"),
    ("a,label\n1,0.5\n", "line 2, column 'label': label must be a whole number"),
    ("a,label\n1,-1\n", "line 2, column 'label': label must be >= 0"),
    ("", "empty file"),
    ("a,label\n", "no data rows"),
    ("label\n1\n", "no feature columns"),
])
def test_csv_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(DatasetError, match=str(path)) as e:
        load_file(path)
    assert message in str(e.value)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((3, 2)), y=np.zeros(2)), "x has 3 rows but y has 2 labels"),
    (dict(features=np.zeros((2, 2)), y=np.zeros(2)), "expected arrays 'x' and 'y'"),
    (dict(x=np.zeros(3), y=np.zeros(3)), "x must be 2-D"),
    (dict(x=np.array([[1.0], [np.nan]]), y=np.zeros(2)), "x[1, 0] is not finite"),
    (dict(x=np.zeros((2, 1)), y=np.array([0.0, 1.5])), "whole numbers, y[1]"),
    (dict(x=np.zeros((2, 1)), y=np.array([0, -2])), "labels must be >= 0, y[1]"),
    (dict(x=np.zeros((0, 2)), y=np.zeros(0)), "no examples"),
])
def test_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=str(path)) as e:
        load_file(path)
    assert message in str(e.value)


def test_not_npz_or_csv(tmp_path):
    path = write(tmp_path, "x", name="d.txt")
    with pytest.raises(DatasetError, match="expected a .npz or .csv"):
        load_file(path)
    bad = write(tmp_path, "not a zip", name="d.npz")
    with pytest.raises(DatasetError, match="cannot read as .npz"):
        load_file(bad)


# -- gdfast train --train -------------------------------------------------------

def separable_csv(path, n=200, seed=0):
    """Three well-separated Gaussian blobs in 4 features; the label column comes second."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 4)) + 3 * np.eye(3, 4)[y]
    lines = ["f0,label,f1,f2,f3"] + [f"{r[0]},{c},{r[1]},{r[2]},{r[3]}" for r, c in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


TRAIN = ["train", "--hidden", "8", "--epochs", "5", "--batch-size", "16", "--lr", "0.02",
         "--no-progress"]


def test_train_on_user_csv_and_save_model(tmp_path, capsys):
    import gdfast
    from gdfast import cli
    train, test = separable_csv(tmp_path / "train.csv"), separable_csv(tmp_path / "test.csv", 100, 1)
    model_path = tmp_path / "model.npz"
    assert cli.main(TRAIN + ["--train", str(train), "--test", str(test),
                             "--save-model", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "4-8-3 relu" in out and "shift 0" in out and "200 train / 100 test" in out
    acc = float(out.split("final test accuracy ")[1].split("%")[0])
    assert acc >= 95
    assert f"model saved to {model_path}" in out
    model = gdfast.MLP.load(model_path)
    assert model.sizes == [4, 8, 3]
    x, y = load_file(test)
    assert model.evaluate(x, y)[1] * 100 == pytest.approx(acc, abs=0.01)


def test_train_without_test_reports_training_loss(tmp_path, capsys):
    from gdfast import cli
    train = separable_csv(tmp_path / "train.csv")
    assert cli.main(TRAIN + ["--train", str(train)]) == 0
    out = capsys.readouterr().out
    assert "200 train / no test" in out and "test acc" not in out
    final = out.strip().splitlines()[-1]
    assert final.startswith("final training loss ") and float(final.split()[3]) < 0.5


def test_train_user_data_errors(tmp_path, capsys):
    from gdfast import cli
    train = separable_csv(tmp_path / "train.csv")
    with pytest.raises(SystemExit) as e:     # shift needs images
        cli.main(TRAIN + ["--train", str(train), "--shift", "1"])
    assert e.value.code == 2 and "--shift needs 28x28 images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(TRAIN + ["--test", str(train)])
    assert e.value.code == 2 and "--test needs --train" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:     # a broken file: the DatasetError, naming it
        cli.main(TRAIN + ["--train", str(write(tmp_path, "a,label\n1,x\n"))])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("gdfast train: error: ")
    assert "d.csv, line 2, column 'label': not a number" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as e:     # a missing file: a usage error too
        cli.main(TRAIN + ["--train", str(tmp_path / "nowhere.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "nowhere.csv" in err and "Traceback" not in err


def test_train_takes_one_activation_per_hidden_layer(tmp_path, capsys):
    from gdfast import cli
    train = separable_csv(tmp_path / "train.csv")
    model = tmp_path / "m.npz"
    args = TRAIN + ["--train", str(train), "--hidden", "8,6", "--save-model", str(model)]
    assert cli.main(args + ["--activation", "relu,tanh"]) == 0
    assert "relu,tanh" in capsys.readouterr().out
    import gdfast
    assert gdfast.MLP.load(model).activation == ["relu", "tanh"]
    with pytest.raises(SystemExit) as e:     # three names for two layers
        cli.main(args + ["--activation", "relu,tanh,relu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--activation has 3 names but --hidden has 2 layers" in err
    with pytest.raises(SystemExit) as e:     # an unknown name: argparse's own error
        cli.main(args + ["--activation", "relu,swish"])
    assert e.value.code == 2 and "'relu,swish'" in capsys.readouterr().err


# -- gdfast evaluate --------------------------------------------------------------

@pytest.fixture
def trained(tmp_path, capsys):
    """A model trained on a separable csv, with its test file."""
    from gdfast import cli
    train, test = separable_csv(tmp_path / "train.csv"), separable_csv(tmp_path / "test.csv", 100, 1)
    model_path = tmp_path / "model.npz"
    cli.main(TRAIN + ["--train", str(train), "--save-model", str(model_path)])
    capsys.readouterr()
    return model_path, test


def test_evaluate_file_and_predictions(trained, tmp_path, capsys):
    import gdfast
    from gdfast import cli
    model_path, test = trained
    out_csv = tmp_path / "pred.csv"
    assert cli.main(["evaluate", str(model_path), "--file", str(test),
                     "--predictions", str(out_csv)]) == 0
    out = capsys.readouterr().out.splitlines()
    x, y = load_file(test)
    model = gdfast.MLP.load(model_path)
    loss, acc = model.evaluate(x, y)
    assert out[0] == f"{test}: 100 examples  loss {loss:.4f}  accuracy {100 * acc:.2f}%"
    assert acc > 0.95
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "prediction" and [int(v) for v in lines[1:]] == model.predict(x).tolist()


def test_evaluate_dataset(tmp_path, capsys):
    import gdfast
    model_path = tmp_path / "m.npz"
    gdfast.MLP([784, 10, 10]).save(model_path)
    from gdfast import cli
    assert cli.main(["evaluate", str(model_path), "--dataset", "mnist"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnist test: 10000 examples  loss ") and "accuracy" in out


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot load the model: "),
    ("not a model", "cannot load the model: "),
    ("features", "has 4 features but the model takes 5"),
])
def test_evaluate_errors(trained, tmp_path, capsys, case, message):
    import gdfast
    from gdfast import cli
    model_path, test = trained
    if case == "missing":
        model_path = tmp_path / "nope.npz"
    elif case == "not a model":
        model_path = tmp_path / "x.npz"
        np.savez(model_path, x=np.zeros(3))
    else:
        model_path = tmp_path / "five.npz"
        gdfast.MLP([5, 3]).save(model_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", str(model_path), "--file", str(test)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("gdfast evaluate: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and str(model_path if case != "features" else test) in err


def test_evaluate_unwritable_predictions(trained, tmp_path, capsys):
    from gdfast import cli
    model_path, test = trained
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", str(model_path), "--file", str(test),
                  "--predictions", str(tmp_path / "no-such-dir" / "p.csv")])
    assert e.value.code == 2 and "cannot write --predictions" in capsys.readouterr().err


def test_user_data_without_test_split_has_a_repr_and_holds_out_validation():
    x, y = np.zeros((10, 3), np.float32), np.arange(10) % 2
    data = datasets.Data("mine", "mine.csv", x, y, None, None).hold_out(0.2)
    assert len(data.x_train) == 8 and list(data.y_val) == [0, 1]
    assert "test=0" in repr(data)
