/* ops.h - the numeric kernels every part of the engine is built from.
 *
 * Matrices are weights used in place from the mapped model file, in F32, F16 or Q8_0.
 * Everything else is float32. Element-wise kernels are parallel with OpenMP and use the calling
 * thread's OpenMP thread count (omp_set_num_threads() in the session's thread).
 */
#ifndef COBRA_OPS_H
#define COBRA_OPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

#define QK8_0 32
typedef struct {
    uint16_t d;        /* scale, IEEE half */
    int8_t qs[QK8_0];  /* value = d * qs[i] */
} BlockQ8_0;

/* A weight matrix W[rows][cols], row-major, element type `type` (ggml: ne[0] = cols). */
typedef struct {
    const void *data;
    GgmlType type;
    int rows; /* output features */
    int cols; /* input features */
} Mat;

/* Bind a 2-D tensor as a matrix (rows = ne[1], cols = ne[0]). */
Mat mat_from_tensor(const GgufTensor *t);

/* Per-session scratch for matmul (dequantised weight tiles, quantised activations).
 * Sized once for the widest matrix and the largest n the session uses. */
typedef struct {
    float *tile;        /* dequantised weight rows for GEMM on F16/Q8_0 */
    size_t tile_floats;
    void *xq;           /* quantised activations */
    size_t xq_bytes;
} Workspace;

void workspace_init(Workspace *ws, int max_cols, int max_n);
void workspace_free(Workspace *ws);

/* out[n][W.rows] = x[n][W.cols] · Wᵀ (+ bias[W.rows] when bias != NULL).
 * n == 1 uses fused dequantise-and-dot matrix-vector kernels, n > 1 a GEMM. */
void matmul(float *out, const float *x, int n, const Mat *W, const float *bias, Workspace *ws);

/* Row r of W as floats. */
void mat_get_row(const Mat *W, int r, float *out);

/* Element-wise and row-wise kernels (x and out may alias where the argument names allow). */
void layernorm(float *out, const float *x, const float *w, const float *b, int n, int dim,
               float eps);                                          /* rows of dim */
void rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps);
void gelu(float *x, size_t len);                                     /* exact erf, in place */
void silu(float *x, size_t len);                                     /* in place */
void softmax(float *x, int len);                                     /* in place */
void add(float *x, const float *y, size_t len);                      /* x += y */
void scale_rows(float *x, const float *gamma, int n, int dim);       /* x[i][j] *= gamma[j] */
void add_scaled_rows(float *x, const float *y, const float *gamma, int n, int dim);
                                                                     /* x[i][j] += gamma[j]*y[i][j] */

static inline float softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);

/* Number of threads parallel regions will use in this thread. */
int ops_threads(void);

#endif
