/* ops.c - numeric kernels: matmul on F32/F16/Q4_0/Q8_0 weights, norms, activations, fp16.
 *
 * GEMM (n > 1) on F32 weights goes to OpenBLAS in place, on F16 weights dequantised a tile of
 * rows at a time. Q4_0 and Q8_0 weights meet activations quantised to Q8_0 as in ggml, in our
 * own int8 GEMM and int8 dot products. What each weight type uses is one row of
 * `type_kernels`. Decoding (n == 1) is memory-bound (Q4_0 nearly so: its dots are written for
 * few instructions per block), so it reads each weight once in a fused dequantise-and-dot
 * kernel. Kernels are picked at run time for the CPU (AMX tiles for the int8 GEMM, AVX-512
 * with VNNI, AVX-VNNI, AVX2+FMA+F16C, plain C).
 */
#include "ops.h"

#include <cblas.h>
#include <cpuid.h>
#include <glib.h>
#include <immintrin.h>
#include <omp.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Floats of F16 weights dequantised per GEMM call (32 MiB). Every call re-packs all of x, so few
 * large tiles beat many cache-sized ones: cobra+3b's widest matrices take 3-4 calls. */
#define TILE_FLOATS ((size_t)8 << 20)
/* The fewest rows a tile holds, whatever the width. */
#define TILE_MIN_ROWS 64
/* Below this many multiply-adds a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768

/* An activation block quantised for the int8 dots: float scale (the weights' is f16), and the
 * values' sum for Q4_0's offset of 8. */
typedef struct {
    float d;
    int32_t sum; /* Σ qs before any flip */
    int8_t qs[QK8_0];
} BlockQ8x;

/* ---- fp16 ---------------------------------------------------------------------------------- */

static inline float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24 is exact in float */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) /* inf / NaN keep their payload */
        return bits_to_f32(sign | 0x7f800000u | mant << 13);
    return bits_to_f32(sign | (exp + 112) << 23 | mant << 13);
}

/* Round-to-nearest-even of q + rem / 2^shift. */
static inline uint32_t round_shifted(uint32_t q, uint32_t rem, int shift)
{
    uint32_t half = 1u << (shift - 1);
    return q + (rem > half || (rem == half && (q & 1)));
}

uint16_t fp32_to_fp16(float f)
{
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN: keep it quiet and keep the top payload bits */
        return sign | 0x7e00 | (a >> 13 & 0x3ff);
    if (a >= 0x477ff000u) /* >= 65520 rounds past the largest half, 65504 */
        return sign | 0x7c00;
    if (a >= 0x38800000u) { /* normal half: rebias the exponent, round away 13 mantissa bits */
        uint32_t q = (a >> 13) - (112u << 10);
        return sign | round_shifted(q, a & 0x1fff, 13);
    }
    if (a <= 0x33000000u) /* <= 2^-25: half-way to the smallest subnormal rounds to even 0 */
        return sign;
    /* subnormal half: value / 2^-24 = mant * 2^(e - 126) */
    uint32_t e = a >> 23, mant = (a & 0x7fffff) | 0x800000;
    int shift = 126 - (int)e;
    return sign | round_shifted(mant >> shift, mant & ((1u << shift) - 1), shift);
}

/* ---- CPU features ----------------------------------------------------------------------------- */

/* Asked of CPUID directly: clang 14's __builtin_cpu_supports knows neither "f16c" nor
 * "avxvnni". */
static gboolean cpu_has_f16c(void)
{
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}

static gboolean cpu_has_avx_vnni(void)
{
    unsigned eax, ebx, ecx, edx;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 4));
}

/* AMX-TILE and AMX-INT8 (CPUID 7.0 EDX bits 24 and 25), and Linux's leave to use the tiles: it
 * gives a thread the 8 KiB of tile state to save only once the process asks (kernel 5.16 on). */
static gboolean cpu_has_amx_int8(void)
{
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || (~edx & (3u << 24)))
        return FALSE;
#ifdef __linux__
    const long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
#else
    return FALSE;
#endif
}

Isa cpu_isa(void)
{
    static gsize once = 0;
    static Isa isa;
    if (g_once_init_enter(&once)) {
        __builtin_cpu_init();
        const gboolean avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                              cpu_has_f16c();
        const gboolean avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                                __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl") &&
                                __builtin_cpu_supports("avx512vnni");
        isa = avx2 ? (cpu_has_avx_vnni() ? ISA_AVX_VNNI : ISA_AVX2) : ISA_C;
        /* COBRA_NO_AVX512 and COBRA_NO_SIMD let tests and users check the narrower paths. */
        if (avx512 && !g_getenv("COBRA_NO_AVX512"))
            isa = ISA_AVX512;
        /* COBRA_NO_AMX steps down to the AVX-512 VNNI GEMM. */
        if (isa == ISA_AVX512 && !g_getenv("COBRA_NO_AMX") && cpu_has_amx_int8())
            isa = ISA_AMX;
        if (g_getenv("COBRA_NO_SIMD"))
            isa = ISA_C;
        g_once_init_leave(&once, 1);
    }
    return isa;
}

/* ---- dequantisation ----------------------------------------------------------------------------- */

/* Every dequantiser takes a weight row, the output and cols. */
typedef void (*DequantFn)(const void *w, float *out, int cols);
/* Every dot product takes a weight row, the (possibly quantised) activations and cols. */
typedef float (*DotFn)(const void *w, const void *x, int cols);

/* What the kernels do with one weight type; the row of a type the engine does not read is
 * empty, and mat_require() refuses it before any kernel runs. */
typedef struct {
    DequantFn dequant[2];  /* a row to floats: plain C, AVX2 */
    DotFn dot[5];          /* matrix-vector dot products, per Isa */
    gboolean int8;         /* meets Q8_0-quantised activations in int8 products */
    /* int8 types: block b of a row as 32 int8 values and its f16 scale (any panel) ... */
    void (*block_i8)(const void *row, int b, int8_t q[QK8_0], uint16_t *d);
    /* ... and panels of whole rows with AVX2 */
    void (*pack_avx2)(const Mat *W, int r0, int R, uint8_t *panel);
} TypeKernels;

static const TypeKernels *type_kernels_of(GgmlType type);

static void dequant_row_f32(const void *w, float *out, int cols)
{
    memcpy(out, w, (size_t)cols * sizeof(float));
}

static void dequant_row_f16_c(const void *wv, float *out, int cols)
{
    const uint16_t *w = wv;
    for (int j = 0; j < cols; j++)
        out[j] = fp16_to_fp32(w[j]);
}

__attribute__((target("avx2,f16c"))) static void dequant_row_f16_avx2(const void *wv, float *out,
                                                                        int cols)
{
    const uint16_t *w = wv;
    int j = 0;
    for (; j + 8 <= cols; j += 8)
        _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + j))));
    for (; j < cols; j++)
        out[j] = _cvtsh_ss(w[j]);
}

static void dequant_row_q8_0_c(const void *wv, float *out, int cols)
{
    const BlockQ8_0 *w = wv;
    for (int b = 0; b < cols / QK8_0; b++) {
        float d = fp16_to_fp32(w[b].d);
        for (int i = 0; i < QK8_0; i++)
            out[b * QK8_0 + i] = d * w[b].qs[i];
    }
}

__attribute__((target("avx2,f16c"))) static void dequant_row_q8_0_avx2(const void *wv,
                                                                         float *out, int cols)
{
    const BlockQ8_0 *w = wv;
    for (int b = 0; b < cols / QK8_0; b++) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[b].d));
        for (int i = 0; i < QK8_0; i += 8) {
            __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w[b].qs + i)));
            _mm256_storeu_ps(out + b * QK8_0 + i, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
    }
}

