"""IDX reading, search order, validation split and download, on files made here."""
import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from gdfast import datasets
from gdfast.datasets import DatasetError

REAL_DATA = os.environ.get("GDFAST_DATA")  # read before the fixture below hides it

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_set(directory, n_train=12, n_test=5, compress=True, seed=0):
    """A tiny MNIST-shaped data set; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)),
              "train_labels": rng.integers(0, 10, n_train),
              "test_images": rng.integers(0, 256, (n_test, 28, 28)),
              "test_labels": rng.integers(0, 10, n_test)}
    for role, base in FILES.items():
        data = idx_bytes(arrays[role])
        if compress:
            (directory / (base + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / base).write_bytes(data)
    return arrays


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GDFAST_DATA", raising=False)


@pytest.mark.parametrize("compress", [True, False])
def test_reads_gz_and_raw_idx(tmp_path, compress):
    arrays = write_set(tmp_path / "d", compress=compress)
    data = datasets.load_mnist(tmp_path / "d")
    assert data.x_train.shape == (12, 784) and data.x_test.shape == (5, 784)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.flags.c_contiguous
    np.testing.assert_array_equal(data.x_train, arrays["train_images"].reshape(12, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(data.y_test, arrays["test_labels"])
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.x_val is None


def test_validation_split_count_and_fraction(tmp_path):
    arrays = write_set(tmp_path, n_train=20)
    d = datasets.load_mnist(tmp_path, validation=5)
    assert len(d.x_train) == 15 and len(d.x_val) == 5 and d.x_val.flags.c_contiguous
    np.testing.assert_array_equal(d.y_val, arrays["train_labels"][15:])
    assert len(datasets.load_mnist(tmp_path, validation=0.25).y_val) == 5
    with pytest.raises(ValueError, match="validation must be a count"):
        datasets.load_mnist(tmp_path, validation=20)
    with pytest.raises(TypeError, match="validation"):
        datasets.load_mnist(tmp_path, validation=True)


def test_search_order_env_then_cache_then_system(tmp_path, monkeypatch):
    env_arrays = write_set(tmp_path / "env" / "mnist", seed=1)
    cache_arrays = write_set(tmp_path / "home" / ".cache" / "gdfast" / "mnist", seed=2)
    monkeypatch.setenv("GDFAST_DATA", str(tmp_path / "env"))
    np.testing.assert_array_equal(datasets.load_mnist().y_train, env_arrays["train_labels"])
    monkeypatch.delenv("GDFAST_DATA")
    np.testing.assert_array_equal(datasets.load_mnist().y_train, cache_arrays["train_labels"])
    system = tmp_path / "sys"
    sys_arrays = write_set(system, seed=3)
    spec = datasets.DATASETS["fashion-mnist"]
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist",
                        datasets._Spec(spec.name, spec.files, spec.mirrors, (str(system),)))
    np.testing.assert_array_equal(datasets.load_fashion_mnist().y_test, sys_arrays["test_labels"])


def test_missing_files_list_where_it_looked(tmp_path, monkeypatch):
    # Fashion-MNIST: no sample of it is bundled, so nothing stands in for it
    monkeypatch.setenv("GDFAST_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = datasets.DATASETS["fashion-mnist"]  # hide Debian's copy, if installed
    monkeypatch.setitem(datasets.DATASETS, "fashion-mnist", dataclasses.replace(spec, system_dirs=()))
    with pytest.raises(FileNotFoundError) as err:
        datasets.load("fashion-mnist", download=True, opener=failing_opener)
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "fashion-mnist") in msg and ".cache/gdfast/fashion-mnist" in msg
    assert "GDFAST_DATA" in msg and "Downloading failed" in msg and "no network" in msg


def failing_opener(url, timeout=None):
    raise OSError("no network")


@pytest.mark.parametrize("download", [False, True])
def test_bundled_mnist_sample_when_nothing_else(tmp_path, monkeypatch, download):
    monkeypatch.setenv("GDFAST_DATA", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    d = datasets.load("mnist", download=download, opener=failing_opener, validation=196)
    assert d.source == "bundled sample"
    assert d.x_train.shape == (17000, 784) and d.x_val.shape == (196, 784)
    assert d.x_test.shape == (10000, 784) and d.y_test.shape == (10000,)
    assert set(np.unique(d.y_test)) == set(range(10)) and d.x_train.max() == 1.0
    assert not list((tmp_path / "home").rglob("*.gz"))       # the failed download left nothing
    about = (datasets.BUNDLED_DIR / "mnist" / "README.md").read_text()
    assert "17,196" in about and "10,000" in about and "CC BY-SA 3.0" in about and "LeCun" in about


def test_found_files_come_before_the_bundled_sample(tmp_path, monkeypatch):
    write_set(tmp_path / "env" / "mnist")
    monkeypatch.setenv("GDFAST_DATA", str(tmp_path / "env"))
    d = datasets.load_mnist()
    assert d.source == str(tmp_path / "env" / "mnist") and len(d.x_train) == 12


def corrupt(directory, base, data):
    (directory / (base + ".gz")).unlink()
    (directory / base).write_bytes(data)


@pytest.mark.parametrize("case, pattern", [
    ("magic", "bad IDX magic number 0x00000801, expected 0x00000803"),
    ("truncated", "truncated: header says"),
    ("trailing", "trailing bytes"),
    ("header", "truncated IDX header"),
    ("dims", "images are 28x27"),
    ("gzip", "corrupt or truncated"),
])
def test_corrupt_files_name_the_file(tmp_path, case, pattern):
    write_set(tmp_path)
    base = FILES["train_images"]
    good = idx_bytes(np.zeros((12, 28, 28)))
    if case == "magic":
        corrupt(tmp_path, base, idx_bytes(np.zeros(12)))
    elif case == "truncated":
        corrupt(tmp_path, base, good[:-7])
    elif case == "trailing":
        corrupt(tmp_path, base, good + b"\0")
    elif case == "header":
        corrupt(tmp_path, base, good[:10])
    elif case == "dims":
        corrupt(tmp_path, base, idx_bytes(np.zeros((12, 28, 27))))
    else:
        (tmp_path / (base + ".gz")).write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(DatasetError, match=pattern) as err:
        datasets.load_mnist(tmp_path)
    assert base in str(err.value)


def test_images_and_labels_must_agree(tmp_path):
    write_set(tmp_path)
    corrupt(tmp_path, FILES["train_labels"], idx_bytes(np.zeros(11)))
    with pytest.raises(DatasetError, match="12 images but .* 11 labels"):
        datasets.load_mnist(tmp_path)
    corrupt_label = np.zeros(12)
    corrupt_label[3] = 10
    (tmp_path / FILES["train_labels"]).write_bytes(idx_bytes(corrupt_label))
    with pytest.raises(DatasetError, match="label 10 out of range"):
        datasets.load_mnist(tmp_path)


def make_mirror(tmp_path):
    """A file:// mirror holding a tiny set, and a spec whose checksums match it."""
    mirror = tmp_path / "mirror"
    write_set(mirror)
    md5 = {role: hashlib.md5((mirror / (base + ".gz")).read_bytes()).hexdigest()
           for role, base in FILES.items()}
    spec = datasets._Spec("mnist", {r: (FILES[r], md5[r]) for r in FILES},
                          ("file:///nonexistent-mirror/", mirror.as_uri() + "/"))
    return mirror, spec


