"""MNIST and Fashion-MNIST: IDX reading, search paths, checksummed download.

>>> data = load_mnist(validation=5000)          # doctest: +SKIP
>>> data.x_train.shape, data.x_train.dtype, data.y_train.dtype
((55000, 784), dtype('float32'), dtype('int64'))

Files are looked for, in order, in an explicit ``path``, ``$GDFAST_DATA/<name>/``,
``~/.cache/gdfast/<name>/`` and (Fashion-MNIST) Debian's
``/usr/share/datasets/fashion-mnist/``. Local files are checked structurally
(magic number, dimensions, counts, label range), so any valid IDX file is
accepted; downloaded files must also match the published MD5 checksums.
When MNIST is neither found nor downloadable, a sample bundled with gdfast
(17,196 train / 10,000 test images, gdfast/data/mnist/) is used instead.
"""
import csv
import gzip
import hashlib
import math
import os
import sys
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write

__all__ = ["DatasetError", "Data", "load_mnist", "load_fashion_mnist", "load",
           "read_idx", "fetch", "search_dirs", "DATASETS", "load_file"]

_ROWS = _COLS = 28
_IDX_UBYTE = 0x08
_DOWNLOAD_TIMEOUT = 30  # seconds without data before a mirror is given up
# A sample shipped in the package (gdfast/data/<name>/, see its README.md), the last resort.
BUNDLED_DIR = Path(__file__).parent / "data"


class DatasetError(ValueError):
    """A data file is missing, corrupt, truncated or inconsistent."""


@dataclass(frozen=True)
class _Spec:
    name: str
    files: dict          # role -> (IDX base name, md5 of the published .gz)
    mirrors: tuple       # base URLs, tried in order
    system_dirs: tuple = ()
    classes: int = 10


DATASETS = {
    "mnist": _Spec(
        "mnist",
        {"train_images": ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
         "train_labels": ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
         "test_images": ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
         "test_labels": ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c")},
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/",
         "http://yann.lecun.com/exdb/mnist/")),
    "fashion-mnist": _Spec(
        "fashion-mnist",
        {"train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
         "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
         "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
         "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310")},
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",)),
}


@dataclass
class Data:
    """Train/test (and optional validation) splits: images (n, 784) float32 in
    [0, 1], C-contiguous; labels (n,) int64."""
    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray = field(default=None)
    y_val: np.ndarray = field(default=None)

    def hold_out(self, validation):
        """Move the last training examples (in file order) to the validation
        split: `validation` is 0 for none, a count, or a fraction in (0, 1)."""
        n_val = _validation_count(validation, len(self.x_train))
        if n_val:
            split = len(self.x_train) - n_val
            self.x_val, self.y_val = self.x_train[split:], self.y_train[split:]
            self.x_train, self.y_train = self.x_train[:split], self.y_train[:split]
        return self

    def __repr__(self):
        val = 0 if self.x_val is None else len(self.x_val)
        test = 0 if self.x_test is None else len(self.x_test)
        return (f"Data({self.name!r}, train={len(self.x_train)}, val={val}, "
                f"test={test}, source={self.source!r})")


# -- IDX ----------------------------------------------------------------------

