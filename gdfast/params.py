"""The parameter arena: all of a model's tensors in one float32 buffer.

Every tensor the user sees is a NumPy view into ``Params.data`` and its
gradient a view into the twin buffer ``Params.grad`` with the same layout, so
one optimizer kernel call updates every parameter in one pass over memory.
"""
import math
from collections import OrderedDict

import numpy as np

_ALIGN_BYTES = 64  # a cache line: SIMD loads never straddle one at the start
# the most float32 elements one buffer can address (its byte size fits in an intp)
_MAX_FLOATS = np.iinfo(np.intp).max // 4 - _ALIGN_BYTES


def _aligned_empty(n):
    """A zeroed float32 array of n elements whose data starts on a cache line."""
    raw = np.zeros(n + _ALIGN_BYTES // 4, dtype=np.float32)
    skip = (-raw.ctypes.data % _ALIGN_BYTES) // 4
    return raw[skip:skip + n]


class Params:
    """Named float32 tensors laid end to end in one buffer, with gradients.

    >>> p = Params({"w": (3, 2), "b": (2,)})
    >>> p["w"].shape, p.data.size
    ((3, 2), 8)
    """

    def __init__(self, shapes):
        if not shapes:
            raise ValueError("shapes must name at least one tensor, got none")
        self._slices = OrderedDict()
        offset = 0
        for name, shape in dict(shapes).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"tensor names must be non-empty strings, got {name!r}")
            shape = (shape,) if np.isscalar(shape) else tuple(shape)
            if any(int(d) != d or d < 0 for d in shape):
                raise ValueError(f"shape of {name!r} must be non-negative integers, got {shape}")
            shape = tuple(int(d) for d in shape)
            size = math.prod(shape)  # Python ints: np.prod would wrap past 2**63
            if offset + size > _MAX_FLOATS:
                raise ValueError(f"tensor {name!r} of shape {shape} ({size} floats) brings the "
                                 f"arena to {offset + size} floats, more than {_MAX_FLOATS}")
            self._slices[name] = (offset, shape)
            offset += size
        self.data = _aligned_empty(offset)
        self.grad = _aligned_empty(offset)

    @property
    def names(self):
        return list(self._slices)

    @property
    def size(self):
        return self.data.size

    def shape(self, name):
        return self._slices[name][1]

    def offset(self, name):
        return self._slices[name][0]

    def _view(self, buf, name):
        try:
            offset, shape = self._slices[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r}; have {self.names}") from None
        size = math.prod(shape)
        return buf[offset:offset + size].reshape(shape)

    def __getitem__(self, name):
        """The tensor `name`: a view into `data`, so writes go to the arena."""
        return self._view(self.data, name)

    def __setitem__(self, name, value):
        self[name][...] = value

    def grad_of(self, name):
        """The gradient of `name`: a view into `grad`."""
        return self._view(self.grad, name)

    def __iter__(self):
        return iter(self._slices)

    def __len__(self):
        return len(self._slices)

    def __contains__(self, name):
        return name in self._slices

    def items(self):
        return [(name, self[name]) for name in self._slices]

    def zero_grad(self):
        self.grad.fill(0.0)

    def copy_from(self, other):
        """Copy the values of another Params with the same layout."""
        if self.layout() != other.layout():
            raise ValueError(f"layouts differ: {self.layout()} vs {other.layout()}")
        self.data[...] = other.data

    def layout(self):
        """[(name, shape), ...] in buffer order: what a checkpoint must match."""
        return [(name, shape) for name, (_, shape) in self._slices.items()]

    def __repr__(self):
        inner = ", ".join(f"{n}={s}" for n, s in self.layout())
        return f"Params({inner}; {self.size} floats)"
