"""Test-session guard: with GDFAST_TEST_INSTALLED=1 (set by .ci/run and the
cibuildwheel config) the tests must exercise the installed gdfast, never the
source tree's gdfast/ that sits beside tests/. Without the variable, an
in-place developer build (`python setup.py build_ext --inplace`) is fine."""
import os
from pathlib import Path

import pytest

import gdfast

SOURCE_PACKAGE = (Path(__file__).resolve().parent.parent / "gdfast").resolve()
TEST_INSTALLED = os.environ.get("GDFAST_TEST_INSTALLED") == "1"


def pytest_configure(config):
    here = Path(gdfast.__file__).resolve().parent
    if TEST_INSTALLED and here == SOURCE_PACKAGE:
        raise pytest.UsageError(
            f"GDFAST_TEST_INSTALLED=1 but gdfast was imported from the source tree "
            f"({here}), not from the installed package: run pytest so that the "
            f"repository root is not on sys.path (plain `pytest`, not `python -m pytest`)")


def pytest_report_header(config):
    return f"gdfast {gdfast.__version__} from {Path(gdfast.__file__).parent}"
