"""Batching: full-batch GD, single-example SGD and shuffled mini-batches.

Batches are gathered into buffers allocated once, so a training step allocates
nothing; a yielded batch is a view of those buffers and is overwritten by the
next one. The order is reshuffled at the start of every epoch from a seeded
``numpy.random.Generator`` whose state can be saved and restored, so a resumed
run sees the same batches as an uninterrupted one.
"""
import json

import numpy as np

from ._kernels import take_rows

__all__ = ["Batches"]


class Batches:
    """Iterate over (x, y) in batches, one epoch per ``iter()``.

    batch_size: None (or ``len(x)``) for full-batch gradient descent, 1 for
    single-example SGD, anything between for mini-batches.
    shuffle: reshuffle every epoch (ignored for full batches, whose order
    does not matter to the gradient).
    drop_last: drop the last partial batch instead of yielding it short.
    seed: an int or a ``numpy.random.Generator`` driving the shuffles.
    shift: augment images by a random translation of up to `shift` pixels in
    each direction (zero fill), uniform over the (2 shift + 1)^2 moves, drawn
    afresh every epoch; needs `image_shape` (rows, cols) unless x has 784
    columns (28x28).
    """

    def __init__(self, x, y, batch_size=None, *, shuffle=True, drop_last=False, seed=0,
                 shift=0, image_shape=None):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError(f"x must hold at least one example, got shape {x.shape}")
        if len(y) != len(x):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        if x.dtype.hasobject:
            raise TypeError(f"x must hold numbers, got dtype {x.dtype}")
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
        self.shift = int(shift)
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift!r}")
        if self.shift and (self.full or not self.shuffle):
            raise ValueError("shift augmentation needs shuffled mini-batches "
                             "(batch_size < len(x), shuffle=True)")
        if not self.full:
            self._order = np.arange(n, dtype=np.intp)
            self._index = np.empty(n, dtype=np.intp)
            self._xbuf = np.empty((self.batch_size,) + x.shape[1:], dtype=x.dtype)
            self._ybuf = np.empty((self.batch_size,) + y.shape[1:], dtype=y.dtype)
        if self.shift:
            self._init_shift(image_shape)

    def _init_shift(self, image_shape):
        x = self.x
        if image_shape is None:
            if x.ndim != 2 or x.shape[1] != 784:
                raise ValueError(f"shift needs image_shape=(rows, cols) for x of shape {x.shape}")
            image_shape = (28, 28)
        rows, cols = self.image_shape = tuple(int(d) for d in image_shape)
        if x.ndim != 2 or rows * cols != x.shape[1]:
            raise ValueError(f"image_shape {image_shape} does not match x rows of {x.shape[1:]}")
        if self.shift >= min(rows, cols):
            raise ValueError(f"shift must be smaller than the image, got {self.shift} for {image_shape}")
        self._raw = np.empty_like(self._xbuf)
        # a translation by (dr, dc) is a flat shift by dr * cols + dc, with the
        # columns that wrapped around to the neighbouring row then zeroed
        self._moves = [(dr * cols + dc, dc) for dr in range(-self.shift, self.shift + 1)
                       for dc in range(-self.shift, self.shift + 1)]
        self._uniform = np.full(len(self._moves), 1.0 / len(self._moves))

    def _shift_into(self, raw, out, counts):
        """Translate consecutive runs of the batch, counts[k] images by move k.

        The batch is a uniformly shuffled sample, so giving runs of it one
        translation each (with multinomial run lengths) is the same as drawing
        a translation per image, at the cost of a few contiguous copies.
        """
        size, cols = raw.shape[1], self.image_shape[1]
        out3 = out.reshape((len(out),) + self.image_shape)
        start = 0
        for (flat, dc), count in zip(self._moves, counts):
            if not count:
                continue
            o, r = out[start:start + count], raw[start:start + count]
            if flat >= 0:
                o[:, flat:] = r[:, :size - flat]
                o[:, :flat] = 0
            else:
                o[:, :size + flat] = r[:, -flat:]
                o[:, size + flat:] = 0
            if dc > 0:
                out3[start:start + count, :, :dc] = 0
            elif dc < 0:
                out3[start:start + count, :, cols + dc:] = 0
            start += count

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
        for idx, counts in self.plan():
            xb, yb = self._xbuf[:len(idx)], self._ybuf[:len(idx)]
            if self.shift:
                raw = self._raw[:len(idx)]
                take_rows(self.x, idx, raw)
                self._shift_into(raw, xb, counts)
            else:
                take_rows(self.x, idx, xb)
            # mode="clip" lets np.take write straight into `out` (mode="raise" buffers a copy)
            np.take(self.y, idx, axis=0, out=yb, mode="clip")
            yield xb, yb

    def plan(self):
        """One epoch of mini-batches as (row indices, translation run lengths
        or None), drawing the epoch's randomness as iteration does: what a
        data-parallel rank needs to gather only its part of each batch."""
        # restart from the identity each epoch: the shuffle then depends only on the RNG state
        np.copyto(self._index, self._order)
        if self.shuffle:
            self.rng.shuffle(self._index)
        b, n = self.batch_size, len(self.x)
        counts = None
        if self.shift:   # run lengths of each translation, per batch, drawn once an epoch
            counts = self.rng.multinomial(b, self._uniform, size=-(-n // b))
            if n % b:
                counts[-1] = self.rng.multinomial(n % b, self._uniform)
        stop = n - n % b if self.drop_last else n
        for start in range(0, stop, b):
            yield self._index[start:start + b], None if counts is None else counts[start // b]

    def get_state(self):
        """The shuffle RNG state as a JSON string (checkpointable without pickle)."""
        return json.dumps(self.rng.bit_generator.state)

    def set_state(self, state):
        self.rng.bit_generator.state = json.loads(state)

    def __repr__(self):
        kind = "full" if self.full else f"batch_size={self.batch_size}"
        return (f"Batches(n={len(self.x)}, {kind}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, shift={self.shift})")
