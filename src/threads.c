/* Thread count shared by every kernel, and the parallel pass they all use.
 * Results never depend on either: kernels split work into chunks whose
 * arithmetic does not change with the thread that runs them, or reduce in a
 * fixed order. */
#include "gdfast.h"
#include <math.h>
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

/* The team guard. On cores shared with other busy processes a team of
 * threads can lose badly to one thread: a worker whose core is running
 * someone else starts its share a scheduler time slice late, and the caller
 * waits for it to join at the end of the pass (and, in libgomp, to dock
 * before the next pass can start). Measured on 2 cores with one busy
 * process: a 64x256x128 GEMM 7 ms on 2 threads, 0.12 ms on one. After every
 * pass the caller compares its time with what the pass would have taken
 * alone (all chunks at the pace of the fastest thread) and keeps the net
 * time the team saved, capped at GD_GUARD_CREDIT. When the team has lost
 * more than that, passes run on the caller's thread alone for GD_GUARD_MIN.
 * A team that loses again within GD_GUARD_TREND of its return is up against
 * a busy machine: it waits four times as long at each such loss, up to
 * GD_GUARD_MAX (each try on a busy machine costs a slow pass, tens of ms at
 * worst). A loss later than that is a one-off (on a VM, the host taking a
 * vCPU away for a millisecond) and gets the shortest wait again.
 * The first pass after a solo period (and the first of all) pays to wake
 * sleeping workers (measured on a 2-vCPU VM: 0.8-1.6 ms); losses up to
 * GD_GUARD_WAKE on such a try are forgiven, or every try would count as a
 * loss and a quiet machine would stay alone. Waking a team the program
 * itself left idle counts in full: forgiven, a program calling NumPy between
 * bursts of our calls could lose up to 2 ms a burst on a busy machine and
 * never leave the team (replayed in tests/test_threads.py).
 * Which thread runs a chunk never changes its bits, so neither does the
 * guard. */
#define GD_GUARD_CREDIT 100e-6
#define GD_GUARD_MIN 0.01
#define GD_GUARD_MAX 2.0
#define GD_GUARD_TREND 0.1
#define GD_GUARD_WAKE 2e-3
/* Threads whose pace a pass measures (the first ones of a larger team). */
#define GD_GUARD_THREADS 16

void gdfast_guard_init(gd_guard *g) {
    g->solo_until = g->credit = 0.0;
    g->last_end = -1.0; /* before any time: the first pass is a try */
    g->backoff = GD_GUARD_MIN;
    g->trips = 0;
}

int gdfast_guard_threads(const gd_guard *g, double now, int nt) {
    return now < g->solo_until ? 1 : nt;
}

void gdfast_guard_record(gd_guard *g, double now, double team_s, double alone_s) {
    double loss = team_s - alone_s;
    int trying = g->last_end < g->solo_until; /* no team pass since the solo period */
    g->last_end = now;
    if (trying && loss <= GD_GUARD_WAKE) return;
    double credit = g->credit - loss;
    g->credit = credit < GD_GUARD_CREDIT ? credit : GD_GUARD_CREDIT;
    if (g->credit >= -GD_GUARD_CREDIT) return;
    if (now - g->solo_until > GD_GUARD_TREND) g->backoff = GD_GUARD_MIN;
    g->solo_until = now + g->backoff;
    g->backoff = 4 * g->backoff < GD_GUARD_MAX ? 4 * g->backoff : GD_GUARD_MAX;
    g->credit = 0.0;
    g->trips++;
}

#ifdef _OPENMP
static gd_guard guard = {0.0, GD_GUARD_MIN, 0.0, -1.0, 0}; /* as gdfast_guard_init */

