/* matmul-bench - the engine's matmul() at cobra+3b's weight shapes, against the machine's own
 * ceilings in the same process: OpenBLAS sgemm at each GEMM shape and streaming-read bandwidth
 * for the matrix-vector products.
 *
 *   matmul-bench [-t THREADS] [--type f32|f16|q8_0|q4_0|all] [--reps R] [--no-sgemm]
 *
 * Weights are synthetic (no model file), so it runs anywhere the binary does; cobra-bench
 * measures the whole model. One line per shape and type.
 */
#include <glib.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "bench_common.h"
#include "ops.h"

/* out[m][n] = x[m][k] · W[n][k]ᵀ: the weight GEMMs of a frame (towers at 729 image tokens plus
 * their class and register tokens, projector) and of a 256-token prefill chunk, then the
 * matrix-vector products of a decoded token. */
typedef struct {
    const char *name;
    int m, n, k;
} Shape;

static const Shape shapes[] = {
    {"dino attn_qkv", 734, 3072, 1024},   {"dino ffn_up", 734, 4096, 1024},
    {"dino ffn_down", 734, 1024, 4096},   {"siglip attn_qkv", 729, 3456, 1152},
    {"siglip ffn_up", 729, 4304, 1152},   {"mm.0", 729, 8704, 2176},
    {"mm.2", 729, 2560, 8704},            {"ssm_in", 256, 10240, 2560},
    {"ssm_x", 256, 192, 5120},            {"ssm_out", 256, 2560, 5120},
    {"ssm_in (decode)", 1, 10240, 2560},  {"ssm_out (decode)", 1, 2560, 5120},
    {"output (decode)", 1, 50280, 2560},
};

static float frand(guint32 *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 16777216.0f - 0.5f;
}

/* A weight matrix of `type` in the file's layout, values in [-0.5, 0.5). */
static void *make_weights(GgmlType type, int n, int k)
{
    size_t count = (size_t)n * k;
    guint32 seed = 7;
    if (type == GGML_TYPE_F32) {
        float *w = g_new(float, count);
        for (size_t i = 0; i < count; i++)
            w[i] = frand(&seed);
        return w;
    }
    if (type == GGML_TYPE_F16) {
        uint16_t *w = g_new(uint16_t, count);
        for (size_t i = 0; i < count; i++)
            w[i] = fp32_to_fp16(frand(&seed));
        return w;
    }
    if (type == GGML_TYPE_Q4_0) {
        BlockQ4_0 *w = g_new(BlockQ4_0, count / QK4_0);
        for (size_t b = 0; b < count / QK4_0; b++) {
            w[b].d = fp32_to_fp16(0.5f / 8);
            for (int i = 0; i < QK4_0 / 2; i++)
                w[b].qs[i] = (uint8_t)((frand(&seed) + 0.5f) * 256);
        }
        return w;
    }
    BlockQ8_0 *w = g_new(BlockQ8_0, count / QK8_0);
    for (size_t b = 0; b < count / QK8_0; b++) {
        w[b].d = fp32_to_fp16(0.5f / 127);
        for (int i = 0; i < QK8_0; i++)
            w[b].qs[i] = (int8_t)(frand(&seed) * 254);
    }
    return w;
}

/* Seconds of the fastest of `reps` matmul() calls of x[m][W.cols] · Wᵀ. */
static double time_matmul(const Mat *W, const float *x, int m, float *out, Workspace *ws,
                          int reps)
{
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        matmul(out, x, m, W, NULL, ws);
        best = MIN(best, now_s() - t0);
    }
    return best;
}

static const char *type_name(GgmlType t)
{
    return t == GGML_TYPE_F32 ? "f32" : t == GGML_TYPE_F16 ? "f16" : t == GGML_TYPE_Q4_0 ? "q4_0" : "q8_0";
}

int main(int argc, char **argv)
{
    int threads = 0, reps = 3;
    gboolean no_sgemm = FALSE;
    char *type_arg = NULL;
    GOptionEntry entries[] = {
        {"threads", 't', 0, G_OPTION_ARG_INT, &threads, "threads (all cores)", "N"},
        {"type", 0, 0, G_OPTION_ARG_STRING, &type_arg, "f32, f16, q8_0, q4_0 or all (all)", "T"},
        {"reps", 0, 0, G_OPTION_ARG_INT, &reps, "repetitions; the best is kept (3)", "R"},
        {"no-sgemm", 0, 0, G_OPTION_ARG_NONE, &no_sgemm,
         "skip the sgemm ceiling (where the BLAS linked is not a tuned one)", NULL},
        {NULL}};
    GOptionContext *ctx = g_option_context_new("- time matmul at cobra+3b's shapes");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "matmul-bench: %s\n", err->message);
        return 2;
    }
    g_option_context_free(ctx);
    GgmlType types[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0};
    const int n_types = G_N_ELEMENTS(types);
    int first = 0, last = n_types - 1;
    if (type_arg && strcmp(type_arg, "all") != 0) {
        for (first = 0; first < n_types && strcmp(type_arg, type_name(types[first])); first++)
            ;
        if (first == n_types) {
            fprintf(stderr, "matmul-bench: --type must be f32, f16, q8_0, q4_0 or all\n");
            return 2;
        }
        last = first;
    }
    if (threads <= 0)
        threads = omp_get_num_procs();
    if (reps < 1)
        reps = 1;
    omp_set_num_threads(threads);

    double membw = read_bandwidth();
    printf("matmul-bench: %d threads, read ceiling %.1f GB/s\n", threads, membw);
    printf("%-18s %5s %6s %6s %5s %10s %10s %6s\n", "shape", "m", "n", "k", "type", "engine",
           "ceiling", "ratio");
    for (size_t i = 0; i < G_N_ELEMENTS(shapes); i++) {
        const Shape *s = &shapes[i];
        float *x = g_new(float, (size_t)s->m * s->k), *out = g_new(float, (size_t)s->m * s->n);
        guint32 seed = 11;
        for (size_t j = 0; j < (size_t)s->m * s->k; j++)
            x[j] = frand(&seed);
        Workspace ws;
        workspace_init(&ws, s->k, s->m);
        double sgemm_s = s->m > 1 && !no_sgemm ? time_sgemm(s->m, s->n, s->k, reps) : 0;
        for (int t = first; t <= last; t++) {
            if (ggml_row_size(types[t], s->k) == 0)
                continue;
            const Mat W = {make_weights(types[t], s->n, s->k), types[t], s->n, s->k};
            double sec = time_matmul(&W, x, s->m, out, &ws, reps);
            double flop = 2.0 * s->m * s->n * s->k;
            size_t wbytes = ggml_row_size(types[t], s->k) * s->n;
            /* GEMMs against sgemm's GFLOP/s, matrix-vector products against read GB/s */
            double engine = s->m > 1 ? flop / sec / 1e9 : wbytes / sec / 1e9;
            double ceiling = s->m == 1 ? membw : sgemm_s > 0 ? flop / sgemm_s / 1e9 : NAN;
            printf("%-18s %5d %6d %6d %5s %8.1f %s %8.1f %s %5.0f%%\n", s->name, s->m, s->n, s->k,
                   type_name(types[t]), engine, s->m > 1 ? "GF" : "GB", ceiling,
                   s->m > 1 ? "GF" : "GB", 100 * engine / ceiling);
            g_free((void *)W.data);
        }
        workspace_free(&ws);
        g_free(x);
        g_free(out);
    }
    g_free(type_arg);
    return 0;
}
