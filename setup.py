"""Build of gdfast's one extension module, gdfast._kernels.

Portable by construction: the C kernels for each instruction set live in
src/*_<isa>.c and only those files get that instruction set's flags; the
run-time dispatch (src/dispatch.c) picks a path for the CPU it finds. No
-march=native. OpenMP is used when the compiler supports it.

Environment knobs (for developers; a plain `pip install .` needs none):
  GDFAST_OPENMP=0              build without OpenMP
  GDFAST_OPENMP=1              require OpenMP: fail rather than build without (wheels)
  GDFAST_LIBOMP_PREFIX=dir     macOS: where libomp lives (default: `brew --prefix libomp`)
  GDFAST_SANITIZE=address,undefined   build with sanitizers (see RELIABILITY.md)
"""
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64", "x64")

# Flags for the files of each instruction set, by compiler family.
ISA_FLAGS = {
    "avx2": {"unix": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]},
    # GCC may otherwise keep loops at 256 bits on AVX-512 targets.
    "avx512": {"unix": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl",
                        "-mprefer-vector-width=512"], "msvc": ["/arch:AVX512"]},
}


def isa_of(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    suffix = stem.rsplit("_", 1)[-1]
    return suffix if suffix in ISA_FLAGS else None


def compiler_family(compiler):
    return "msvc" if compiler.compiler_type == "msvc" else "unix"


def openmp_flags(compiler):
    """(compile, link) flags for OpenMP, or None when the compiler lacks it."""
    mode = os.environ.get("GDFAST_OPENMP", "auto")
    if mode == "0":
        return None
    if compiler_family(compiler) == "msvc":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        # Apple clang has no OpenMP runtime of its own: use libomp (Homebrew's
        # is keg-only, so its headers and library need explicit paths).
        prefix = _libomp_prefix()
        inc, lib = ([f"-I{prefix}/include"], [f"-L{prefix}/lib"]) if prefix else ([], [])
        candidates = [(["-Xpreprocessor", "-fopenmp"] + inc, lib + ["-lomp"]),
                      (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for cflags, lflags in candidates:
        if _compiles_and_links(compiler, cflags, lflags):
            return cflags, lflags
    if mode == "1":
        sys.exit("gdfast build: GDFAST_OPENMP=1 but the compiler cannot build with OpenMP")
    return None


def _libomp_prefix():
    prefix = os.environ.get("GDFAST_LIBOMP_PREFIX")
    if not prefix and shutil.which("brew"):
        out = subprocess.run(["brew", "--prefix", "libomp"], capture_output=True, text=True)
        prefix = out.stdout.strip() if out.returncode == 0 else None
    return prefix if prefix and os.path.isdir(prefix) else None


def _compiles_and_links(compiler, cflags, lflags):
    code = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp_check.c")
        with open(src, "w") as f:
            f.write(code)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
        compiler.link_executable(objs, "omp_check", output_dir=tmp, extra_postargs=lflags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        family = compiler_family(self.compiler)
        if family == "msvc":
            base = ["/O2", "/fp:precise"]
        else:
            # fp-contract=off: vector and scalar code round identically, so
            # results do not depend on the SIMD path's loop peeling or threads.
            base = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-std=c11"]
            sanitize = os.environ.get("GDFAST_SANITIZE")
            if sanitize:
                base = ["-O1", "-g", "-fno-omit-frame-pointer", "-ffp-contract=off",
                        "-std=c11", f"-fsanitize={sanitize}"]
                for ext in self.extensions:
                    ext.extra_link_args.append(f"-fsanitize={sanitize}")
        omp = openmp_flags(self.compiler)
        print(f"gdfast build: OpenMP {'on' if omp else 'off'}")
        for ext in self.extensions:
            ext.extra_compile_args[:0] = base + (omp[0] if omp else [])
            if omp:
                ext.extra_link_args += omp[1]
        super().build_extensions()

    def build_extension(self, ext):
        # Compile each instruction set's files with its own flags into objects
        # linked beside the rest; everything else gets only the base flags.
        family = compiler_family(self.compiler)
        isa_sources = [s for s in ext.sources if isa_of(s)]
        ext.sources = [s for s in ext.sources if not isa_of(s)]
        for src in isa_sources:
            flags = ext.extra_compile_args + ISA_FLAGS[isa_of(src)][family]
            ext.extra_objects += self.compiler.compile(
                [src], output_dir=self.build_temp, macros=ext.define_macros,
                include_dirs=ext.include_dirs, extra_postargs=flags)
        super().build_extension(ext)


def kernel_extension():
    sources = ["gdfast/_kernels.pyx"]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    for src in sorted(glob("src/*.c")):
        isa = isa_of(src)
        if isa and not IS_X86_64:
            continue
        sources.append(src)
    if IS_X86_64:
        macros += [("GDFAST_BUILD_AVX2", "1"), ("GDFAST_BUILD_AVX512", "1")]
    return Extension(
        "gdfast._kernels",
        sources=sources,
        include_dirs=["src", np.get_include()],
        define_macros=macros,
        depends=glob("src/*.h") + glob("src/*.c") + glob("src/*.inc") + glob("gdfast/*.pxi") + glob("gdfast/*.pxd"),
    )


setup(
    ext_modules=cythonize(
        [kernel_extension()],
        compiler_directives={"language_level": 3, "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
    ),
    cmdclass={"build_ext": BuildExt},
)