/* Only the embedding lookup dequantises Q4_0 rows (one per token), so it has no AVX2 version. */
static void dequant_row_q4_0_c(const void *wv, float *out, int cols)
{
    const BlockQ4_0 *w = wv;
    for (int b = 0; b < cols / QK4_0; b++) {
        const float d = fp16_to_fp32(w[b].d);
        for (int i = 0; i < QK4_0 / 2; i++) {
            out[b * QK4_0 + i] = d * ((w[b].qs[i] & 15) - 8);
            out[b * QK4_0 + QK4_0 / 2 + i] = d * ((w[b].qs[i] >> 4) - 8);
        }
    }
}

static const void *mat_row(const Mat *W, int r)
{
    return (const uint8_t *)W->data + (size_t)r * ggml_row_size(W->type, W->cols);
}

void mat_get_row(const Mat *W, int r, float *out)
{
    type_kernels_of(W->type)->dequant[cpu_isa() != ISA_C](mat_row(W, r), out, W->cols);
}

Mat mat_from_tensor(const GgufTensor *t)
{
    return (Mat){ .data = t->data, .type = t->type, .rows = (int)t->ne[1], .cols = (int)t->ne[0] };
}

gboolean mat_require(const GgufFile *f, const char *name, int64_t rows, int64_t cols,
                     unsigned types, Mat *out, GError **error)
{
    const int64_t ne[2] = {cols, rows};
    const GgufTensor *t = gguf_require_tensor(f, name, 2, ne, types, error);
    if (!t)
        return FALSE;
    *out = mat_from_tensor(t);
    return TRUE;
}

/* ---- packed int8 panels (the int8 GEMM's, below; sized here for the workspace) ------------ */

/* AMX tiles hold 16 rows of 64 bytes: the int8 GEMM multiplies one 32-value block of 16
 * activation rows (an A tile) by that block of a 16-row panel (a B tile). */
#define AMX_TILE_ROWS 16

/* Weight rows per panel: the int32 lanes of one vector (AVX-512), or one AMX B tile. */
static int panel_rows(Isa isa)
{
    return isa >= ISA_AVX512 ? 16 : 8;
}

/* One 32-column block of a panel of R rows:
 *   float   d[R]        the rows' scales
 *   int32   comp[R]     -128 * Σ w: vpdpbusd wants unsigned activations, so they are stored
 *                       +128 and this term takes the excess back out (VNNI paths only)
 *   int8    q[8][R][4]  weights, 4 consecutive ones of each row per 4R bytes, so one vector
 *                       load feeds R rows and one broadcast of 4 activations multiplies them */
static size_t panel_block_bytes(int R)
{
    return (size_t)R * (4 + 4 + QK8_0);
}

/* Activation rows quantised for n: AMX reads whole tiles of them, so n rounded up (the extra
 * rows zeros). */
static int quantized_rows(int n)
{
    return cpu_isa() == ISA_AMX ? (n + AMX_TILE_ROWS - 1) / AMX_TILE_ROWS * AMX_TILE_ROWS : n;
}

/* ---- workspace -------------------------------------------------------------------------------- */

/* Rows of a matrix of `cols` columns dequantised per GEMM call. */
static int tile_rows(int cols)
{
    return (int)MAX(TILE_MIN_ROWS, TILE_FLOATS / (size_t)cols / 16 * 16);
}

/* buf, or a new buffer of `bytes` if it holds fewer; contents are scratch. */
static void *grow(void *buf, size_t *have, size_t bytes)
{
    if (bytes <= *have)
        return buf;
    g_free(buf);
    *have = bytes;
    return g_malloc(bytes);
}

/* Room for matmul of `n` rows on a `cols`-wide matrix of `type`. A tile is allocated for its
 * budget but only the rows in use are ever touched (and so resident). */
static void ensure_capacity(Workspace *ws, GgmlType type, int cols, int n)
{
    if (type == GGML_TYPE_F16 && n > 1)
        ws->tile = grow(ws->tile, &ws->tile_bytes, (size_t)tile_rows(cols) * cols * sizeof(float));
    if (type_kernels_of(type)->int8) {
        size_t nb = (size_t)cols / QK8_0;
        ws->xq = grow(ws->xq, &ws->xq_bytes,
                      (size_t)quantized_rows(MAX(n, 1)) * nb * sizeof(BlockQ8x) +
                          2 * nb * sizeof(float));
        if (n > 1)
            ws->panels = grow(ws->panels, &ws->panels_bytes,
                              (size_t)omp_get_max_threads() * nb *
                                  panel_block_bytes(panel_rows(cpu_isa())));
    }
}

/* Sized up front for the largest call so that a session allocates nothing while it runs. */
void workspace_init(Workspace *ws, int max_cols, int max_n)
{
    memset(ws, 0, sizeof *ws);
    ensure_capacity(ws, GGML_TYPE_F16, max_cols, max_n);
    ensure_capacity(ws, GGML_TYPE_Q8_0, max_cols, max_n);
}

void workspace_free(Workspace *ws)
{
    g_free(ws->tile);
    g_free(ws->xq);
    g_free(ws->panels);
    memset(ws, 0, sizeof *ws);
}

/* ---- matrix-vector dot products (n == 1) --------------------------------------------------- */


static float dot_f32_c(const void *wv, const void *xv, int n)
{
    const float *w = wv, *x = xv;
    float s = 0;
    for (int j = 0; j < n; j++)
        s += w[j] * x[j];
    return s;
}

static float dot_f16_c(const void *wv, const void *xv, int n)
{
    const uint16_t *w = wv;
    const float *x = xv;
    float s = 0;
    for (int j = 0; j < n; j++)
        s += fp16_to_fp32(w[j]) * x[j];
    return s;
}

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* How far ahead of the dot products weights are prefetched. The hardware prefetcher alone left
 * one core streaming a Q8_0 head at 14 GB/s; this distance (the best of 256-4096 tried on Zen 3)
 * raised it to 18. Prefetches past the end of the matrix are harmless. */
#define PREFETCH_BYTES 2048

/* Float dot bodies shared by F32 and F16 weights; LOAD(p) gives a vector of weights at p,
 * SCALAR(v) one weight. Independent accumulators hide the FMA latency: AVX2 machines (Zen 3:
 * 4 cycles, 2 per cycle) need four to stream from cache at full speed, AVX-512's 16 lanes
 * already outrun memory with two. */
#define DOT_AVX2_BODY(T, LOAD, SCALAR)                                                          \
    const T *w = wv;                                                                             \
    const float *x = xv;                                                                         \
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                                   \
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();                                   \
    int j = 0;                                                                                   \
    for (; j + 32 <= n; j += 32) {                                                               \
        _mm_prefetch((const char *)(w + j) + PREFETCH_BYTES, _MM_HINT_T0);                       \
        a0 = _mm256_fmadd_ps(LOAD(w + j), _mm256_loadu_ps(x + j), a0);                           \
        a1 = _mm256_fmadd_ps(LOAD(w + j + 8), _mm256_loadu_ps(x + j + 8), a1);                   \
        a2 = _mm256_fmadd_ps(LOAD(w + j + 16), _mm256_loadu_ps(x + j + 16), a2);                 \
        a3 = _mm256_fmadd_ps(LOAD(w + j + 24), _mm256_loadu_ps(x + j + 24), a3);                 \
    }                                                                                            \
    for (; j + 8 <= n; j += 8)                                                                   \
        a0 = _mm256_fmadd_ps(LOAD(w + j), _mm256_loadu_ps(x + j), a0);                           \
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));              \
    for (; j < n; j++)                                                                           \
        s += SCALAR(w[j]) * x[j];                                                                \
    return s;

#define DOT_AVX512_BODY(T, LOAD, SCALAR)                                                        \
    const T *w = wv;                                                                             \
    const float *x = xv;                                                                         \
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();                                   \
    int j = 0;                                                                                   \
    for (; j + 32 <= n; j += 32) {                                                               \
        _mm_prefetch((const char *)(w + j) + PREFETCH_BYTES, _MM_HINT_T0);                       \
        a0 = _mm512_fmadd_ps(LOAD(w + j), _mm512_loadu_ps(x + j), a0);                           \
        a1 = _mm512_fmadd_ps(LOAD(w + j + 16), _mm512_loadu_ps(x + j + 16), a1);                 \
    }                                                                                            \
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));                                       \
    for (; j < n; j++)                                                                           \
        s += SCALAR(w[j]) * x[j];                                                                \
    return s;

