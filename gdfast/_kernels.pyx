# cython: language_level=3
"""gdfast's one compiled module: checks buffers, releases the GIL, calls C.

The pieces are kept in include files by topic (_checks.pxi, _optim.pxi,
_gemm.pxi, _mlp.pxi, _lbfgs.pxi, _rows.pxi); they compile into this single extension so they share
one dispatch table and one thread setting.
"""
cimport numpy as cnp

cnp.import_array()

cdef extern from "gdfast.h" nogil:
    ctypedef long long gd_index
    int GDFAST_ISA_COUNT
    int gdfast_isa_supported(int isa)
    int gdfast_isa_best()
    int gdfast_isa_active()
    int gdfast_select_isa(int isa)
    const char *gdfast_isa_name(int isa)
    int gdfast_has_openmp()
    int gdfast_get_num_threads()
    void gdfast_set_num_threads(int n)
    int gdfast_flush_denormal
    int gdfast_set_flush_denormal(int on)
    ctypedef struct gd_guard:
        pass
    void gdfast_guard_init(gd_guard *g)
    int gdfast_guard_threads(const gd_guard *g, double now, int nt)
    void gdfast_guard_record(gd_guard *g, double now, double team_s, double alone_s)
    long long gdfast_guard_trips()

cdef extern from *:
    """
    #if defined(__clang__)
    #define GDFAST_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define GDFAST_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define GDFAST_COMPILER "msvc " GDFAST_STR(_MSC_VER)
    #else
    #define GDFAST_COMPILER "unknown"
    #endif
    #define GDFAST_STR2(x) #x
    #define GDFAST_STR(x) GDFAST_STR2(x)
    """
    const char *GDFAST_COMPILER

include "_checks.pxi"
include "_optim.pxi"
include "_gemm.pxi"
include "_mlp.pxi"
include "_bench.pxi"
include "_lbfgs.pxi"
include "_rows.pxi"


def simd_paths():
    """Names of the SIMD paths this build has and this CPU supports, weakest first."""
    return [gdfast_isa_name(i).decode() for i in range(GDFAST_ISA_COUNT)
            if gdfast_isa_supported(i)]


def simd_best():
    return gdfast_isa_name(gdfast_isa_best()).decode()


def simd_active():
    return gdfast_isa_name(gdfast_isa_active()).decode()


def set_simd(str name):
    """Route every kernel through one SIMD path ('scalar', 'avx2', ...)."""
    for i in range(GDFAST_ISA_COUNT):
        if gdfast_isa_name(i).decode() == name:
            if gdfast_select_isa(i) != 0:
                raise ValueError(f"SIMD path {name!r} is not supported here; "
                                 f"available: {simd_paths()}")
            return
    names = [gdfast_isa_name(i).decode() for i in range(GDFAST_ISA_COUNT)]
    raise ValueError(f"unknown SIMD path {name!r}; expected one of {names}")


def has_openmp():
    return bool(gdfast_has_openmp())


def compiler():
    return GDFAST_COMPILER.decode()


def get_num_threads():
    return gdfast_get_num_threads()


def _guard_trips():
    """How many times the team guard (src/threads.c) has run passes on one
    thread because a team was slower than one thread would have been."""
    return gdfast_guard_trips()


def _guard_replay(passes, int nt=2):
    """Replay passes (now, team_s, alone_s), in seconds, through a fresh team
    guard: the team size it allows at each pass's time; as gdfast_parallel, it
    records the passes it lets a team run."""
    cdef gd_guard g
    cdef int size
    gdfast_guard_init(&g)
    sizes = []
    for now, team_s, alone_s in passes:
        size = gdfast_guard_threads(&g, now, nt)
        sizes.append(size)
        if size > 1:
            gdfast_guard_record(&g, now, team_s, alone_s)
    return sizes


# More threads than any machine gdfast targets has cores: a larger n is a mistake.
MAX_THREADS = 4096


def set_num_threads(n):
    """Threads the kernels use (an integer in [1, MAX_THREADS])."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"n must be an integer number of threads, got {type(n).__name__}")
    n = n.__index__()
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n must be a positive number of threads, at most {MAX_THREADS}, got {n}")
    gdfast_set_num_threads(n)


def set_flush_denormal(bint enabled):
    """Run gdfast's kernels with subnormal floats flushed to zero (x86 FTZ|DAZ).

    On by default on x86-64 (as in TensorFlow/XLA; PyTorch keeps subnormals):
    set_flush_denormal(False), or GDFAST_FLUSH_DENORMAL=0 at import, gives
    IEEE subnormal arithmetic. Like torch.set_flush_denormal: returns True
    where supported (x86-64), False and changes nothing elsewhere. Only
    gdfast's kernels and their threads see the mode; the caller's
    floating-point state is restored."""
    return bool(gdfast_set_flush_denormal(enabled))


def get_flush_denormal():
    return bool(gdfast_flush_denormal)
