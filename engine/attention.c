/* attention.c - softmax(scale · q kᵀ) v per head, in the engine's own float kernels.
 *
 * With Q8_0/Q4_0 weights these two products per head were vision's last OpenBLAS work, and
 * OpenBLAS's speed depends on it recognising the CPU: Debian 12's 0.3.21 falls back to its
 * Prescott kernels on Sapphire-Rapids-class Xeons, which took vision from 1.33 to 2.52 s at 16
 * threads. Here they are plain GEMMs with one register-blocked microkernel, as in BLIS: a tile
 * of MR rows of A times one packed panel of B, NR columns wide, kept in MR x NR/VEC vector
 * accumulators. B is packed per head (kᵀ for q kᵀ, v for p v) into panels whose rows are NR
 * consecutive floats, so a k step is NR/VEC vector loads and MR broadcasts of A. Each thread
 * takes one head's block of rows at a time: q kᵀ into its own scores rows, softmax, then p v
 * straight into the output, so the T x T scores never leave the thread's cache.
 */
#include "attention.h"

#include <glib.h>
#include <immintrin.h>
#include <omp.h>
#include <string.h>

#include "ops.h"

/* Tile rows per ISA: as many accumulators as the registers hold with room for B's vectors and
 * a broadcast (AVX-512: 12 x 2 of 32 zmm; AVX2: 6 x 2 of 16 ymm). */
#define MR_AVX512 12
#define MR_AVX2 6
#define MR_C 4
#define MR_MAX MR_AVX512
/* The widest panel any ISA packs (AVX-512: two 16-float vectors); buffers are sized for it. */
#define NR_MAX 32
/* Tiles of rows per work item: enough rows that a panel of B is reused from L1, few enough that
 * items outnumber threads (T = 729 and 16 heads make 256 items on AVX-512). */
#define TILES_PER_BLOCK 4

/* c[r][0..w) = alpha Σ_k a[r][k] b[k][0..w) for r < mr, where a's rows are lda apart (MR of
 * them are read, whatever mr), b is a panel of K rows of w floats and c's rows are ldc apart. */
typedef void (*TileFn)(const float *a, int lda, const float *b, int K, float alpha, float *c,
                       int ldc, int mr);

typedef struct {
    int mr;          /* rows per tile */
    int vec;         /* floats per vector: the narrow panel's width */
    int nv;          /* vectors per full panel: NR = vec * nv */
    TileFn narrow;   /* a panel of one vector */
    TileFn wide;     /* a panel of nv vectors */
} Kernels;

/* ---- microkernels ---------------------------------------------------------------------------- */

/* Written for constant NV (always inlined into one function per width) so that the
 * accumulators live in registers. */
#define TILE_BODY(VF, P, VEC, MR, NV)                                                            \
    VF acc[MR][2];                                                                               \
    for (int r = 0; r < MR; r++)                                                                 \
        for (int v = 0; v < NV; v++)                                                             \
            acc[r][v] = P##_setzero_ps();                                                        \
    for (int k = 0; k < K; k++) {                                                                \
        VF bv[2];                                                                                \
        for (int v = 0; v < NV; v++)                                                             \
            bv[v] = P##_loadu_ps(b + (size_t)k * NV * VEC + v * VEC);                            \
        for (int r = 0; r < MR; r++) {                                                           \
            const VF ar = P##_set1_ps(a[(size_t)r * lda + k]);                                   \
            for (int v = 0; v < NV; v++)                                                         \
                acc[r][v] = P##_fmadd_ps(ar, bv[v], acc[r][v]);                                  \
        }                                                                                        \
    }                                                                                            \
    const VF al = P##_set1_ps(alpha);                                                            \
    for (int r = 0; r < MR; r++)                                                                 \
        if (r < mr)                                                                              \
            for (int v = 0; v < NV; v++)                                                         \
                P##_storeu_ps(c + (size_t)r * ldc + v * VEC, P##_mul_ps(al, acc[r][v]));

TARGET_AVX512 static inline __attribute__((always_inline)) void
tile_avx512(const float *a, int lda, const float *b, int K, float alpha, float *c, int ldc, int mr,
            const int NV)
{
    TILE_BODY(__m512, _mm512, 16, MR_AVX512, NV)
}

TARGET_AVX512 static void tile_avx512_1(const float *a, int lda, const float *b, int K,
                                        float alpha, float *c, int ldc, int mr)
{
    tile_avx512(a, lda, b, K, alpha, c, ldc, mr, 1);
}

TARGET_AVX512 static void tile_avx512_2(const float *a, int lda, const float *b, int K,
                                        float alpha, float *c, int ldc, int mr)
{
    tile_avx512(a, lda, b, K, alpha, c, ldc, mr, 2);
}

TARGET_AVX2 static inline __attribute__((always_inline)) void
tile_avx2(const float *a, int lda, const float *b, int K, float alpha, float *c, int ldc, int mr,
          const int NV)
{
    TILE_BODY(__m256, _mm256, 8, MR_AVX2, NV)
}