#define LOAD_F32_256(p) _mm256_loadu_ps(p)
#define LOAD_F16_256(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define LOAD_F32_512(p) _mm512_loadu_ps(p)
#define LOAD_F16_512(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define AS_FLOAT(v) (v)

#define TARGET_AVX_VNNI __attribute__((target("avxvnni,avx2,fma,f16c")))

TARGET_AVX2 static float dot_f32_avx2(const void *wv, const void *xv, int n)
{
    DOT_AVX2_BODY(float, LOAD_F32_256, AS_FLOAT)
}

TARGET_AVX2 static float dot_f16_avx2(const void *wv, const void *xv, int n)
{
    DOT_AVX2_BODY(uint16_t, LOAD_F16_256, _cvtsh_ss)
}

TARGET_AVX512 static float dot_f32_avx512(const void *wv, const void *xv, int n)
{
    DOT_AVX512_BODY(float, LOAD_F32_512, AS_FLOAT)
}

TARGET_AVX512 static float dot_f16_avx512(const void *wv, const void *xv, int n)
{
    DOT_AVX512_BODY(uint16_t, LOAD_F16_512, _cvtsh_ss)
}

/* ggml's quantize_row_q8_0: per block scale amax / 127, values rounded to nearest. `flip` is
 * XORed into every value: 0x80 stores them as unsigned value + 128, as vpdpbusd wants. */
static void quantize_row_q8x(const float *x, BlockQ8x *out, int n, uint8_t flip)
{
    for (int b = 0; b < n / QK8_0; b++) {
        const float *xb = x + b * QK8_0;
        float amax = 0;
        for (int i = 0; i < QK8_0; i++)
            amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        out[b].d = d;
        out[b].sum = 0;
        for (int i = 0; i < QK8_0; i++) {
            const int8_t q = (int8_t)roundf(xb[i] * id);
            out[b].sum += q;
            out[b].qs[i] = (int8_t)((uint8_t)q ^ flip);
        }
    }
}

/* The same quantisation, bit for bit, 8 values at a time: libm's fmaxf and roundf calls made
 * it half the time of a small Q8_0 matrix-vector product, all of it serial. roundf's ties go
 * away from zero, so a tie that the hardware rounded to even is moved to the next integer. */
TARGET_AVX2 static void quantize_row_q8x_avx2(const float *x, BlockQ8x *out, int n,
                                              uint8_t flip)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    for (int b = 0; b < n / QK8_0; b++) {
        const float *xb = x + b * QK8_0;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], abs_mask));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float d = _mm_cvtss_f32(m4) / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        out[b].d = d;
        __m256i q[4];
        for (int i = 0; i < 4; i++) {
            __m256 s = _mm256_mul_ps(v[i], _mm256_set1_ps(id));
            __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 r = _mm256_round_ps(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256 tie = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(s, t), abs_mask),
                                       _mm256_set1_ps(0.5f), _CMP_EQ_OQ);
            __m256 away = _mm256_add_ps(t, _mm256_or_ps(_mm256_set1_ps(1.0f),
                                                        _mm256_and_ps(s, sign_mask)));
            q[i] = _mm256_cvtps_epi32(_mm256_blendv_ps(r, away, tie));
        }
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        out[b].sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1)));
        /* int32 -> int8 (values are within +-127); packs interleave 128-bit lanes, the
         * permute puts them back in order. */
        __m256i lo = _mm256_packs_epi32(q[0], q[1]), hi = _mm256_packs_epi32(q[2], q[3]);
        __m256i p8 = _mm256_packs_epi16(lo, hi);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        p8 = _mm256_xor_si256(p8, _mm256_set1_epi8((char)flip));
        _mm256_storeu_si256((__m256i *)out[b].qs, p8);
    }
}

static void quantize_row(const float *x, BlockQ8x *out, int n, uint8_t flip)
{
    if (cpu_isa() != ISA_C)
        quantize_row_q8x_avx2(x, out, n, flip);
    else
        quantize_row_q8x(x, out, n, flip);
}

static float dot_q8_0_c(const void *wv, const void *xv, int n)
{
    const BlockQ8_0 *w = wv;
    const BlockQ8x *x = xv;
    float s = 0;
    for (int b = 0; b < n / QK8_0; b++) {
        int32_t acc = 0;
        for (int i = 0; i < QK8_0; i++)
            acc += (int32_t)w[b].qs[i] * x[b].qs[i];
        s += fp16_to_fp32(w[b].d) * x[b].d * (float)acc;
    }
    return s;
}

static float dot_q4_0_c(const void *wv, const void *xv, int n)
{
    const BlockQ4_0 *w = wv;
    const BlockQ8x *x = xv;
    float s = 0;
    for (int b = 0; b < n / QK4_0; b++) {
        int32_t acc = 0;
        for (int i = 0; i < QK4_0 / 2; i++)
            acc += ((w[b].qs[i] & 15) - 8) * x[b].qs[i] +
                   ((w[b].qs[i] >> 4) - 8) * x[b].qs[QK4_0 / 2 + i];
        s += fp16_to_fp32(w[b].d) * x[b].d * (float)acc;
    }
    return s;
}

/* Integer dot of 32 int8 pairs as 8 int32 lanes. maddubs wants unsigned x signed, so the
 * weight's sign moves onto the activation (ggml's trick, the other way round: a file may hold a
 * -128 weight, whose magnitude only fits unsigned; quantised activations never hold -128). */
TARGET_AVX2 static inline __m256i dot32_i8_avx2(__m256i w, __m256i x)
{
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* VNNI does the same multiply-add in one instruction, without the int16 intermediate. */
TARGET_AVX512 static inline __m256i dot32_i8_vnni(__m256i w, __m256i x)
{
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w),
                               _mm256_sign_epi8(x, w));
}

/* A weight block's 32 values as int8: Q8_0 stores them so, Q4_0 as nibbles + 8 (low nibbles
 * elements 0..15, high nibbles 16..31). */
TARGET_AVX2 static inline __m256i load_q8_0_avx2(const BlockQ8_0 *w)
{
    return _mm256_loadu_si256((const __m256i *)w->qs);
}

TARGET_AVX2 static inline __m256i q4_0_nibbles_avx2(const BlockQ4_0 *w)
{
    const __m128i p = _mm_loadu_si128((const __m128i *)w->qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(p, 4), p), _mm256_set1_epi8(15));
}

TARGET_AVX2 static inline __m256i load_q4_0_avx2(const BlockQ4_0 *w)
{
    return _mm256_sub_epi8(q4_0_nibbles_avx2(w), _mm256_set1_epi8(8));
}

/* One block's integer dot as 8 int32 lanes. Q4_0 keeps its nibbles unsigned (value + 8), the
 * unsigned operand that pmaddubsw and vpdpbusd want, and takes 8 Σx back out as Σx from each
 * lane: no sign moves. Decoding Q4_0 is compute-bound on one core (a Zen 5 core streamed a
 * Q4_0 head at 15 GB/s, a Q8_0 one at 29), so each instruction per block counts. */
TARGET_AVX2 static inline __m256i block_q8_0_avx2(const BlockQ8_0 *w, const BlockQ8x *x)
{
    return dot32_i8_avx2(load_q8_0_avx2(w), _mm256_loadu_si256((const __m256i *)x->qs));
}

TARGET_AVX512 static inline __m256i block_q8_0_vnni(const BlockQ8_0 *w, const BlockQ8x *x)
{
    return dot32_i8_vnni(load_q8_0_avx2(w), _mm256_loadu_si256((const __m256i *)x->qs));
}

