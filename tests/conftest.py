"""Test-session guard: with GDFAST_TEST_INSTALLED=1 (set by .ci/run and the
cibuildwheel config) the tests must exercise the installed gdfast, never the
source tree's gdfast/ that sits beside tests/. Without the variable, an
in-place developer build (`python setup.py build_ext --inplace`) is fine."""
import os
from pathlib import Path

import numpy as np
import pytest

import gdfast

SOURCE_PACKAGE = (Path(__file__).resolve().parent.parent / "gdfast").resolve()
# Where the gdfast under test lives: site-packages, or the repository for an
# in-place build. Child interpreters import it from here.
PACKAGE_PARENT = Path(gdfast.__file__).resolve().parent.parent
TEST_INSTALLED = os.environ.get("GDFAST_TEST_INSTALLED") == "1"


def pytest_configure(config):
    here = Path(gdfast.__file__).resolve().parent
    if TEST_INSTALLED and here == SOURCE_PACKAGE:
        raise pytest.UsageError(
            f"GDFAST_TEST_INSTALLED=1 but gdfast was imported from the source tree "
            f"({here}), not from the installed package: run pytest so that the "
            f"repository root is not on sys.path (plain `pytest`, not `python -m pytest`)")


def child_python(**env):
    """(environment, working directory) for a child `python -c`/`-m` that must
    import this same gdfast: both put the working directory first on sys.path,
    where the repository's uncompiled gdfast/ would shadow an installed one."""
    full_env = dict(os.environ, **env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_PARENT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return full_env, str(PACKAGE_PARENT)


def pytest_report_header(config):
    return f"gdfast {gdfast.__version__} from {Path(gdfast.__file__).parent}"


@pytest.fixture(params=gdfast.build_info()["simd_available"])
def simd(request):
    """Run the test once on every SIMD path this CPU has, then restore the default."""
    before = gdfast.build_info()["simd"]
    gdfast.set_simd(request.param)
    yield request.param
    gdfast.set_simd(before)


def assert_same_state(opt_a, opt_b):
    """Every state slot of two optimizers holds the same bits."""
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for key in sb:
        for slot in sb[key]:
            np.testing.assert_array_equal(sa[key][slot], sb[key][slot], err_msg=key + slot)