TARGET_AVX2 static void tile_avx2_1(const float *a, int lda, const float *b, int K, float alpha,
                                    float *c, int ldc, int mr)
{
    tile_avx2(a, lda, b, K, alpha, c, ldc, mr, 1);
}

TARGET_AVX2 static void tile_avx2_2(const float *a, int lda, const float *b, int K, float alpha,
                                    float *c, int ldc, int mr)
{
    tile_avx2(a, lda, b, K, alpha, c, ldc, mr, 2);
}

/* Portable: 8 columns, which the compiler may still vectorise for the default target. */
#define VEC_C 8

static void tile_c(const float *a, int lda, const float *b, int K, float alpha, float *c, int ldc,
                   int mr)
{
    float acc[MR_C][VEC_C] = { { 0 } };
    for (int k = 0; k < K; k++)
        for (int r = 0; r < MR_C; r++) {
            const float ar = a[(size_t)r * lda + k];
            /* across the columns: left to itself GCC vectorised along k, with shuffles */
#pragma omp simd
            for (int n = 0; n < VEC_C; n++)
                acc[r][n] += ar * b[(size_t)k * VEC_C + n];
        }
    for (int r = 0; r < mr; r++)
        for (int n = 0; n < VEC_C; n++)
            c[(size_t)r * ldc + n] = alpha * acc[r][n];
}

/* AVX-VNNI machines have AVX2's float units; AMX ones AVX-512's (the tiles are int8 here). */
static const Kernels kernels[] = {
    [ISA_C] = { MR_C, VEC_C, 1, tile_c, tile_c },
    [ISA_AVX2] = { MR_AVX2, 8, 2, tile_avx2_1, tile_avx2_2 },
    [ISA_AVX_VNNI] = { MR_AVX2, 8, 2, tile_avx2_1, tile_avx2_2 },
    [ISA_AVX512] = { MR_AVX512, 16, 2, tile_avx512_1, tile_avx512_2 },
    [ISA_AMX] = { MR_AVX512, 16, 2, tile_avx512_1, tile_avx512_2 },
};

/* ---- packing ----------------------------------------------------------------------------------- */

static int round_up(int n, int m) { return (n + m - 1) / m * m; }

/* Width of the panel that starts `left` columns before the end of B: full, or one vector when
 * that covers the rest (head_dim 72 on AVX-512: 32 + 32 + 16, not + 32). */
static int panel_width(const Kernels *kn, int left)
{
    return left > kn->vec ? kn->vec * kn->nv : kn->vec;
}

/* A packed B is its panels one after the other: the panel of columns j0 .. j0+w is
 * panel[k][c] = B[k][j0 + c] for k < K, zeros past B's last column, and starts at j0 * K. */

/* The panel of kᵀ (K = hd) for tokens j0 .. j0+w, from k's rows (ldk apart, n of them). */
static void pack_kt_panel(float *panel, const float *k, size_t ldk, int hd, int n, int j0, int w)
{
    for (int c = 0; c < w; c++)
        for (int d = 0; d < hd; d++)
            panel[(size_t)d * w + c] = j0 + c < n ? k[(size_t)(j0 + c) * ldk + d] : 0.0f;
}

/* The panel of v (K = T rows, ldv apart, of n columns) for columns j0 .. j0+w: row copies. */
static void pack_v_panel(float *panel, const float *v, size_t ldv, int T, int n, int j0, int w)
{
    const int valid = MIN(w, n - j0);
    for (int t = 0; t < T; t++) {
        memcpy(panel + (size_t)t * w, v + t * ldv + j0, valid * sizeof(float));
        memset(panel + (size_t)t * w + valid, 0, (w - valid) * sizeof(float));
    }
}

/* Floats of one head's packed kᵀ ([hd][T] in panels) and v ([T][hd] in panels). */
static size_t packed_kt_floats(int T, int hd) { return (size_t)round_up(T, NR_MAX) * hd; }
static size_t packed_head_floats(int T, int hd)
{
    return packed_kt_floats(T, hd) + (size_t)T * round_up(hd, NR_MAX);
}

/* Rows of q and scores a thread works on at a time, on every ISA. */
#define MB_MAX (TILES_PER_BLOCK * MR_MAX)

/* Floats of one thread's rows: q (MB rows of hd) and scores (MB rows of T rounded up to a
 * panel). */
static size_t thread_floats(int T, int hd)
{
    return (size_t)MB_MAX * hd + (size_t)MB_MAX * round_up(T, NR_MAX);
}

size_t attention_scratch_floats(int T, int n_heads, int head_dim, int threads)
{
    return (size_t)n_heads * packed_head_floats(T, head_dim) +
           (size_t)threads * thread_floats(T, head_dim);
}

/* ---- attention --------------------------------------------------------------------------------- */