/* Without the offset of 8: the 8-block loop takes it once per 8 blocks. */
TARGET_AVX2 static inline __m256i block_q4_0_unsigned_avx2(const BlockQ4_0 *w, const BlockQ8x *x)
{
    const __m256i p16 = _mm256_maddubs_epi16(q4_0_nibbles_avx2(w),
                                             _mm256_loadu_si256((const __m256i *)x->qs));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

TARGET_AVX2 static inline __m256i block_q4_0_avx2(const BlockQ4_0 *w, const BlockQ8x *x)
{
    return _mm256_sub_epi32(block_q4_0_unsigned_avx2(w, x), _mm256_set1_epi32(x->sum));
}

TARGET_AVX512 static inline __m256i block_q4_0_vnni(const BlockQ4_0 *w, const BlockQ8x *x)
{
    return _mm256_dpbusd_epi32(_mm256_set1_epi32(-x->sum), q4_0_nibbles_avx2(w),
                               _mm256_loadu_si256((const __m256i *)x->qs));
}

/* Block b's 8 partial sums times `scale` (both blocks' scales), added to acc. */
#define QBLOCK(BLOCK32, acc, b, scale)                                                           \
    acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(BLOCK32(w + (b), x + (b))), acc)

/* d_w of blocks b..b+7 (wd), and d_w * d_x (s; x's scales are the float array after its blocks,
 * see matvec). The 8 f16 weight scales are gathered in general registers and converted in one
 * instruction (Q4_0 head 15.6 -> 17.0 GB/s on a Zen 5 core, Q8_0 29 -> 32); without the scales
 * a Q4_0 row went at 23 GB/s. */
#define WSCALES8(b)                                                                              \
    uint64_t lo = 0, hi = 0;                                                                     \
    for (int i = 0; i < 4; i++) {                                                                \
        lo |= (uint64_t)w[(b) + i].d << 16 * i;                                                  \
        hi |= (uint64_t)w[(b) + 4 + i].d << 16 * i;                                              \
    }                                                                                            \
    const __m256 wd = _mm256_cvtph_ps(_mm_set_epi64x((long long)hi, (long long)lo))

#define SCALES8(b)                                                                               \
    WSCALES8(b);                                                                                 \
    const __m256 s = _mm256_mul_ps(wd, _mm256_loadu_ps(xd + (b)))

/* The int8 dot of a weight row of block type BT with Q8_0 activations, 8 blocks at a time
 * (each block's integer dot by BLOCK32, which may leave out an offset that OFFSET8 adds for 8
 * blocks at once), then the rest one at a time (by TAIL32). Two accumulators, so consecutive
 * blocks do not wait on each other's FMA. */
#define DOT_INT8_BODY(BT, BLOCK32, OFFSET8, TAIL32)                                              \
    const BT *w = wv;                                                                            \
    const BlockQ8x *x = xv;                                                                      \
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), offset = _mm256_setzero_ps(); \
    const int nb = n / QK8_0;                                                                    \
    const float *xd = (const float *)(x + nb), *xds = xd + nb;                                   \
    int b = 0;                                                                                   \
    for (; b + 8 <= nb; b += 8) {                                                                \
        SCALES8(b);                                                                              \
        OFFSET8(b);                                                                              \
        for (int i = 0; i < 8; i += 2) {                                                         \
            _mm_prefetch((const char *)(w + b + i) + PREFETCH_BYTES, _MM_HINT_T0);               \
            QBLOCK(BLOCK32, acc0, b + i, _mm256_permutevar8x32_ps(s, _mm256_set1_epi32(i)));     \
            QBLOCK(BLOCK32, acc1, b + i + 1,                                                     \
                   _mm256_permutevar8x32_ps(s, _mm256_set1_epi32(i + 1)));                       \
        }                                                                                        \
    }                                                                                            \
    for (; b < nb; b++)                                                                          \
        QBLOCK(TAIL32, acc0, b, _mm256_set1_ps(_cvtsh_ss(w[b].d) * x[b].d));                     \
    return hsum256(_mm256_add_ps(acc0, acc1)) - 8 * hsum256(offset);

/* Q8_0 has no offset; Q4_0's is -8 Σ d_w d_x Σx. */
#define NO_OFFSET(b) (void)xds
#define Q4_0_OFFSET(b) offset = _mm256_fmadd_ps(wd, _mm256_loadu_ps(xds + (b)), offset)

TARGET_AVX2 static float dot_q8_0_avx2(const void *wv, const void *xv, int n)
{
    DOT_INT8_BODY(BlockQ8_0, block_q8_0_avx2, NO_OFFSET, block_q8_0_avx2)
}

TARGET_AVX512 static float dot_q8_0_avx512(const void *wv, const void *xv, int n)
{
    DOT_INT8_BODY(BlockQ8_0, block_q8_0_vnni, NO_OFFSET, block_q8_0_vnni)
}

TARGET_AVX2 static float dot_q4_0_avx2(const void *wv, const void *xv, int n)
{
    DOT_INT8_BODY(BlockQ4_0, block_q4_0_unsigned_avx2, Q4_0_OFFSET, block_q4_0_avx2)
}

/* AVX-512 takes two Q4_0 blocks per 512-bit vpdpbusd, and the offset of 8 once per 8 blocks
 * as -8 Σ d_w d_x Σx, with x's d and d Σx loaded from the arrays after its blocks (see matvec):
 * per block half the instructions of the 256-bit body, which decoded a Q4_0 row at 17-18 GB/s
 * on a Zen 5 core (this one: 22-27 GB/s). */
TARGET_AVX512 static float dot_q4_0_avx512(const void *wv, const void *xv, int n)
{
    const BlockQ4_0 *w = wv;
    const BlockQ8x *x = xv;
    __m512 acc[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                      _mm512_setzero_ps() };
    __m256 offset = _mm256_setzero_ps(), tail = _mm256_setzero_ps();
    const __m512i low4 = _mm512_set1_epi8(15);
    const int nb = n / QK4_0;
    const float *xd = (const float *)(x + nb), *xds = xd + nb;
    int b = 0;
    for (; b + 8 <= nb; b += 8) {
        SCALES8(b);
        Q4_0_OFFSET(b);
        const __m512 s2 = _mm512_castps256_ps512(s);
        for (int i = 0; i < 8; i += 2) {
            _mm_prefetch((const char *)(w + b + i) + PREFETCH_BYTES, _MM_HINT_T0);
            /* [qs_i | qs_i+1], then nibbles in x's order: low i, high i, low i+1, high i+1 */
            const __m256i q = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)w[b + i].qs)),
                _mm_loadu_si128((const __m128i *)w[b + i + 1].qs), 1);
            __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
            v = _mm512_and_si512(_mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 1, 2, 0)), low4);
            const __m512i xx = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x[b + i].qs)),
                _mm256_loadu_si256((const __m256i *)x[b + i + 1].qs), 1);
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, xx);
            const __m512 scale = _mm512_permutexvar_ps(
                _mm512_set_epi32(i + 1, i + 1, i + 1, i + 1, i + 1, i + 1, i + 1, i + 1, i, i, i,
                                 i, i, i, i, i),
                s2);
            acc[i / 2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[i / 2]);
        }
    }
    for (; b < nb; b++)
        QBLOCK(block_q4_0_vnni, tail, b, _mm256_set1_ps(_cvtsh_ss(w[b].d) * x[b].d));
    const __m512 a = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    return _mm512_reduce_add_ps(a) + hsum256(tail) - 8 * hsum256(offset);
}


size_t matvec_input_bytes(int cols)
{
    /* float inputs are used where they are: only quantised ones need room */
    const size_t nb = (size_t)cols / QK8_0;
    return nb * sizeof(BlockQ8x) + 2 * nb * sizeof(float);
}

/* Q4_0 and Q8_0 multiply int8 by int8, so x is quantised: the row's nb blocks, then their d
 * and d Σx as float arrays, for dots that take 8 blocks' scales in one load. */
const void *matvec_input_part(const Mat *W, const float *x, void *buf, int c0, int c1)
{
    if (!type_kernels_of(W->type)->int8)
        return x;
    const int nb = W->cols / QK8_0;
    BlockQ8x *xq = buf;
    float *xd = (float *)(xq + nb);
    quantize_row(x + c0, xq + c0 / QK8_0, c1 - c0, 0);
    for (int b = c0 / QK8_0; b < c1 / QK8_0; b++) {
        xd[b] = xq[b].d;
        xd[nb + b] = xq[b].d * (float)xq[b].sum;
    }
    return xq;
}

