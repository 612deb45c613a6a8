/* bench_common.h - what cobra-bench and matmul-bench both measure with. */
#ifndef COBRA_BENCH_COMMON_H
#define COBRA_BENCH_COMMON_H

#include <glib.h>

/* Monotonic seconds. */
static inline double now_s(void) { return g_get_monotonic_time() / 1e6; }

/* Streaming-read bandwidth in GB/s: the best of several passes over 1 GiB with every OpenMP
 * thread. */
double read_bandwidth(void);

#endif
