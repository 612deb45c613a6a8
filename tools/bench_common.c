/* bench_common.c - the ceilings the benchmarks report ratios against. */
#include "bench_common.h"

#include <cblas.h>
#include <stdint.h>

/* Where the bandwidth passes leave their sums, so the compiler keeps the reads. */
static volatile uint64_t read_sink;

double read_bandwidth(void)
{
    const size_t n = (1u << 30) / sizeof(uint64_t);
    uint64_t *buf = g_new(uint64_t, n);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        buf[i] = i;
    double best = 1e9;
    for (int r = 0; r < 8; r++) {
        double t0 = now_s();
        uint64_t sum = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i++)
            sum += buf[i];
        best = MIN(best, now_s() - t0);
        read_sink = sum;
    }
    g_free(buf);
    return (double)n * sizeof(uint64_t) / best / 1e9;
}

double time_sgemm(int m, int n, int k, int reps)
{
    float *x = g_new(float, (size_t)m * k), *w = g_new(float, (size_t)n * k);
    float *o = g_new(float, (size_t)m * n);
    for (size_t i = 0; i < (size_t)m * k; i++)
        x[i] = (float)(i % 17) * 0.01f;
    for (size_t i = 0; i < (size_t)n * k; i++)
        w[i] = (float)(i % 13) * 0.01f;
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f, o, n);
        best = MIN(best, now_s() - t0);
    }
    g_free(x);
    g_free(w);
    g_free(o);
    return best;
}