const void *matvec_input(const Mat *W, const float *x, void *buf)
{
    return matvec_input_part(W, x, buf, 0, W->cols);
}

void matvec_rows(float *out, const Mat *W, const void *xin, int r0, int r1)
{
    const DotFn dot = type_kernels_of(W->type)->dot[cpu_isa()];
    for (int r = r0; r < r1; r++)
        out[r] = dot(mat_row(W, r), xin, W->cols);
}

/* out[r] = W[r] · x, each row by one thread (so the result is the same for any count). Rows
 * are handed out in chunks as threads come free: when another process holds a core, the
 * running thread takes over the late one's rows instead of waiting at the barrier. */
static void matvec(float *out, const float *x, const Mat *W, Workspace *ws)
{
    const void *xin = matvec_input(W, x, ws->xq);
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)W->rows * W->cols >= PARALLEL_MIN)
    for (int r0 = 0; r0 < W->rows; r0 += 32)
        matvec_rows(out, W, xin, r0, MIN(r0 + 32, W->rows));
}

/* ---- int8 GEMM: Q4_0/Q8_0 weights x Q8_0-quantised activations (n > 1) -----------------------
 *
 * As in ggml, activations meeting Q4_0 or Q8_0 weights are quantised too (per 32-block, scale
 * amax / 127), so the products are exact int8 x int8 sums and only the per-block scaling is
 * float. Each thread packs a panel of R weight rows (one int32 lane per row) straight from the
 * mapped file into its own buffer as int8 (Q4_0's nibbles unpacked to -8..7), which stays in
 * cache while every activation row passes over it; weights are read once per call and never
 * copied whole. The microkernels see only panels, so every path serves both types. */

/* Activation rows per microkernel call: as many accumulators as the registers hold (16 ymm,
 * 32 zmm; each column needs an int32 and a float accumulator, AVX2 also temporaries). */
#define NR_AVX2 4
#define NR_AVX_VNNI 6
#define NR_AVX512 8

static void block_i8_q8_0(const void *row, int b, int8_t q[QK8_0], uint16_t *d)
{
    const BlockQ8_0 *w = (const BlockQ8_0 *)row + b;
    memcpy(q, w->qs, QK8_0);
    *d = w->d;
}

static void block_i8_q4_0(const void *row, int b, int8_t q[QK8_0], uint16_t *d)
{
    const BlockQ4_0 *w = (const BlockQ4_0 *)row + b;
    for (int i = 0; i < QK4_0 / 2; i++) {
        q[i] = (int8_t)((w->qs[i] & 15) - 8);
        q[QK4_0 / 2 + i] = (int8_t)((w->qs[i] >> 4) - 8);
    }
    *d = w->d;
}

/* Any panel, the last partial one included; whole panels take the type's pack_avx2. */
static void pack_panel(const Mat *W, int r0, int R, uint8_t *panel)
{
    const TypeKernels *k = type_kernels_of(W->type);
    const int nb = W->cols / QK8_0;
    const size_t bb = panel_block_bytes(R);
    for (int r = 0; r < R; r++) {
        /* Rows past the end of W are zeros: their results are computed and thrown away. */
        const void *row = r0 + r < W->rows ? mat_row(W, r0 + r) : NULL;
        for (int b = 0; b < nb; b++) {
            uint8_t *blk = panel + (size_t)b * bb;
            float d = 0;
            int32_t sum = 0;
            int8_t qs[QK8_0] = { 0 };
            if (row) {
                uint16_t h;
                k->block_i8(row, b, qs, &h);
                d = fp16_to_fp32(h);
                for (int i = 0; i < QK8_0; i++)
                    sum += qs[i];
            }
            int32_t comp = -128 * sum;
            memcpy(blk + (size_t)r * 4, &d, 4);
            memcpy(blk + (size_t)(R + r) * 4, &comp, 4);
            for (int k = 0; k < QK8_0 / 4; k++)
                memcpy(blk + (size_t)(2 + k) * R * 4 + (size_t)r * 4, qs + 4 * k, 4);
        }
    }
}

/* 8 x 8 transpose of 32-bit elements: v[i] holds row i on entry, column i on return. */
TARGET_AVX2 static inline void transpose8x8_epi32(__m256i v[8])
{
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
        v[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
    }
}

/* pack_panel for a panel of whole rows of block type BT (values loaded as int8 by LOADW),
 * 8 rows at a time: the 8 4-byte groups of 8 rows' blocks are an 8 x 8 transpose, and the row
 * sums come from the transposed vectors. The scalar version took a third of the time of a
 * 256-row GEMM on an AVX-512 VNNI core. */
#define PACK_PANEL_AVX2_BODY(BT, LOADW)                                                          \
    const int nb = W->cols / QK8_0;                                                              \
    const size_t bb = panel_block_bytes(R);                                                      \
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);                    \
    for (int h = 0; h < R; h += 8) {                                                             \
        const BT *rows[8];                                                                       \
        for (int i = 0; i < 8; i++)                                                              \
            rows[i] = mat_row(W, r0 + h + i);                                                    \
        for (int b = 0; b < nb; b++) {                                                           \
            uint8_t *blk = panel + (size_t)b * bb;                                               \
            __m256i v[8], sum = _mm256_setzero_si256();                                          \
            uint16_t d[8];                                                                       \
            for (int i = 0; i < 8; i++) {                                                        \
                v[i] = LOADW(rows[i] + b);                                                       \
                d[i] = rows[i][b].d;                                                             \
            }                                                                                    \
            transpose8x8_epi32(v);                                                               \
            for (int k = 0; k < QK8_0 / 4; k++) {                                                \
                _mm256_storeu_si256((__m256i *)(blk + (size_t)(2 + k) * R * 4 + h * 4), v[k]);   \
                sum = _mm256_add_epi32(                                                          \
                    sum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v[k]), ones16));          \
            }                                                                                    \
            _mm256_storeu_ps((float *)blk + h,                                                   \
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d)));              \
            _mm256_storeu_si256((__m256i *)(blk + (size_t)(R + h) * 4),                          \
                                _mm256_sub_epi32(_mm256_setzero_si256(),                         \
                                                 _mm256_slli_epi32(sum, 7)));                    \
        }                                                                                        \
    }

TARGET_AVX2 static void pack_panel_q8_0_avx2(const Mat *W, int r0, int R, uint8_t *panel)
{
    PACK_PANEL_AVX2_BODY(BlockQ8_0, load_q8_0_avx2)
}

TARGET_AVX2 static void pack_panel_q4_0_avx2(const Mat *W, int r0, int R, uint8_t *panel)
{
    PACK_PANEL_AVX2_BODY(BlockQ4_0, load_q4_0_avx2)
}

/* One row per weight type. The int8 GEMM below and its packed panels are the same for every
 * int8 type: only the packing differs. The dots are per Isa; decoding is memory-bound, so
 * AVX-VNNI machines use the AVX2 dots (vpdpbusd would not read the weights faster) and AMX
 * machines the AVX-512 ones (tiles pay only where a weight meets many rows). */
static const TypeKernels type_kernels[] = {
    [GGML_TYPE_F32] = { .dequant = { dequant_row_f32, dequant_row_f32 },
                        .dot = { dot_f32_c, dot_f32_avx2, dot_f32_avx2, dot_f32_avx512,
                                 dot_f32_avx512 } },
    [GGML_TYPE_F16] = { .dequant = { dequant_row_f16_c, dequant_row_f16_avx2 },
                        .dot = { dot_f16_c, dot_f16_avx2, dot_f16_avx2, dot_f16_avx512,
                                 dot_f16_avx512 } },
    [GGML_TYPE_Q4_0] = { .dequant = { dequant_row_q4_0_c, dequant_row_q4_0_c },
                         .dot = { dot_q4_0_c, dot_q4_0_avx2, dot_q4_0_avx2, dot_q4_0_avx512,
                                  dot_q4_0_avx512 },
                         .int8 = TRUE, .block_i8 = block_i8_q4_0,
                         .pack_avx2 = pack_panel_q4_0_avx2 },
    [GGML_TYPE_Q8_0] = { .dequant = { dequant_row_q8_0_c, dequant_row_q8_0_avx2 },
                         .dot = { dot_q8_0_c, dot_q8_0_avx2, dot_q8_0_avx2, dot_q8_0_avx512,
                                  dot_q8_0_avx512 },
                         .int8 = TRUE, .block_i8 = block_i8_q8_0,
                         .pack_avx2 = pack_panel_q8_0_avx2 },
};