def test_download_from_mirror_verifies_and_writes_atomically(tmp_path, monkeypatch):
    mirror, spec = make_mirror(tmp_path)
    monkeypatch.setitem(datasets.DATASETS, "mnist", spec)
    dest = tmp_path / "home" / ".cache" / "gdfast" / "mnist"
    assert datasets.load_mnist(download=False).source == "bundled sample"
    data = datasets.load_mnist(download=True, progress=False)   # first mirror fails, second works
    assert data.source == str(dest)                             # preferred over the sample
    assert sorted(os.listdir(dest)) == sorted(b + ".gz" for b in FILES.values())
    assert len(data.y_train) == 12


def test_checksum_mismatch_and_broken_stream_leave_nothing(tmp_path, monkeypatch):
    mirror, spec = make_mirror(tmp_path)
    bad = dict(spec.files)
    bad["test_labels"] = (FILES["test_labels"], "0" * 32)
    monkeypatch.setitem(datasets.DATASETS, "mnist", datasets._Spec("mnist", bad, spec.mirrors))
    dest = tmp_path / "dl"
    with pytest.raises(DatasetError, match="does not match the published 0000"):
        datasets.fetch("mnist", dest, progress=False)
    assert FILES["test_labels"] + ".gz" not in os.listdir(dest)
    assert not [f for f in os.listdir(dest) if f.endswith(".part")]

    class Broken:
        headers = {"Content-Length": "100000"}

        def __init__(self, url, timeout):
            self.sent = False

        def read(self, n):
            if self.sent:
                raise ConnectionResetError("connection reset by peer")
            self.sent = True
            return b"x" * 100

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    dest2 = tmp_path / "dl2"
    with pytest.raises(DatasetError, match="connection reset"):
        datasets.fetch("mnist", dest2, mirrors=["https://example.invalid/"], progress=True,
                       opener=Broken)
    assert os.listdir(dest2) == []


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="dataset must be one of"):
        datasets.load("cifar10")


@pytest.mark.skipif(REAL_DATA is None, reason="GDFAST_DATA not set: no real MNIST")
def test_real_mnist_files(monkeypatch):
    monkeypatch.setenv("GDFAST_DATA", REAL_DATA)
    d = datasets.load_mnist(validation=1000)
    assert d.x_test.shape == (10000, 784) and len(d.x_train) + len(d.x_val) >= 10000
    assert set(np.unique(d.y_test)) == set(range(10))
    assert d.x_train.max() == 1.0 and d.x_train.min() == 0.0
    # the classes are roughly balanced in the official test set
    assert np.bincount(d.y_test).min() > 800
