/* gdfast: shared definitions for the C kernels.
 *
 * Every instruction set's kernels are compiled in their own files with their
 * own flags (optim_avx2.c, gemm_avx2.c, ...); nothing else assumes the CPU.
 * gdfast_select_isa() points each kernel table at one instruction set's
 * implementations; it runs once at import and again when tests force a path.
 */
#ifndef GDFAST_H
#define GDFAST_H

#include <stddef.h>
#include <stdint.h>

/* Signed 64-bit element counts and offsets: buffers over 2^31 elements work. */
typedef int64_t gd_index;

enum {
    GDFAST_ISA_SCALAR = 0, /* portable C, any CPU */
    GDFAST_ISA_AVX2 = 1,   /* x86-64 with AVX2 + FMA, OS saves YMM state */
    GDFAST_ISA_AVX512 = 2, /* AVX2 + FMA + AVX-512 F/DQ/VL, OS saves ZMM and mask state */
    GDFAST_ISA_COUNT
};

/* Run-time CPU dispatch (dispatch.c). */
int gdfast_isa_supported(int isa); /* compiled in, CPU has it and OS enables it */
int gdfast_isa_best(void);
int gdfast_isa_active(void);
int gdfast_select_isa(int isa);    /* 0 on success, -1 if not supported */
const char *gdfast_isa_name(int isa);

/* Each kernel family fills its table for the chosen ISA (in its own .c file). */
void gdfast_optim_select(int isa);
void gdfast_gemm_select(int isa);

/* Threads (threads.c). OpenMP is optional: without it everything runs on one. */
int gdfast_has_openmp(void);
int gdfast_get_num_threads(void);
void gdfast_set_num_threads(int n);
/* Threads worth using for `work` units when each thread should get at least
 * `grain` of them: small jobs stay on one thread so start-up never dominates. */
int gdfast_threads_for(gd_index work, gd_index grain);

/* One parallel pass over `chunks` independent chunks on up to nt threads:
 * body(ctx, lo, hi) does chunks [lo, hi) and returns 0 (or error bits, ORed
 * into the result). Threads take chunks one at a time, in any order; on one
 * thread body gets all of them in one call, so a chunk's result must not
 * depend on how chunks are grouped or which thread runs them. Every thread
 * runs in the flush-denormal mode. The team guard (threads.c) runs the pass
 * on the caller's thread alone while a team has lately been slower than one
 * thread would be (cores busy with other processes). */
typedef int (*gd_chunk_fn)(void *ctx, gd_index lo, gd_index hi);
int gdfast_parallel(int nt, gd_index chunks, gd_chunk_fn body, void *ctx);

/* The guard's state and rules, apart from the clock so tests can replay
 * histories: `threads` is the team size allowed at time `now` (seconds);
 * `record` takes a pass that ran `team_s` on a team and would have taken
 * `alone_s` on the caller's thread. */
typedef struct {
    double solo_until, backoff, credit;
    double last_end; /* when the last team pass ended */
    long long trips; /* times the guard shrank the team */
} gd_guard;
void gdfast_guard_init(gd_guard *g);
int gdfast_guard_threads(const gd_guard *g, double now, int nt);
void gdfast_guard_record(gd_guard *g, double now, double team_s, double alone_s);
long long gdfast_guard_trips(void);

/* Flush-to-zero for subnormals (threads.c), on by default on x86-64. Decaying Adam
 * moments pass through the subnormal range, where x86 arithmetic takes
 * microcode assists. When on, every kernel and each thread of its parallel
 * regions runs with MXCSR's FTZ|DAZ bits set, and puts the caller's bits back
 * on the way out: enter/leave pair around every serial path and inside every
 * parallel region (MXCSR is per thread). set returns 0 where unsupported. */
extern int gdfast_flush_denormal;
int gdfast_set_flush_denormal(int on);

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define GD_FTZ_DAZ 0x8040u /* MXCSR bit 15 flush-to-zero, bit 6 denormals-are-zero */
static inline unsigned gd_fpmode_enter(void) {
    unsigned csr = _mm_getcsr();
    if (gdfast_flush_denormal && (csr & GD_FTZ_DAZ) != GD_FTZ_DAZ) _mm_setcsr(csr | GD_FTZ_DAZ);
    return csr & GD_FTZ_DAZ;
}
/* Restores only the mode bits: exception flags the kernel raised stay raised. */
static inline void gd_fpmode_leave(unsigned saved) {
    unsigned csr = _mm_getcsr();
    if ((csr & GD_FTZ_DAZ) != saved) _mm_setcsr((csr & ~GD_FTZ_DAZ) | saved);
}
#else
static inline unsigned gd_fpmode_enter(void) { return 0; }
static inline void gd_fpmode_leave(unsigned saved) { (void)saved; }
#endif

#endif