static const TypeKernels *type_kernels_of(GgmlType type)
{
    g_assert((size_t)type < G_N_ELEMENTS(type_kernels) && type_kernels[type].dot[0]);
    return &type_kernels[type];
}

static inline int32_t load_i32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* tmp[c][0..R) = the panel's rows · activation row c, for c < NR. x holds NR rows of nb blocks.
 * Written for a constant NR (always inlined into one function per count) so the accumulator
 * arrays live in registers. */
TARGET_AVX2 static inline __attribute__((always_inline)) void
panel_kernel_avx2(const uint8_t *panel, int nb, const BlockQ8x *x, int NR, float *tmp)
{
    const int R = 8;
    const size_t bb = panel_block_bytes(R);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 facc[NR_AVX2];
    for (int c = 0; c < NR; c++)
        facc[c] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = panel + (size_t)b * bb;
        __m256i acc[NR_AVX2];
        for (int c = 0; c < NR; c++)
            acc[c] = _mm256_setzero_si256();
        for (int k = 0; k < QK8_0 / 4; k++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + (2 + k) * R * 4));
            const __m256i aw = _mm256_sign_epi8(w, w); /* |w|; -128 reads as unsigned 128 */
            for (int c = 0; c < NR; c++) {
                /* pmaddubsw is unsigned x signed: the weight's sign moves onto the activation,
                 * and a pair sums to at most 2 * 128 * 127, which int16 holds. */
                __m256i xs = _mm256_sign_epi8(
                    _mm256_set1_epi32(load_i32(x[(size_t)c * nb + b].qs + 4 * k)), w);
                acc[c] = _mm256_add_epi32(acc[c],
                                          _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones));
            }
        }
        const __m256 d = _mm256_loadu_ps((const float *)blk);
        for (int c = 0; c < NR; c++)
            facc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[c]),
                                      _mm256_mul_ps(d, _mm256_set1_ps(x[(size_t)c * nb + b].d)),
                                      facc[c]);
    }
    for (int c = 0; c < NR; c++)
        _mm256_storeu_ps(tmp + c * R, facc[c]);
}

/* The vpdpbusd kernel for a panel of R rows, one int32 lane each: unsigned activations (stored
 * +128) times signed weights summed 4 at a time into int32 without saturation, the panel's
 * -128 Σw term as each block's starting value. VI/VF are the vector types, P the intrinsics'
 * prefix (_mm256 or _mm512), LOADI an unaligned integer load, DPBUSD the instruction. */
#define VNNI_KERNEL_BODY(VI, VF, P, LOADI, DPBUSD, R_, NR_MAX)                                   \
    const int R = R_;                                                                            \
    const size_t bb = panel_block_bytes(R);                                                      \
    VF facc[NR_MAX];                                                                             \
    for (int c = 0; c < NR; c++)                                                                 \
        facc[c] = P##_setzero_ps();                                                              \
    for (int b = 0; b < nb; b++) {                                                               \
        const uint8_t *blk = panel + (size_t)b * bb;                                             \
        const VI comp = LOADI(blk + R * 4);                                                      \
        VI acc[NR_MAX];                                                                          \
        for (int c = 0; c < NR; c++)                                                             \
            acc[c] = comp;                                                                       \
        for (int k = 0; k < QK8_0 / 4; k++) {                                                    \
            const VI w = LOADI(blk + (2 + k) * R * 4);                                           \
            for (int c = 0; c < NR; c++)                                                         \
                acc[c] = DPBUSD(acc[c],                                                          \
                                P##_set1_epi32(load_i32(x[(size_t)c * nb + b].qs + 4 * k)), w);  \
        }                                                                                        \
        const VF d = P##_loadu_ps((const float *)blk);                                           \
        for (int c = 0; c < NR; c++)                                                             \
            facc[c] = P##_fmadd_ps(P##_cvtepi32_ps(acc[c]),                                      \
                                   P##_mul_ps(d, P##_set1_ps(x[(size_t)c * nb + b].d)), facc[c]); \
    }                                                                                            \
    for (int c = 0; c < NR; c++)                                                                 \
        P##_storeu_ps(tmp + c * R, facc[c]);

TARGET_AVX512 static inline __attribute__((always_inline)) void
panel_kernel_avx512(const uint8_t *panel, int nb, const BlockQ8x *x, int NR, float *tmp)
{
    VNNI_KERNEL_BODY(__m512i, __m512, _mm512, _mm512_loadu_si512, _mm512_dpbusd_epi32, 16,
                     NR_AVX512)
}

#define LOADU_256(p) _mm256_loadu_si256((const __m256i *)(p))

TARGET_AVX_VNNI static inline __attribute__((always_inline)) void
panel_kernel_avx_vnni(const uint8_t *panel, int nb, const BlockQ8x *x, int NR, float *tmp)
{
    VNNI_KERNEL_BODY(__m256i, __m256, _mm256, LOADU_256, _mm256_dpbusd_avx_epi32, 8, NR_AVX_VNNI)
}

/* One inlined copy of the kernel per column count, so each has constant loop bounds. */
#define KERNEL_CASE(KERNEL, N)                                                                   \
    case N: KERNEL(panel, nb, x, N, tmp); break;

TARGET_AVX2 static void panel_avx2(const uint8_t *panel, int nb, const BlockQ8x *x, int nr,
                                   float *tmp)
{
    switch (nr) {
    KERNEL_CASE(panel_kernel_avx2, 1)
    KERNEL_CASE(panel_kernel_avx2, 2)
    KERNEL_CASE(panel_kernel_avx2, 3)
    default: panel_kernel_avx2(panel, nb, x, NR_AVX2, tmp);
    }
}

TARGET_AVX_VNNI static void panel_avx_vnni(const uint8_t *panel, int nb, const BlockQ8x *x,
                                           int nr, float *tmp)
{
    switch (nr) {
    KERNEL_CASE(panel_kernel_avx_vnni, 1)
    KERNEL_CASE(panel_kernel_avx_vnni, 2)
    KERNEL_CASE(panel_kernel_avx_vnni, 3)
    KERNEL_CASE(panel_kernel_avx_vnni, 4)
    KERNEL_CASE(panel_kernel_avx_vnni, 5)
    default: panel_kernel_avx_vnni(panel, nb, x, NR_AVX_VNNI, tmp);
    }
}

TARGET_AVX512 static void panel_avx512(const uint8_t *panel, int nb, const BlockQ8x *x, int nr,
                                       float *tmp)
{
    switch (nr) {
    KERNEL_CASE(panel_kernel_avx512, 1)
    KERNEL_CASE(panel_kernel_avx512, 2)
    KERNEL_CASE(panel_kernel_avx512, 3)
    KERNEL_CASE(panel_kernel_avx512, 4)
    KERNEL_CASE(panel_kernel_avx512, 5)
    KERNEL_CASE(panel_kernel_avx512, 6)
    KERNEL_CASE(panel_kernel_avx512, 7)
    default: panel_kernel_avx512(panel, nb, x, NR_AVX512, tmp);
    }
}

/* ---- AMX: the same GEMM on Intel's tile unit ----------------------------------------------
 *
 * tdpbssd multiplies a 16 x 32 int8 A tile (16 activation rows, one block; signed, so x is stored
 * unflipped) by a B tile (the block of a 16-row panel, already in AMX's layout of 4-byte groups)
 * into a 16 x 16 int32 C tile. Every block's sums need their own float scale, and only memory
 * connects tiles and vectors, so each block's C tile is stored and AVX-512 scales it into 16
 * accumulators. Products alternate between two sets of tiles and a stored C tile is scaled
 * AMX_LAG blocks later, so that tile and vector work can overlap. On a 16-core Xeon (family 6
 * model 207) at 16 threads, matmul-bench's Q8_0 GEMMs but the tiny ssm_x: 3.5-4.9 TFLOP/s; 3.5-4.7
 * with a lag of 2; 3.5-4.5 scaling each tile right after its store; 2.6-4.0 for 2 x 2 tiles per
 * block with the accumulators in memory; 2.6-3.6 for the AVX-512 VNNI kernel. */
#define AMX_LAG 4

#define TARGET_AMX                                                                               \
    __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

/* tmm0-1 A, tmm2-3 B, tmm4-5 C, each pair used by alternate blocks. A constant in memory: GCC 12's
 * _tile_loadconfig tells the compiler it reads 8 bytes, so a configuration filled in on the stack
 * lost its other stores. */
static const struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) amx_tile_config = {
    .palette = 1,
    .colsb = { QK8_0, QK8_0, 64, 64, 64, 64 },
    .rows = { AMX_TILE_ROWS, AMX_TILE_ROWS, QK8_0 / 4, QK8_0 / 4, AMX_TILE_ROWS, AMX_TILE_ROWS },
};

