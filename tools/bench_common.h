/* bench_common.h - the ceilings cobra-bench and matmul-bench both measure, the same way. */
#ifndef COBRA_BENCH_COMMON_H
#define COBRA_BENCH_COMMON_H

#include <glib.h>

/* Monotonic seconds. */
static inline double now_s(void) { return g_get_monotonic_time() / 1e6; }

/* Streaming-read bandwidth in GB/s: the best of several passes over 1 GiB with every OpenMP
 * thread. */
double read_bandwidth(void);

/* Seconds of the fastest of `reps` cblas_sgemm calls computing x[m][k] · w[n][k]ᵀ, the way
 * matmul() calls it, with the calling thread's OpenMP thread count. */
double time_sgemm(int m, int n, int k, int reps);

#endif
