"""Bad input refused with clear errors and no state change (optimizers, schedules,
checkpoints, params, datasets, evaluate)."""
import copy
import json

import numpy as np
import pytest

import gdfast
from gdfast import optim, schedules
from gdfast.datasets import _validation_count
from gdfast.params import Params


def test_params_total_size_overflow_is_refused():
    with pytest.raises(ValueError, match="'mid'"):
        Params({"a": (3,), "mid": (2**32 + 1, 2**32 - 1), "b": (3,)})
    with pytest.raises(ValueError, match="'c'"):
        Params({"a": (2**60,), "b": (2**60 - 2**10,), "c": (2**60,)})


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_validation_count_refuses_non_finite(bad):
    with pytest.raises(ValueError, match="validation"):
        _validation_count(bad, 100)