/* A thread loads the configuration before its first tile instruction ... */
TARGET_AMX static void amx_tiles_load(void)
{
    _tile_loadconfig(&amx_tile_config);
}

/* ... and releases the tiles after its last one, so the kernel need not save their 8 KiB on
 * every context switch. */
TARGET_AMX static void amx_tiles_release(void)
{
    _tile_release();
}

/* acc[m] += C[m] * dx[m] * dw: block b's C tile (blk: the panel's block, x: row 0's block) scaled
 * into the accumulators. Fully unrolled, or GCC keeps acc in memory. */
TARGET_AMX static inline __attribute__((always_inline)) void
amx_scale_tile(const int32_t *c, const uint8_t *blk, const BlockQ8x *x, int nb, __m512 *acc)
{
    const __m512 d = _mm512_loadu_ps((const float *)blk);
#pragma GCC unroll 16
    for (int m = 0; m < AMX_TILE_ROWS; m++)
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + m * 16)),
                                 _mm512_mul_ps(d, _mm512_set1_ps(x[(size_t)m * nb].d)), acc[m]);
}

/* C tile TC = block B of x (A tile TA) · block B of the panel (B tile TB) */
#define AMX_PRODUCT(TA, TB, TC, B)                                                               \
    do {                                                                                         \
        _tile_loadd(TA, x[B].qs, xs);                                                            \
        _tile_loadd(TB, panel + (size_t)(B) * bb + 2 * R * 4, R * 4);                            \
        _tile_zero(TC);                                                                          \
        _tile_dpbssd(TC, TA, TB);                                                                \
    } while (0)

/* tmp[m][r] = activation row m · panel row r for 16 rows of x (nb blocks each) and the panel's
 * 16 rows. Step b multiplies block b, stores block b - 1's C tile and scales block b - AMX_LAG's. */
TARGET_AMX static void amx_panel(const uint8_t *panel, int nb, const BlockQ8x *x, float *tmp)
{
    const int R = AMX_TILE_ROWS;
    const size_t bb = panel_block_bytes(R), xs = (size_t)nb * sizeof(BlockQ8x);
    int32_t c[AMX_LAG][AMX_TILE_ROWS * 16] __attribute__((aligned(64)));
    __m512 acc[AMX_TILE_ROWS];
#pragma GCC unroll 16
    for (int m = 0; m < AMX_TILE_ROWS; m++)
        acc[m] = _mm512_setzero_ps();
    for (int b = 0; b < nb + AMX_LAG; b++) {
        if (b < nb) {
            if (b & 1)
                AMX_PRODUCT(1, 3, 5, b);
            else
                AMX_PRODUCT(0, 2, 4, b);
        }
        if (b >= 1 && b <= nb) {
            if ((b - 1) & 1)
                _tile_stored(5, c[(b - 1) % AMX_LAG], 64);
            else
                _tile_stored(4, c[(b - 1) % AMX_LAG], 64);
        }
        const int old = b - AMX_LAG;
        if (old >= 0)
            amx_scale_tile(c[old % AMX_LAG], panel + (size_t)old * bb, x + old, nb, acc);
    }
#pragma GCC unroll 16
    for (int m = 0; m < AMX_TILE_ROWS; m++)
        _mm512_storeu_ps(tmp + m * R, acc[m]);
}

/* out[n][rows] = x[n][cols] · Wᵀ (+ bias) for Q4_0 or Q8_0 W: every output element is one
 * thread's fixed-order sum, so results do not depend on the thread count. */
static void gemm_int8(float *out, const float *x, int n, const Mat *W, const float *bias,
                      Workspace *ws)
{
    const Isa isa = cpu_isa();
    const TypeKernels *k = type_kernels_of(W->type);
    const int rows = W->rows, cols = W->cols, nb = cols / QK8_0;
    const gboolean big = (size_t)n * rows * cols >= PARALLEL_MIN;
    BlockQ8x *xq = ws->xq;
    /* vpdpbusd multiplies unsigned by signed: x goes in +128 (see panel_block_bytes) */
    const uint8_t flip = isa == ISA_AVX512 || isa == ISA_AVX_VNNI ? 0x80 : 0;
#pragma omp parallel for schedule(static) if (big)
    for (int i = 0; i < n; i++)
        quantize_row(x + (size_t)i * cols, xq + (size_t)i * nb, cols, flip);
    memset(xq + (size_t)n * nb, 0, (size_t)(quantized_rows(n) - n) * nb * sizeof(BlockQ8x));

    if (isa == ISA_C) {
#pragma omp parallel for schedule(dynamic, 8) if (big)
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < n; i++)
                out[(size_t)i * rows + r] = k->dot[ISA_C](mat_row(W, r), xq + (size_t)i * nb, cols) +
                                            (bias ? bias[r] : 0.0f);
        return;
    }

    const int R = panel_rows(isa);
    const int NR = isa == ISA_AMX      ? AMX_TILE_ROWS
                   : isa == ISA_AVX512   ? NR_AVX512
                   : isa == ISA_AVX_VNNI ? NR_AVX_VNNI
                                         : NR_AVX2;
    const int n_panels = (rows + R - 1) / R;
    const size_t panel_bytes = (size_t)nb * panel_block_bytes(R);
#pragma omp parallel if (big)
    {
        uint8_t *panel = ws->panels + (size_t)omp_get_thread_num() * panel_bytes;
        float tmp[MAX(NR_AVX512, AMX_TILE_ROWS) * 16];
        if (isa == ISA_AMX)
            amx_tiles_load();
#pragma omp for schedule(dynamic, 1)
        for (int p = 0; p < n_panels; p++) {
            const int r0 = p * R, valid = MIN(R, rows - r0);
            if (valid == R)
                k->pack_avx2(W, r0, R, panel);
            else
                pack_panel(W, r0, R, panel);
            for (int i0 = 0; i0 < n; i0 += NR) {
                const int nr = MIN(NR, n - i0);
                const BlockQ8x *xi = xq + (size_t)i0 * nb;
                if (isa == ISA_AMX)
                    amx_panel(panel, nb, xi, tmp);
                else if (isa == ISA_AVX512)
                    panel_avx512(panel, nb, xi, nr, tmp);
                else if (isa == ISA_AVX_VNNI)
                    panel_avx_vnni(panel, nb, xi, nr, tmp);
                else
                    panel_avx2(panel, nb, xi, nr, tmp);
                for (int c = 0; c < nr; c++)
                    for (int r = 0; r < valid; r++)
                        out[(size_t)(i0 + c) * rows + r0 + r] =
                            tmp[c * R + r] + (bias ? bias[r0 + r] : 0.0f);
            }
        }
        if (isa == ISA_AMX)
            amx_tiles_release();
    }
}