/* One attention() call's arguments, for its work items. */
typedef struct {
    const Kernels *kn;
    const float *qkv;
    int T, C, hd;      /* tokens, width (qkv rows are 3C), head dim */
    float scale;
    const float *packed;
    float *out;
    int ldo;
} Heads;

/* out[i][0..n_cols) = alpha a[i] · B for i < n: a's rows lda apart (the last tile reads up to
 * round_up(n, MR) rows), B[K][n_cols] packed in panels, out's rows ldo apart. Without `exact`
 * out's rows have room for whole panels; with it, a last panel wider than what is left of B
 * goes through a tile buffer. */
static void gemm_panels(const Kernels *kn, const float *a, int lda, int n, const float *B, int K,
                        int n_cols, float alpha, float *out, int ldo, gboolean exact)
{
    const int NR = kn->vec * kn->nv;
    float tile[MR_MAX * NR_MAX];
    for (int j0 = 0; j0 < n_cols; j0 += NR) {
        const int w = panel_width(kn, n_cols - j0);
        const TileFn fn = w == NR ? kn->wide : kn->narrow;
        const float *panel = B + (size_t)j0 * K;
        for (int r0 = 0; r0 < n; r0 += kn->mr) {
            const int mr = MIN(kn->mr, n - r0);
            float *o = out + (size_t)r0 * ldo + j0;
            if (!exact || j0 + w <= n_cols) {
                fn(a + (size_t)r0 * lda, lda, panel, K, alpha, o, ldo, mr);
                continue;
            }
            fn(a + (size_t)r0 * lda, lda, panel, K, alpha, tile, w, mr);
            for (int r = 0; r < mr; r++)
                memcpy(o + (size_t)r * ldo, tile + (size_t)r * w, (n_cols - j0) * sizeof(float));
        }
    }
}

/* Rows i0 .. i0+n of head h: s = scale q kᵀ, softmax along each row, out = s v. q (MB rows of
 * hd) and s (MB rows of ld_s >= T rounded up to a panel) are the thread's. */
static void head_rows(const Heads *a, int h, int i0, int n, float *q, float *s, int ld_s)
{
    const int T = a->T, hd = a->hd;
    const float *kt = a->packed + (size_t)h * packed_head_floats(T, hd);
    const float *v = kt + packed_kt_floats(T, hd);
    /* q's rows are 3C apart in qkv and the last tile may read past them: a copy has neither. */
    for (int i = 0; i < n; i++)
        memcpy(q + (size_t)i * hd, a->qkv + (size_t)(i0 + i) * 3 * a->C + h * hd,
               hd * sizeof(float));
    gemm_panels(a->kn, q, hd, n, kt, hd, T, a->scale, s, ld_s, FALSE);
    for (int i = 0; i < n; i++)
        softmax(s + (size_t)i * ld_s, T);
    gemm_panels(a->kn, s, ld_s, n, v, T, hd, 1.0f, a->out + (size_t)i0 * a->ldo + h * hd, a->ldo,
                TRUE);
}

void attention(float *out, int ldo, const float *qkv, int T, int n_heads, int hd, float scale,
               float *scratch)
{
    float *packed = scratch, *rows = scratch + (size_t)n_heads * packed_head_floats(T, hd);
    const Kernels *kn = &kernels[cpu_isa()];
    const int C = n_heads * hd, NR = kn->vec * kn->nv;
    const Heads a = { kn, qkv, T, C, hd, scale, packed, out, ldo };

#pragma omp parallel for schedule(static)
    for (int h = 0; h < n_heads; h++) {
        float *kt = packed + (size_t)h * packed_head_floats(T, hd);
        float *v = kt + packed_kt_floats(T, hd);
        for (int j0 = 0; j0 < T; j0 += NR)
            pack_kt_panel(kt + (size_t)j0 * hd, qkv + C + h * hd, 3 * (size_t)C, hd, T, j0,
                          panel_width(kn, T - j0));
        for (int j0 = 0; j0 < hd; j0 += NR)
            pack_v_panel(v + (size_t)j0 * T, qkv + 2 * C + h * hd, 3 * (size_t)C, T, hd, j0,
                         panel_width(kn, hd - j0));
    }

    const int MB = TILES_PER_BLOCK * kn->mr, n_blocks = (T + MB - 1) / MB;
    const int ld_s = round_up(T, NR);
#pragma omp parallel
    {
        /* The rows past a block's end that a tile reads hold earlier rows or the scratch's
         * zeros: finite, and their results are not stored. */
        float *q = rows + (size_t)omp_get_thread_num() * thread_floats(T, hd);
        float *s = q + (size_t)MB_MAX * hd;
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_heads * n_blocks; it++) {
            const int h = it / n_blocks, i0 = it % n_blocks * MB;
            head_rows(&a, h, i0, MIN(MB, T - i0), q, s, ld_s);
        }
    }
}