def _read_bytes(path):
    """The file's bytes, gunzipped if it is gzip; errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({e.__class__.__name__}: {e}); "
                           "the file is corrupt or truncated, delete it and fetch it again") from e


def read_idx(path, ndim):
    """Read an unsigned-byte IDX file with `ndim` dimensions as a uint8 array."""
    path = Path(path)
    buf = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(buf) < 4:
        raise DatasetError(f"{path}: truncated IDX header ({len(buf)} bytes, expected {header})")
    # the magic number first: a labels file given for images says so, not "truncated"
    magic = int.from_bytes(buf[:4], "big")
    expected = (_IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise DatasetError(f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected:08x} "
                           f"(unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})")
    if len(buf) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(buf)} bytes, expected {header})")
    dims = tuple(int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)  # Python ints: three 32-bit dims can overflow int64
    if len(buf) - header != size:
        what = "truncated" if len(buf) - header < size else "has trailing bytes"
        raise DatasetError(f"{path}: {what}: header says {dims} = {size} bytes of data, "
                           f"file has {len(buf) - header}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def _read_pair(images_path, labels_path, classes):
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != (_ROWS, _COLS):
        raise DatasetError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                           f"expected {_ROWS}x{_COLS}")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} has {len(images)} images but {labels_path} has "
                           f"{len(labels)} labels; they must come from the same split")
    if len(labels) and labels.max() >= classes:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range 0..{classes - 1}")
    x = np.empty((len(images), _ROWS * _COLS), dtype=np.float32)
    np.divide(images.reshape(len(images), -1), np.float32(255.0), out=x, dtype=np.float32)
    return x, labels.astype(np.int64)


# -- finding and fetching files -------------------------------------------------

def _find(directory, base):
    """The .gz or raw file for IDX `base` in `directory`, or None."""
    for candidate in (directory / (base + ".gz"), directory / base):
        if candidate.is_file():
            return candidate
    return None


def _cache_dir(name):
    return Path.home() / ".cache" / "gdfast" / name


def search_dirs(name, path=None):
    """The directories searched for dataset `name`, in order."""
    spec = _spec(name)
    if path is not None:
        path = Path(path).expanduser()
        return [path, path / name]
    dirs = []
    if os.environ.get("GDFAST_DATA"):
        dirs.append(Path(os.environ["GDFAST_DATA"]).expanduser() / name)
    dirs.append(_cache_dir(name))
    dirs.extend(Path(d) for d in spec.system_dirs)
    return dirs


def _spec(name):
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}") from None


def _locate(spec, dirs):
    """The first directory holding all four files: {role: path}, or None."""
    for d in dirs:
        found = {role: _find(d, base) for role, (base, _) in spec.files.items()}
        if all(found.values()):
            return found
    return None


class _Progress:
    """tqdm when installed, else a plain percentage line on stderr."""

    def __init__(self, total, desc):
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)
        except ImportError:
            self._bar = None
        self.total, self.done, self.desc = total, 0, desc

    def update(self, n):
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.total:
            sys.stderr.write(f"\r{self.desc}: {100 * self.done // self.total}%")

    def close(self):
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")


def _fetch(url, dest, md5, progress=True, opener=None):
    """Stream `url` into `dest` atomically, checking the MD5; no partial file on failure."""
    opener = opener or urllib.request.urlopen
    digest = hashlib.md5(usedforsecurity=False)   # an integrity check, not security
    with atomic_write(dest, suffix=".part") as out, \
            opener(url, timeout=_DOWNLOAD_TIMEOUT) as resp:
        total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
        bar = _Progress(total, dest.name) if progress else None
        try:
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                if bar:
                    bar.update(len(chunk))
        finally:
            if bar:
                bar.close()
        if digest.hexdigest() != md5:
            raise DatasetError(f"{url}: MD5 {digest.hexdigest()} does not match the published {md5}")


def fetch(name, dest=None, *, mirrors=None, progress=True, opener=None):
    """Download dataset `name`'s four .gz files into `dest` (default the cache).

    Each file is tried on every mirror in turn and must match its published
    MD5; it is written to a temporary file and renamed into place, so an
    interrupted or failed download leaves nothing behind. Returns `dest`.
    """
    spec = _spec(name)
    dest = Path(dest).expanduser() if dest is not None else _cache_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    for base, md5 in spec.files.values():
        target = dest / (base + ".gz")
        if target.is_file():
            continue
        errors = []
        for mirror in mirrors or spec.mirrors:
            url = mirror.rstrip("/") + "/" + base + ".gz"
            try:
                _fetch(url, target, md5, progress, opener)
                break
            except (OSError, DatasetError) as e:   # URLError and timeouts are OSErrors
                errors.append(f"  {url}: {e}")
        else:
            raise DatasetError(f"could not download {base}.gz for {name}:\n" + "\n".join(errors))
    return dest


def _missing_message(spec, dirs, download_error=None):
    names = ", ".join(base + "[.gz]" for base, _ in spec.files.values())
    lines = [f"{spec.name} not found. Looked for {names} in:"]
    lines += [f"  {d}" for d in dirs]
    if download_error is not None:
        lines.append(f"Downloading failed: {download_error}")
    lines.append("Provide the files by one of: pass path=DIR (gdfast train --data DIR); "
                 "set GDFAST_DATA=DIR with the files in DIR/" + spec.name + "/; "
                 f"copy them into {_cache_dir(spec.name)}; or allow download=True with network "
                 "access (mirrors: " + ", ".join(spec.mirrors) + ").")
    return "\n".join(lines)


# -- public loaders ------------------------------------------------------------

def _validation_count(validation, n):
    """How many training examples to hold out: a count, or a fraction in (0, 1)."""
    if isinstance(validation, (bool, np.bool_)) or not isinstance(validation, (int, float, np.number)):
        raise TypeError(f"validation must be a count or a fraction, got {validation!r}")
    if isinstance(validation, (float, np.floating)) and not np.isfinite(validation):
        raise ValueError(f"validation must be a count in [0, {n}) or a fraction in (0, 1), "
                         f"got {validation!r}")
    if 0 < validation < 1:
        return int(round(validation * n))
    if validation != int(validation) or not 0 <= validation < n:
        raise ValueError(f"validation must be a count in [0, {n}) or a fraction in (0, 1), "
                         f"got {validation!r}")
    return int(validation)


def load(name, path=None, *, download=False, validation=0, progress=True, opener=None):
    """Load dataset `name` ('mnist' or 'fashion-mnist'); see the module docstring.

    Files found in `search_dirs` come first; else, with download=True, the
    full set is fetched (checksummed) into the cache; else, for MNIST only,
    the sample bundled with the package (Data.source "bundled sample": the
    first 17,196 training images and the 10,000 test images).
    opener: urllib.request.urlopen's stand-in for fetch (tests).

    validation: 0 for none, a count, or a fraction of the training set; the
    last examples of the training set (in file order) are held out.
    """
    spec = _spec(name)
    dirs = search_dirs(name, path)
    found = _locate(spec, dirs)
    source = None
    if found is None:
        error = None
        if download:
            target = dirs[0] if path is not None else _cache_dir(name)
            try:
                fetch(name, target, progress=progress, opener=opener)
                found = _locate(spec, [target])
            except (OSError, DatasetError) as e:
                error = e
        if found is None:
            found = _locate(spec, [BUNDLED_DIR / name])
            if found is None:
                raise FileNotFoundError(_missing_message(spec, dirs, error))
            source = "bundled sample"
    x_train, y_train = _read_pair(found["train_images"], found["train_labels"], spec.classes)
    x_test, y_test = _read_pair(found["test_images"], found["test_labels"], spec.classes)
    data = Data(name, source or str(found["train_images"].parent), x_train, y_train, x_test, y_test)
    return data.hold_out(validation)


def load_mnist(path=None, *, download=False, validation=0, progress=True):
    """MNIST handwritten digits: see `load`."""
    return load("mnist", path, download=download, validation=validation, progress=progress)


def load_fashion_mnist(path=None, *, download=False, validation=0, progress=True):
    """Fashion-MNIST (Zalando) clothing images: see `load`."""
    return load("fashion-mnist", path, download=download, validation=validation,
                progress=progress)


# -- a user's own data -----------------------------------------------------------

def load_file(path, label_column="label"):
    """(x, y) from a user's file: x float32 C-contiguous (n, d), y int64 (n,).

    ``.npz``: arrays ``x`` (2-D features) and ``y`` (labels).
    ``.csv``: a header row; the column named `label_column` holds the labels,
    every other column is a feature. Labels must be whole numbers >= 0 and
    features finite; anything else raises DatasetError naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(path)
    elif suffix == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        raise DatasetError(f"{path}: expected a .npz or .csv file, got suffix {path.suffix!r}")
    return _check_xy(path, x, y)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted(f.files)
            if set(names) != {"x", "y"}:
                raise DatasetError(f"{path}: expected arrays 'x' and 'y', found {names}")
            x, y = f["x"], f["y"]
    except (OSError, ValueError, zlib.error) as e:     # DatasetError is a ValueError too
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read as .npz ({e.__class__.__name__}: {e})") from None
    if x.ndim != 2:
        raise DatasetError(f"{path}: x must be 2-D (examples, features), got shape {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"{path}: y must be 1-D (one label per example), got shape {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"{path}: x has {len(x)} rows but y has {len(y)} labels")
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: x must be numeric, got dtype {x.dtype}")
    if y.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: y must be numeric, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        bad = int(np.flatnonzero(~(np.isfinite(y) & (y == np.round(y))))[0])
        raise DatasetError(f"{path}: labels must be whole numbers, y[{bad}] is {y[bad]!r}")
    return x, y


def _read_csv(path, label_column):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    rows = [(i, r) for i, r in enumerate(rows, 1) if r]    # (line number, cells); blank lines skipped
    if not rows:
        raise DatasetError(f"{path}: empty file (expected a header row and data rows)")
    (_, header), data = rows[0], rows[1:]
    header = [h.strip() for h in header]
    if label_column not in header:
        raise DatasetError(f"{path}: no label column {label_column!r} in the header "
                           f"(columns: {', '.join(header)})")
    if len(header) < 2:
        raise DatasetError(f"{path}: no feature columns besides {label_column!r}")
    if not data:
        raise DatasetError(f"{path}: no data rows after the header")
    li = header.index(label_column)
    x = np.empty((len(data), len(header) - 1), np.float64)
    y = np.empty(len(data), np.int64)
    for k, (line, cells) in enumerate(data):
        if len(cells) != len(header):
            raise DatasetError(f"{path}, line {line}: {len(cells)} cells, the header has {len(header)}")
        values = []
        for name, cell in zip(header, cells):
            try:
                values.append(float(cell))
            except ValueError:
                raise DatasetError(f"{path}, line {line}, column {name!r}: "
                                   f"not a number: {cell!r}") from None
        label = values.pop(li)
        if not (math.isfinite(label) and label == int(label)):
            raise DatasetError(f"{path}, line {line}, column {label_column!r}: "
                               f"label must be a whole number, got {cells[li]!r}")
        if label < 0:
            raise DatasetError(f"{path}, line {line}, column {label_column!r}: "
                               f"label must be >= 0, got {cells[li]!r}")
        bad = [n for n, v in zip(header[:li] + header[li + 1:], values) if not math.isfinite(v)]
        if bad:
            raise DatasetError(f"{path}, line {line}, column {bad[0]!r}: feature is not finite")
        x[k], y[k] = values, int(label)
    return x, y


def _check_xy(path, x, y):
    if len(x) == 0:
        raise DatasetError(f"{path}: no examples")
    if x.shape[1] == 0:
        raise DatasetError(f"{path}: no feature columns")
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x32)
    if not finite.all():   # also a float64 beyond float32's range
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise DatasetError(f"{path}: feature x[{row}, {col}] is not finite ({x[row, col]!r} "
                           "as float32)")
    if (y < 0).any():
        bad = int(np.flatnonzero(y < 0)[0])
        raise DatasetError(f"{path}: labels must be >= 0, y[{bad}] is {y[bad]!r}")
    return x32, np.ascontiguousarray(y, dtype=np.int64)
