"""Shared fixtures for the pytest-benchmark suite (`pytest bench/ --benchmark-only`).

The cases themselves come from gdfast.bench, so `gdfast bench` and this suite
measure the same things."""
import pytest

import gdfast
from gdfast.bench import blas_threads


@pytest.fixture(params=sorted({1, gdfast.get_num_threads()}), ids=lambda n: f"{n}t")
def threads(request):
    """Run gdfast, NumPy's BLAS and torch (if present) at the same thread count."""
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(request.param)
    limits = blas_threads(request.param)
    try:
        import torch
        torch.set_num_threads(request.param)
    except ImportError:
        pass
    yield request.param
    gdfast.set_num_threads(before)
    if limits is not None:
        limits.restore_original_limits()
