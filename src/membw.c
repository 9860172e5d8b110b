/* Memory bandwidth probes: the ceiling an optimizer step can reach. One pass
 * each, split over threads exactly like an optimizer step (optim.c). */
#include "optim.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define GD_MEMBW_MAX_STREAMS 16

static void range_of(gd_index n, gd_index *lo, gd_index *hi) {
    *lo = 0;
    *hi = n;
#ifdef _OPENMP
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    gd_index chunk = ((n + nt - 1) / nt + GD_SPLIT - 1) / GD_SPLIT * GD_SPLIT;
    *lo = (gd_index)t * chunk < n ? (gd_index)t * chunk : n;
    *hi = *lo + chunk < n ? *lo + chunk : n;
#endif
}

void gdfast_rmw_pass(float **rw, int nrw, const float **ro, int nro, gd_index n) {
    if (nrw > GD_MEMBW_MAX_STREAMS || nro > GD_MEMBW_MAX_STREAMS) return;
    int nt = gdfast_threads_for(n, 65536);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        gd_index lo, hi;
        float *w[GD_MEMBW_MAX_STREAMS];
        const float *r[GD_MEMBW_MAX_STREAMS];
        range_of(n, &lo, &hi);
        for (int k = 0; k < nrw; k++) w[k] = rw[k] + lo;
        for (int k = 0; k < nro; k++) r[k] = ro[k] + lo;
        gd_optim_k.rmw(w, nrw, r, nro, hi - lo);
    }
    (void)nt;
}

void gdfast_triad_pass(float *a, const float *b, const float *c, float s, gd_index n) {
    int nt = gdfast_threads_for(n, 65536);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        gd_index lo, hi;
        range_of(n, &lo, &hi);
        gd_optim_k.triad(a + lo, b + lo, c + lo, s, hi - lo);
    }
    (void)nt;
}
