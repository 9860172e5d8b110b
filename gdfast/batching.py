"""Batching: full-batch GD, single-example SGD and shuffled mini-batches.

Batches are gathered into buffers allocated once, so a training step allocates
nothing; a yielded batch is a view of those buffers and is overwritten by the
next one. The order is reshuffled at the start of every epoch from a seeded
``numpy.random.Generator`` whose state can be saved and restored, so a resumed
run sees the same batches as an uninterrupted one.
"""
import json

import numpy as np

__all__ = ["Batches"]


class Batches:
    """Iterate over (x, y) in batches, one epoch per ``iter()``.

    batch_size: None (or ``len(x)``) for full-batch gradient descent, 1 for
    single-example SGD, anything between for mini-batches.
    shuffle: reshuffle every epoch (ignored for full batches, whose order
    does not matter to the gradient).
    drop_last: drop the last partial batch instead of yielding it short.
    seed: an int or a ``numpy.random.Generator`` driving the shuffles.
    """

    def __init__(self, x, y, batch_size=None, *, shuffle=True, drop_last=False, seed=0):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"x must hold at least one example, got shape {x.shape}")
        if len(y) != len(x):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if not (x.flags.c_contiguous and y.flags.c_contiguous):
            raise ValueError("x and y must be C-contiguous (np.ascontiguousarray) so batches "
                             "can be gathered without copies of the whole set")
        n = len(x)
        if batch_size is None:
            batch_size = n
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.x, self.y = x, y
        self.batch_size = min(int(batch_size), n)
        self.full = self.batch_size == n
        self.shuffle = bool(shuffle) and not self.full
        self.drop_last = bool(drop_last)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if not self.full:
            self._order = np.arange(n, dtype=np.intp)
            self._index = np.empty(n, dtype=np.intp)
            self._xbuf = np.empty((self.batch_size,) + x.shape[1:], dtype=x.dtype)
            self._ybuf = np.empty((self.batch_size,) + y.shape[1:], dtype=y.dtype)

    def __len__(self):
        """Batches per epoch."""
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def samples_per_epoch(self):
        return len(self.x) if not self.drop_last else len(self) * self.batch_size

    def __iter__(self):
        if self.full:
            yield self.x, self.y
            return
        # restart from the identity each epoch: the shuffle then depends only on the RNG state
        np.copyto(self._index, self._order)
        if self.shuffle:
            self.rng.shuffle(self._index)
        b, n = self.batch_size, len(self.x)
        stop = n - n % b if self.drop_last else n
        for start in range(0, stop, b):
            idx = self._index[start:start + b]
            xb, yb = self._xbuf[:len(idx)], self._ybuf[:len(idx)]
            # mode="clip" lets np.take write straight into `out` (mode="raise" buffers a copy)
            np.take(self.x, idx, axis=0, out=xb, mode="clip")
            np.take(self.y, idx, axis=0, out=yb, mode="clip")
            yield xb, yb

    def get_state(self):
        """The shuffle RNG state as a JSON string (checkpointable without pickle)."""
        return json.dumps(self.rng.bit_generator.state)

    def set_state(self, state):
        self.rng.bit_generator.state = json.loads(state)

    def __repr__(self):
        kind = "full" if self.full else f"batch_size={self.batch_size}"
        return f"Batches(n={len(self.x)}, {kind}, shuffle={self.shuffle}, drop_last={self.drop_last})"