#if defined(_MSC_VER)
#include <intrin.h>
static gd_index take_chunk(volatile gd_index *next) { return _InterlockedExchangeAdd64(next, 1); }
static gd_index peek_chunk(volatile gd_index *next) { return *next; }
#define GD_ALIGN64 __declspec(align(64))
#else
static gd_index take_chunk(gd_index *next) { return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED); }
static gd_index peek_chunk(gd_index *next) { return __atomic_load_n(next, __ATOMIC_RELAXED); }
#define GD_ALIGN64 __attribute__((aligned(64)))
#endif

/* A thread's own run of a pass's chunks: the next one to take and the end,
 * a cache line each. */
typedef struct GD_ALIGN64 {
    gd_index next, end;
} chunk_run;
#define GD_RUNS 64

/* The next chunk of run r, or -1 when the run is used up. */
static gd_index take_from(chunk_run *r) {
    if (peek_chunk(&r->next) >= r->end) return -1; /* no write to a spent run */
    gd_index c = take_chunk(&r->next);
    return c < r->end ? c : -1;
}
#endif

long long gdfast_guard_trips(void) {
#ifdef _OPENMP
    long long trips;
#pragma omp critical(gdfast_guard)
    trips = guard.trips;
    return trips;
#else
    return 0;
#endif
}

int gdfast_parallel(int nt, gd_index chunks, gd_chunk_fn body, void *ctx) {
    if (chunks <= 0) return 0;
#ifdef _OPENMP
    double t0 = omp_get_wtime();
    if (nt > chunks) nt = (int)chunks;
#pragma omp critical(gdfast_guard)
    nt = gdfast_guard_threads(&guard, t0, nt);
    if (nt > 1) {
        /* Each thread takes the chunks of its own run, one at a time, then
         * those left in the others' runs, so a late thread's share is done
         * by the others. The runs are the same from pass to pass: a thread
         * finds in its cache what it wrote in the last pass over the same
         * data (a weight gradient, then its update). Taken from one shared
         * counter, the chunks moved from core to core between passes
         * (batch-32 step of 784-256-128-10 on a 2-vCPU Zen 4 VM: its weight
         * gradient 95 us, now 69; the step 262-282 us, now 235-257). */
        chunk_run runs[GD_RUNS];
        const int nruns = nt < GD_RUNS ? nt : GD_RUNS;
        for (int r = 0; r < nruns; r++) {
            runs[r].next = chunks * r / nruns;
            runs[r].end = chunks * (r + 1) / nruns;
        }
        double per_chunk[GD_GUARD_THREADS];
        int status = 0;
        for (int t = 0; t < GD_GUARD_THREADS; t++) per_chunk[t] = HUGE_VAL;
#pragma omp parallel num_threads(nt) reduction(| : status)
        {
            unsigned fp = gd_fpmode_enter();
            double start = omp_get_wtime();
            gd_index done = 0;
            int t = omp_get_thread_num();
            for (int q = 0; q < nruns; q++)
                for (gd_index c; (c = take_from(&runs[(t + q) % nruns])) >= 0; done++)
                    status |= body(ctx, c, c + 1);
            if (done > 0 && t < GD_GUARD_THREADS) per_chunk[t] = (omp_get_wtime() - start) / done;
            gd_fpmode_leave(fp);
        }
        double t2 = omp_get_wtime(), fastest = HUGE_VAL;
        for (int t = 0; t < GD_GUARD_THREADS; t++) fastest = per_chunk[t] < fastest ? per_chunk[t] : fastest;
        /* Alone, the caller would have done every chunk at the pace of the
         * fastest thread (a thread preempted mid-pass looks slow), and paid
         * nothing to start or join a team. */
        if (fastest < HUGE_VAL) {
#pragma omp critical(gdfast_guard)
            gdfast_guard_record(&guard, t2, t2 - t0, fastest * (double)chunks);
        }
        return status;
    }
#endif
    (void)nt;
    unsigned fp = gd_fpmode_enter();
    int status = body(ctx, 0, chunks);
    gd_fpmode_leave(fp);
    return status;
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