/* ---- matmul ----------------------------------------------------------------------------------- */

static void dequant_tile(const Mat *W, int r0, int nr, float *tile)
{
#pragma omp parallel for schedule(static) if ((size_t)nr * W->cols >= PARALLEL_MIN)
    for (int r = 0; r < nr; r++)
        mat_get_row(W, r0 + r, tile + (size_t)r * W->cols);
}

/* out[n][rows] (+)= x[n][cols] · Wᵀ for weight rows already in float form. */
static void sgemm_xwt(float *out, int ldo, const float *x, int n, const float *w, int rows,
                      int cols, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows, cols, 1.0f, x, cols, w, cols,
                beta, out, ldo);
}

void matmul(float *out, const float *x, int n, const Mat *W, const float *bias, Workspace *ws)
{
    int rows = W->rows, cols = W->cols;
    /* Quantised rows are whole blocks; the model loader rejects other widths before this point. */
    g_return_if_fail(ggml_row_size(W->type, cols) != 0);
    if (n <= 0 || rows <= 0)
        return;
    ensure_capacity(ws, W->type, cols, n);

    if (n == 1) {
        matvec(out, x, W, ws);
        if (bias)
            add(out, bias, rows);
        return;
    }

    if (type_kernels_of(W->type)->int8) {
        gemm_int8(out, x, n, W, bias, ws);
        return;
    }
    /* The bias goes in first so every GEMM accumulates onto it (beta = 1). */
    float beta = 0.0f;
    if (bias) {
        for (int i = 0; i < n; i++)
            memcpy(out + (size_t)i * rows, bias, (size_t)rows * sizeof(float));
        beta = 1.0f;
    }
    if (W->type == GGML_TYPE_F32) {
        sgemm_xwt(out, rows, x, n, W->data, rows, cols, beta);
        return;
    }
    const int step = tile_rows(cols);
    for (int r0 = 0; r0 < rows; r0 += step) {
        int nr = MIN(step, rows - r0);
        dequant_tile(W, r0, nr, ws->tile);
        sgemm_xwt(out + r0, rows, x, n, ws->tile, nr, cols, beta);
    }
}

/* ---- row-wise and element-wise kernels ------------------------------------------------------ */

void layernorm(float *out, const float *x, const float *w, const float *b, int n, int dim,
               float eps)
{
#pragma omp parallel for schedule(static) if ((size_t)n * dim >= PARALLEL_MIN)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        double sum = 0, sq = 0;
        for (int j = 0; j < dim; j++)
            sum += xi[j];
        double mean = sum / dim;
        for (int j = 0; j < dim; j++)
            sq += (xi[j] - mean) * (xi[j] - mean);
        double inv = 1.0 / sqrt(sq / dim + eps);
        for (int j = 0; j < dim; j++)
            oi[j] = (float)((xi[j] - mean) * inv) * w[j] + b[j];
    }
}

void rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps)
{
#pragma omp parallel for schedule(static) if ((size_t)n * dim >= PARALLEL_MIN)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        double sq = 0;
        for (int j = 0; j < dim; j++)
            sq += (double)xi[j] * xi[j];
        double inv = 1.0 / sqrt(sq / dim + eps);
        for (int j = 0; j < dim; j++)
            oi[j] = (float)(xi[j] * inv) * w[j];
    }
}

/* erfc(a) for a >= 0 to 1.2e-7 relative (Numerical Recipes' erfcc, a Chebyshev fit of
 * erfc(a) e^(a^2) in t), through fast_expf so that GELU vectorises. */
static inline float erfc_nonneg(float a)
{
    const float t = 1.0f / (1.0f + 0.5f * a);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    return t * fast_expf(p - a * a);
}

/* 0.5 x (1 + erf(z)), z = x / sqrt 2, with erf(z) = sign(z) (1 - erfc(|z|)). */
SIMD_TARGETS static void gelu_span(float *x, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        const float v = x[i], half_erfc = 0.5f * erfc_nonneg(fabsf(v) * (float)M_SQRT1_2);
        x[i] = v * (0.5f + copysignf(0.5f - half_erfc, v));
    }
}

SIMD_TARGETS static void silu_span(float *x, size_t len)
{
    for (size_t i = 0; i < len; i++)
        x[i] = x[i] / (1.0f + fast_expf(-x[i]));
}

/* Elements per parallel chunk of an element-wise kernel. */
#define SPAN 4096

void gelu(float *x, size_t len)
{
#pragma omp parallel for schedule(static) if (len >= PARALLEL_MIN)
    for (size_t i = 0; i < len; i += SPAN)
        gelu_span(x + i, MIN(SPAN, len - i));
}

void silu(float *x, size_t len)
{
#pragma omp parallel for schedule(static) if (len >= PARALLEL_MIN)
    for (size_t i = 0; i < len; i += SPAN)
        silu_span(x + i, MIN(SPAN, len - i));
}

/* Lanes of partial max / sum, so those reductions vectorise without reassociation flags. */
#define LANES 16

/* A float's bits as an int32 in the floats' order (NaN aside): negative floats have their
 * magnitude bits flipped. Its own inverse. GCC vectorises an integer max but not a float one
 * (without -ffinite-math-only). */
static inline int32_t float_order(float f)
{
    int32_t i;
    memcpy(&i, &f, 4);
    return i ^ (int32_t)((uint32_t)(i >> 31) >> 1);
}

static inline float order_float(int32_t i)
{
    i ^= (int32_t)((uint32_t)(i >> 31) >> 1);
    float f;
    memcpy(&f, &i, 4);
    return f;
}

static inline float max_of(const float *x, int len)
{
    int32_t m[LANES], max = float_order(x[0]);
    for (int l = 0; l < LANES; l++)
        m[l] = max;
    int i = 0;
    for (; i + LANES <= len; i += LANES)
        for (int l = 0; l < LANES; l++) {
            const int32_t v = float_order(x[i + l]);
            m[l] = v > m[l] ? v : m[l];
        }
    for (; i < len; i++)
        max = MAX(max, float_order(x[i]));
    for (int l = 0; l < LANES; l++)
        max = MAX(max, m[l]);
    return order_float(max);
}

SIMD_TARGETS static void softmax_clones(float *x, int len)
{
    float sum[LANES] = {0};
    const float max = max_of(x, len);
    int i;
    for (i = 0; i < len; i++)
        x[i] = fast_expf(x[i] - max);
    for (i = 0; i + LANES <= len; i += LANES)
        for (int l = 0; l < LANES; l++)
            sum[l] += x[i + l];
    for (; i < len; i++)
        sum[0] += x[i];
    double total = 0;
    for (int l = 0; l < LANES; l++)
        total += sum[l];
    float inv = (float)(1.0 / total);
    for (i = 0; i < len; i++)
        x[i] *= inv;
}

/* Not multiversioned itself: clang 14 emits no plain symbol for an extern function with
 * target_clones unless every declaration carries the attribute (vit.c failed to link). */
void softmax(float *x, int len)
{
    softmax_clones(x, len);
}

void add(float *x, const float *y, size_t len)
{
#pragma omp parallel for schedule(static) if (len >= PARALLEL_MIN)
    for (size_t i = 0; i < len; i++)
        x[i] += y[i];
}

void scale_rows(float *x, const float *gamma, int n, int dim)
{
#pragma omp parallel for schedule(static) if ((size_t)n * dim >= PARALLEL_MIN)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dim; j++)
            x[(size_t)i * dim + j] *= gamma[j];
}

void add_scaled_rows(float *x, const float *y, const float *gamma, int n, int dim)
{
#pragma omp parallel for schedule(static) if ((size_t)n * dim >= PARALLEL_MIN)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dim; j++)
            x[(size_t)i * dim + j] += gamma[j] * y[(size_t)i * dim + j];
}

int ops_threads(void)
{
    return omp_get_max_threads();
}
