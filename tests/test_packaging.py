"""What a user gets from `pip install gdfast`: the compiled module, the build
description, the SIMD override, and one version number everywhere."""
import importlib
import importlib.machinery
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gdfast
from conftest import SOURCE_PACKAGE, TEST_INSTALLED, child_python

PACKAGE_DIR = Path(gdfast.__file__).resolve().parent


def run_python(code, **env):
    """Run `code` in a fresh interpreter that imports this same gdfast."""
    full_env, cwd = child_python(**env)
    if "GDFAST_SIMD" not in env:
        full_env.pop("GDFAST_SIMD", None)
    return subprocess.run([sys.executable, "-c", code], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def numpy_cpu_features():
    """NumPy's own run-time CPU detection: an oracle independent of gdfast's."""
    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return importlib.import_module(name).__cpu_features__
        except (ImportError, AttributeError):
            continue
    return None


def numpy_finds(*names):
    """Whether NumPy's detection finds every CPU feature in `names` (False off
    x86-64); skips the test where NumPy cannot tell."""
    features = numpy_cpu_features()
    if features is None:
        pytest.skip("this NumPy does not report CPU features")
    hidden = set(os.environ.get("NPY_DISABLE_CPU_FEATURES", "").replace(",", " ").split())
    if hidden & set(names):  # NumPy then reports them absent, whatever the CPU has
        pytest.skip(f"NPY_DISABLE_CPU_FEATURES hides {sorted(hidden & set(names))} from NumPy")
    x86_64 = platform.machine().lower() in ("x86_64", "amd64")
    return x86_64 and all(features.get(name, False) for name in names)


def test_extension_is_compiled_and_inside_the_package():
    ext = Path(gdfast._kernels.__file__)
    assert ext.parent.resolve() == PACKAGE_DIR
    assert any(ext.name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES), ext.name


def test_build_info_values_are_sane():
    info = gdfast.build_info()
    assert set(info) == {"version", "compiler", "openmp", "simd", "simd_available", "threads",
                         "flush_denormal"}
    x86_64 = platform.machine().lower() in ("x86_64", "amd64")
    assert info["flush_denormal"] is x86_64  # flushed by default where the CPU can
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", info["version"]), info["version"]
    assert info["compiler"] and info["compiler"] != "unknown"
    assert isinstance(info["openmp"], bool)
    assert info["simd_available"][0] == "scalar"
    assert info["simd"] in info["simd_available"]
    assert isinstance(info["threads"], int) and info["threads"] >= 1
    if not info["openmp"]:
        assert info["threads"] == 1


def test_avx2_is_offered_exactly_when_the_cpu_has_it():
    cpu_has = numpy_finds("AVX2", "FMA3")
    info = gdfast.build_info()
    assert ("avx2" in info["simd_available"]) == cpu_has, (numpy_cpu_features(), info)
    if not os.environ.get("GDFAST_SIMD"):  # the default is the best path
        assert info["simd"] == info["simd_available"][-1]


def test_avx512_is_offered_exactly_when_the_cpu_has_it():
    cpu_has = numpy_finds("AVX2", "FMA3", "AVX512F", "AVX512DQ", "AVX512VL")
    info = gdfast.build_info()
    assert ("avx512" in info["simd_available"]) == cpu_has, (numpy_cpu_features(), info)


@pytest.mark.parametrize("path", ["scalar", "avx2", "avx512"])
def test_gdfast_simd_env_forces_a_path(path):
    if path not in gdfast.build_info()["simd_available"]:
        pytest.skip(f"{path} is not available on this CPU")
    out = run_python("import gdfast; print(gdfast.build_info()['simd'])", GDFAST_SIMD=path.upper())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == path


def test_invalid_gdfast_simd_fails_import_with_a_clear_message():
    out = run_python("import gdfast", GDFAST_SIMD="sse9")
    assert out.returncode != 0
    assert "GDFAST_SIMD='sse9'" in out.stderr and "unknown SIMD path" in out.stderr, out.stderr


def test_subprocess_sees_the_same_package():
    out = run_python("import gdfast; print(gdfast.__file__)")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve().parent == PACKAGE_DIR


def test_version_is_single_sourced():
    from gdfast._version import __version__
    assert gdfast.__version__ == __version__
    try:
        installed = importlib.metadata.version("gdfast")
    except importlib.metadata.PackageNotFoundError:
        if TEST_INSTALLED:
            raise
        pytest.skip("gdfast is not installed (in-place developer build)")
    if PACKAGE_DIR == SOURCE_PACKAGE and not TEST_INSTALLED:
        # An in-place build may sit beside an older installed copy.
        pytest.skip("testing the source tree; installed metadata may be stale")
    assert installed == gdfast.__version__


@pytest.mark.skipif(not TEST_INSTALLED, reason="checks an installed package against its source tree")
def test_installed_package_has_every_module_of_the_source_tree():
    assert PACKAGE_DIR != SOURCE_PACKAGE
    wanted = {p.relative_to(SOURCE_PACKAGE) for p in SOURCE_PACKAGE.rglob("*.py")}
    missing = sorted(str(p) for p in wanted if not (PACKAGE_DIR / p).is_file())
    assert not missing, f"modules missing from the installed package: {missing}"


@pytest.mark.skipif(not TEST_INSTALLED, reason="reads the installed distribution's metadata")
def test_installed_metadata_is_complete():
    meta = importlib.metadata.metadata("gdfast")
    assert meta["Name"] == "gdfast" and meta["Version"] == gdfast.__version__
    assert meta["License"] == "MIT" or meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.9"
    assert "# gdfast" in meta["Description"]  # the README is the long description
    assert any(url.startswith("Source, https://") for url in meta.get_all("Project-URL"))
    assert {"test", "plot", "bench"} <= set(meta.get_all("Provides-Extra"))
    eps = importlib.metadata.distribution("gdfast").entry_points  # 3.9 has no group= filter
    scripts = {ep.name: ep.value for ep in eps if ep.group == "console_scripts"}
    assert scripts.get("gdfast") == "gdfast.cli:main"


def test_unbuilt_source_tree_says_how_to_build(tmp_path):
    """A copy of the package without the compiled module: a clear ImportError."""
    import shutil
    shutil.copytree(PACKAGE_DIR, tmp_path / "gdfast",
                    ignore=lambda d, names: [n for n in names if n.startswith("_kernels") and
                                             not n.endswith((".pyx", ".pxd"))] + ["__pycache__"])
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", "import gdfast"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: gdfast's C extension (gdfast._kernels) is not built"), last
    assert "pip install ." in last and "python setup.py build_ext --inplace" in last
    assert "circular import" not in last
