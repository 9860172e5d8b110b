/* Gathering the rows of a mini-batch: np.take copies one row after another
 * on one thread and waits on memory at the start of every row (the rows of
 * a shuffled data set are far apart): 7.5-13 GB/s for 200 MNIST-sized rows
 * of a 60k set, against 19 GB/s here on 1 thread and 24 on 2 (34 and 26 us a
 * batch). Here the threads copy disjoint rows while asking for the row after
 * next, so its first misses overlap the current copy. Any split gives the
 * same bytes. */
#include <string.h>
#include "rows.h"

/* Bytes a thread should copy at least, and chunks per thread. */
#define GD_TAKE_GRAIN ((gd_index)128 * 1024)
#define GD_TAKE_CHUNKS 4
/* Rows ahead that are prefetched, and how much of each. */
#define GD_TAKE_AHEAD 2
#define GD_TAKE_PREFETCH_BYTES 4096

#if defined(__GNUC__) || defined(__clang__)
#define GD_PREFETCH(p) __builtin_prefetch((p), 0, 0)
#else
#define GD_PREFETCH(p) ((void)(p))
#endif

typedef struct {
    const char *src;
    char *dst;
    gd_index row_bytes, n, chunks;
    const int64_t *idx;
} take_pass;

static int take_chunks(void *ctx, gd_index c0, gd_index c1) {
    const take_pass *t = ctx;
    gd_index r0 = t->n * c0 / t->chunks, r1 = t->n * c1 / t->chunks;
    gd_index ahead = t->row_bytes < GD_TAKE_PREFETCH_BYTES ? t->row_bytes : GD_TAKE_PREFETCH_BYTES;
    for (gd_index r = r0; r < r1; r++) {
        if (r + GD_TAKE_AHEAD < r1) {
            const char *next = t->src + t->idx[r + GD_TAKE_AHEAD] * t->row_bytes;
            for (gd_index b = 0; b < ahead; b += 64) GD_PREFETCH(next + b);
        }
        memcpy(t->dst + r * t->row_bytes, t->src + t->idx[r] * t->row_bytes,
               (size_t)t->row_bytes);
    }
    return 0;
}

gd_index gdfast_take_rows(const void *src, gd_index rows, gd_index row_bytes,
                          const int64_t *idx, gd_index n, void *dst) {
    for (gd_index i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rows) return -1 - i;
    if (n == 0 || row_bytes == 0) return 0;
    int nt = gdfast_threads_for(n * row_bytes, GD_TAKE_GRAIN);
    gd_index chunks = (gd_index)nt * GD_TAKE_CHUNKS < n ? (gd_index)nt * GD_TAKE_CHUNKS : n;
    take_pass t = {src, dst, row_bytes, n, chunks, idx};
    gdfast_parallel(nt, chunks, take_chunks, &t);
    return 0;
}
