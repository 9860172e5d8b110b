/* Thread count shared by every kernel. Results never depend on it: kernels
 * split work into ranges whose boundaries do not move with the thread count,
 * or reduce in a fixed order. */
#include "gdfast.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int num_threads = 0; /* 0: not set yet, take OpenMP's default */

int gdfast_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int gdfast_get_num_threads(void) {
#ifdef _OPENMP
    if (num_threads <= 0) num_threads = omp_get_max_threads();
    return num_threads;
#else
    return 1;
#endif
}

void gdfast_set_num_threads(int n) { num_threads = n < 1 ? 1 : n; }

int gdfast_threads_for(gd_index work, gd_index grain) {
    int nt = gdfast_get_num_threads();
    if (grain < 1) grain = 1;
    gd_index useful = work / grain;
    if (useful < 1) return 1;
    return useful < nt ? (int)useful : nt;
}

/* On by default where the CPU has the mode, as TensorFlow/XLA do: nothing a
 * network learns lives below 1e-38, and Adam's decaying moments would
 * otherwise spend whole steps in microcode assists. */
#if defined(__x86_64__) || defined(_M_X64)
int gdfast_flush_denormal = 1;
#else
int gdfast_flush_denormal = 0;
#endif

int gdfast_set_flush_denormal(int on) {
#if defined(__x86_64__) || defined(_M_X64)
    gdfast_flush_denormal = on != 0;
    return 1;
#else
    (void)on;
    return 0;
#endif
}
