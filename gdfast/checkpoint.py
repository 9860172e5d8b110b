"""Checkpoints as versioned .npz files: arrays stored as arrays, everything
else as one JSON document, never pickle; written atomically.

Nested state (an optimizer's state_dict, a schedule's) is flattened: every
NumPy array or NumPy scalar becomes its own .npz entry, and the JSON tree
keeps a reference to it, so values come back with their exact dtype and bits.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

FORMAT = "gdfast-checkpoint"
VERSION = 1

__all__ = ["save", "load", "write_npz", "read_npz", "CheckpointError", "FORMAT", "VERSION"]


class CheckpointError(ValueError):
    """The file is not a gdfast checkpoint this version can read."""


def _flatten(obj, arrays):
    if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            # JSON keys must be strings: keep other keys (e.g. int param ids) as pairs
            return {"__items__": [[_flatten(k, arrays), _flatten(v, arrays)] for k, v in obj.items()]}
        return {"__dict__": {k: _flatten(v, arrays) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_flatten(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} ({obj!r}): only arrays, numbers, "
                    "strings, None, lists, tuples and dicts")


def _unflatten(node, arrays):
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        arr = arrays[node["__array__"]]
        return arr[()] if node["scalar"] else arr
    if "__dict__" in node:
        return {k: _unflatten(v, arrays) for k, v in node["__dict__"].items()}
    if "__items__" in node:
        return {_unflatten(k, arrays): _unflatten(v, arrays) for k, v in node["__items__"]}
    if "__list__" in node:
        return [_unflatten(v, arrays) for v in node["__list__"]]
    if "__tuple__" in node:
        return tuple(_unflatten(v, arrays) for v in node["__tuple__"])
    raise CheckpointError(f"unknown node in checkpoint tree: {sorted(node)}")


def save(path, state):
    """Write the nested `state` to `path` atomically (temp file + os.replace)."""
    arrays = {}
    tree = _flatten(state, arrays)
    header = {"format": FORMAT, "version": VERSION, "tree": tree}
    # NaN/inf are legal state (e.g. a plateau's initial best); JSON writes them as tokens
    arrays["__meta__"] = np.array(json.dumps(header))
    return write_npz(path, arrays)


def write_npz(path, arrays):
    """Write `arrays` as an .npz at `path` so that a crash at any moment leaves
    either the old file or the new one: a temp file in the same directory,
    flushed to disk, renamed over `path`, then the directory entry synced.
    Object arrays are refused (reading them back would need pickle)."""
    path = Path(path)
    for name, a in arrays.items():
        if np.asarray(a).dtype.hasobject:
            raise TypeError(f"cannot write {name!r}: object arrays need pickle, which gdfast "
                            "files never use")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


@contextlib.contextmanager
def atomic_write(path, suffix=".tmp"):
    """A binary file that becomes `path` only when the block ends without an
    error: written to a temp file in the same directory, flushed to disk,
    renamed over `path`, the directory entry synced. On any error (or a kill)
    `path` keeps its old content and no partial file is left at `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)


def _sync_dir(directory):
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_npz(path, what="gdfast file"):
    """{name: array} of an .npz, never unpickling; a damaged file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:
        # truncated or tampered files fail in many ways: BadZipFile (CRC, directory),
        # EOFError, zlib.error, ValueError (object arrays: pickle refused), even
        # SyntaxError from a damaged .npy header
        raise CheckpointError(f"{path}: not a readable {what}: the file is truncated, "
                              f"damaged or not an .npz ({type(e).__name__}: {e})") from e


def load(path):
    """Read a checkpoint written by `save`; arrays come back as NumPy arrays."""
    path = Path(path)
    arrays = read_npz(path, "gdfast checkpoint")
    try:
        header = json.loads(str(arrays.pop("__meta__")))
    except KeyError:
        raise CheckpointError(f"{path}: no __meta__ entry, not a gdfast checkpoint") from None
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise CheckpointError(f"{path}: damaged __meta__ entry ({type(e).__name__}: {e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else header
        raise CheckpointError(f"{path}: format {got!r}, expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {header.get('version')}, this gdfast "
                              f"reads version {VERSION}")
    try:
        return _unflatten(header["tree"], arrays)
    except CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint tree ({type(e).__name__}: {e})") from e
