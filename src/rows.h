/* Mini-batches gathered from a data set's rows (rows.c). */
#ifndef GDFAST_ROWS_H
#define GDFAST_ROWS_H

#include "gdfast.h"

/* dst row i = src row idx[i] for i < n, rows of row_bytes bytes, on the
 * threads. Returns 0, or -1 - i for the first idx[i] outside [0, rows),
 * having copied nothing. */
gd_index gdfast_take_rows(const void *src, gd_index rows, gd_index row_bytes,
                          const int64_t *idx, gd_index n, void *dst);

#endif
