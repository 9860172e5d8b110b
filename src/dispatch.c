/* Run-time instruction-set detection: CPUID says the CPU has a feature,
 * XGETBV says the OS saves the registers it needs. GDFAST_SIMD (read by the
 * Python layer) may force a weaker path, never a stronger one. */
#include "gdfast.h"

#if defined(__x86_64__) || defined(_M_X64)
#define GDFAST_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#include <immintrin.h>
static void cpuid(int leaf, int sub, unsigned r[4]) {
    int out[4];
    __cpuidex(out, leaf, sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)out[i];
}
static unsigned long long xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static void cpuid(int leaf, int sub, unsigned r[4]) {
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

static int cpu_has_avx2_fma(void) {
    unsigned r[4];
    cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    cpuid(1, 0, r);
    int fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
    if (!(fma && osxsave && avx)) return 0;
    if ((xgetbv0() & 0x6) != 0x6) return 0; /* XMM and YMM state enabled by the OS */
    cpuid(7, 0, r);
    return (r[1] >> 5) & 1; /* AVX2 */
}

static int cpu_has_avx512(void) {
    if (!cpu_has_avx2_fma()) return 0;
    /* opmask, upper halves of ZMM0-15 and ZMM16-31 enabled by the OS */
    if ((xgetbv0() & 0xE6) != 0xE6) return 0;
    unsigned r[4];
    cpuid(7, 0, r);
    int f = (r[1] >> 16) & 1, dq = (r[1] >> 17) & 1, vl = (r[1] >> 31) & 1;
    return f && dq && vl;
}
#endif

static int active_isa = -1;

int gdfast_isa_supported(int isa) {
    switch (isa) {
    case GDFAST_ISA_SCALAR: return 1;
#if defined(GDFAST_X86) && defined(GDFAST_BUILD_AVX2)
    case GDFAST_ISA_AVX2: return cpu_has_avx2_fma();
#endif
#if defined(GDFAST_X86) && defined(GDFAST_BUILD_AVX512)
    case GDFAST_ISA_AVX512: return cpu_has_avx512();
#endif
    default: return 0;
    }
}

int gdfast_isa_best(void) {
    for (int isa = GDFAST_ISA_COUNT - 1; isa > 0; isa--)
        if (gdfast_isa_supported(isa)) return isa;
    return GDFAST_ISA_SCALAR;
}

int gdfast_isa_active(void) { return active_isa; }

const char *gdfast_isa_name(int isa) {
    switch (isa) {
    case GDFAST_ISA_SCALAR: return "scalar";
    case GDFAST_ISA_AVX2: return "avx2";
    case GDFAST_ISA_AVX512: return "avx512";
    default: return "unknown";
    }
}

int gdfast_select_isa(int isa) {
    if (isa < 0 || isa >= GDFAST_ISA_COUNT || !gdfast_isa_supported(isa)) return -1;
    gdfast_optim_select(isa);
    gdfast_gemm_select(isa);
    active_isa = isa;
    return 0;
}
