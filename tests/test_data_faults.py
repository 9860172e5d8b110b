"""Data files under faults (beyond tests/test_datasets.py): fuzzed IDX bytes,
swapped files, and downloads that are killed or interrupted midway.

Every damaged file gives a DatasetError naming it (or, when only pixel or
label bytes changed, valid data of the right shape); a download that dies at
any point leaves nothing under the name the loader looks for.
"""
import gzip
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import child_python
from gdfast import datasets
from gdfast.datasets import DatasetError

BASES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]


def idx_bytes(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) \
        + arr.tobytes()


IMAGES = idx_bytes(np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256)
LABELS = idx_bytes([1, 7, 9])


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GDFAST_DATA", raising=False)


@st.composite
def damaged(draw):
    which = draw(st.sampled_from(["images", "labels"]))
    data = bytearray(IMAGES if which == "images" else LABELS)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 40))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return which, bytes(data), draw(st.booleans())


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged())
def test_fuzzed_idx_files_fail_clearly_or_read_validly(tmp_path, case):
    which, data, gz = case
    ndim = 3 if which == "images" else 1
    path = tmp_path / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        arr = datasets.read_idx(path, ndim)
    except DatasetError as e:
        assert str(path) in str(e)
        return
    # accepted: the header must describe exactly the bytes that follow it
    assert arr.dtype == np.uint8 and arr.ndim == ndim
    assert 4 + 4 * ndim + arr.size == len(data)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 2000), flip=st.integers(0, 2000))
def test_damaged_gzip_is_a_dataset_error(tmp_path, cut, flip):
    packed = bytearray(gzip.compress(IMAGES))
    if flip < len(packed):
        packed[flip] ^= 0xFF
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(packed[:len(packed) - cut % len(packed)]))
    try:
        arr = datasets.read_idx(path, 3)
    except DatasetError as e:
        assert "x.gz" in str(e)
    else:
        assert arr.shape == (3, 28, 28)


def test_swapped_and_mismatched_files_name_the_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    files = {"train-images-idx3-ubyte": LABELS, "train-labels-idx1-ubyte": IMAGES,
             "t10k-images-idx3-ubyte": IMAGES, "t10k-labels-idx1-ubyte": LABELS}
    for base, data in files.items():
        (d / base).write_bytes(data)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: bad IDX magic.*3 dimensions"):
        datasets.load_mnist(d)
    (d / "train-images-idx3-ubyte").write_bytes(IMAGES)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes([1, 2]))
    with pytest.raises(DatasetError, match="3 images but .* 2 labels"):
        datasets.load_mnist(d)
    (d / "train-labels-idx1-ubyte").write_bytes(LABELS)
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 32, 32))))
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte: images are 32x32"):
        datasets.load_mnist(d)


# ---- downloads that die ------------------------------------------------------------

STALLING_DOWNLOAD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gdfast import datasets

    class Stalling:                       # sends some bytes, then hangs forever
        headers = {"Content-Length": "1000000"}
        def __init__(self, url, timeout): self.n = 0
        def read(self, n):
            self.n += 1
            if self.n == 3:
                print("STALLED", flush=True)
                time.sleep(120)
            return b"x" * 4096
        def __enter__(self): return self
        def __exit__(self, *exc): return False

    datasets.fetch("mnist", Path(sys.argv[1]), mirrors=["https://example.invalid/"],
                   progress=False, opener=Stalling)
""")


def test_download_killed_midway_leaves_nothing_the_loader_would_read(tmp_path):
    dest = tmp_path / "mnist"
    env, cwd = child_python()
    proc = subprocess.Popen([sys.executable, "-c", STALLING_DOWNLOAD, str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STALLED", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = os.listdir(dest)
    assert left and all(f.startswith(".") and f.endswith(".part") for f in left), left
    assert all(os.path.getsize(dest / f) > 0 for f in left)  # killed mid-write, for real
    # the partial download is never taken for data: the bundled sample stands in
    assert datasets.load_mnist(tmp_path).source == "bundled sample"


def test_interrupted_download_cleans_up(tmp_path):
    class Interrupted:
        headers = {}

        def __init__(self, url, timeout):
            self.n = 0

        def read(self, n):
            self.n += 1
            if self.n == 2:
                raise KeyboardInterrupt
            return b"y" * 1000

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    dest = tmp_path / "dl"
    with pytest.raises(KeyboardInterrupt):
        datasets.fetch("mnist", dest, mirrors=["https://example.invalid/"], progress=False,
                       opener=Interrupted)
    assert os.listdir(dest) == []
