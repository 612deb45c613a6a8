/* ops.h - the numeric kernels every part of the engine is built from.
 *
 * Matrices are weights used in place from the mapped model file, in F32, F16, Q4_0 or Q8_0.
 * Everything else is float32. Element-wise kernels are parallel with OpenMP and use the calling
 * thread's OpenMP thread count (omp_set_num_threads() in the session's thread).
 */
#ifndef COBRA_OPS_H
#define COBRA_OPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gguf.h"

#define QK8_0 32
typedef struct {
    uint16_t d;        /* scale, IEEE half */
    int8_t qs[QK8_0];  /* value = d * qs[i] */
} BlockQ8_0;

#define QK4_0 32
typedef struct {
    uint16_t d;             /* scale, IEEE half */
    uint8_t qs[QK4_0 / 2];  /* element i < 16: d * ((qs[i] & 15) - 8); element 16 + i: high nibble */
} BlockQ4_0;

/* A weight matrix W[rows][cols], row-major, element type `type` (ggml: ne[0] = cols). */
typedef struct {
    const void *data;
    GgmlType type;
    int rows; /* output features */
    int cols; /* input features */
} Mat;

/* Bind a 2-D tensor as a matrix (rows = ne[1], cols = ne[0]). */
Mat mat_from_tensor(const GgufTensor *t);
/* The tensor `name` of f with `rows` outputs and `cols` inputs and a type in `types`, bound as a
 * matrix; FALSE and an error naming the file and the tensor otherwise. How every loader binds its
 * weights. */
gboolean mat_require(const GgufFile *f, const char *name, int64_t rows, int64_t cols,
                     unsigned types, Mat *out, GError **error);

/* Per-session scratch for matmul (dequantised F16 tiles, quantised activations, packed int8
 * panels). workspace_init sizes it for the widest matrix and the largest n the session uses;
 * matmul grows it if a call needs more. */
typedef struct {
    float *tile;        /* F16 weight rows dequantised for OpenBLAS */
    size_t tile_bytes;
    void *xq;           /* activations quantised for Q4_0/Q8_0 weights, n rows (+ scales) */
    size_t xq_bytes;
    uint8_t *panels;    /* one packed int8 weight panel per OpenMP thread */
    size_t panels_bytes;
} Workspace;

void workspace_init(Workspace *ws, int max_cols, int max_n);
void workspace_free(Workspace *ws);

/* out[n][W.rows] = x[n][W.cols] · Wᵀ (+ bias[W.rows] when bias != NULL).
 * n == 1 uses fused dequantise-and-dot matrix-vector kernels, n > 1 a GEMM. With Q4_0 or Q8_0
 * weights x is quantised to Q8_0 (per 32 values, scale max|x| / 127) first, as ggml does. */
void matmul(float *out, const float *x, int n, const Mat *W, const float *bias, Workspace *ws);

/* Matrix-vector products split by the caller (a decoded token's own scheduling, mamba.c): x
 * prepared once for W's type into buf (matvec_input_bytes(W.cols); quantised for Q4_0 and Q8_0,
 * x itself otherwise), then out[r] = W[r] · x for r0 <= r < r1, as matmul computes them.
 * matvec_input_part prepares only columns c0..c1-1 (multiples of QK8_0, or W.cols), so that
 * whoever wrote them can; with c0 == c1 it only says where the input will be. */
size_t matvec_input_bytes(int cols);
const void *matvec_input(const Mat *W, const float *x, void *buf);
const void *matvec_input_part(const Mat *W, const float *x, void *buf, int c0, int c1);
void matvec_rows(float *out, const Mat *W, const void *xin, int r0, int r1);

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

/* The instruction sets kernels are written for, in order of preference; AVX-VNNI is vpdpbusd on
 * 256-bit vectors without AVX-512 (Intel since Alder Lake); AMX is AVX-512 plus Intel's tile
 * unit (Xeons since Sapphire Rapids), which only the int8 GEMM uses. */
typedef enum { ISA_C, ISA_AVX2, ISA_AVX_VNNI, ISA_AVX512, ISA_AMX } Isa;
/* The best this CPU has (ISA_AVX512 means AVX-512 F, BW, VL and VNNI; ISA_AVX2 includes FMA and
 * F16C), decided once; COBRA_NO_AMX=1, COBRA_NO_AVX512=1 and COBRA_NO_SIMD=1 step down to
 * narrower paths. */
Isa cpu_isa(void);
/* What a kernel for each Isa is compiled with. */
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

/* Loops over fast_expf are built for the common x86-64 levels, one picked at load time: the
 * default target has only SSE2. */
#if defined(__x86_64__) && defined(__GNUC__)
#define SIMD_TARGETS __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SIMD_TARGETS
#endif

/* exp(x) to about 1 ulp (max relative error 8e-8) in plain arithmetic, so that loops over it
 * vectorise; libm's expf is a call per element. Inputs beyond [-87, 88] are clamped. */
static inline float fast_expf(float x)
{
    /* The clamp works on the bit pattern: integer min/max vectorise, float ones need
     * -ffinite-math-only. Unsigned order puts every negative float above the positives. */
    uint32_t u;
    memcpy(&u, &x, 4);
    u = u < 0xC2AE0000u ? u : 0xC2AE0000u; /* -87.0f */
    int32_t i = (int32_t)u < 0x42B00000 ? (int32_t)u : 0x42B00000; /* 88.0f */
    memcpy(&x, &i, 4);
    /* x = k ln2 + r, |r| <= ln2/2; adding 1.5 * 2^23 rounds x/ln2 to the integer k. */
    const float magic = 12582912.0f;
    float kf = x * 1.44269504088896341f + magic;
    int32_t k;
    memcpy(&k, &kf, 4);
    k -= 0x4B400000;
    kf -= magic;
    const float r = (x - kf * 0.693145751953125f) - kf * 1.428606765330187045e-06f;
    float p = 1.9875691500e-4f; /* exp(r) - 1 - r, Cephes expf */
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (k + 127) * (1 << 23); /* 2^k */
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);

/* Number of threads parallel regions will use in this thread. */
int ops_threads(void);

#endif
