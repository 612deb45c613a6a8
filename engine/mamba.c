/* mamba.c - the Mamba-1 language model (docs/cobra-spec.md section 5).
 *
 * Prefill runs chunk by chunk, and within a chunk layer by layer: every projection is one GEMM
 * over the chunk; the causal conv and the selective scan continue from the state the previous
 * chunk left, vectorised over channels with time as the serial loop. The recurrent step (one
 * token) runs the same kernels as matrix-vector products and one-token scans, scheduled as one
 * parallel region per token (mamba_step). Nothing grows with the number of positions.
 */
#include "mamba.h"

#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <sched.h>
#endif

#include "cobra.h"

/* The scan keeps a block of channels' state on the stack (real models use 16). */
#define MAX_D_STATE 256

/* ---- loading ---- */

static gboolean get_dim(const GgufFile *f, const char *key, uint64_t max, int *out, GError **error)
{
    uint64_t v;
    if (!gguf_get_uint(f, key, max, &v, error))
        return FALSE;
    if (v == 0) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: key %s must be > 0",
                    gguf_path(f), key);
        return FALSE;
    }
    *out = (int)v;
    return TRUE;
}

/* An F32 tensor of shape ne (ggml order). */
static const float *require_f32(const GgufFile *f, const char *name, int n_dims, int64_t ne0,
                                int64_t ne1, GError **error)
{
    const int64_t ne[2] = {ne0, ne1};
    const GgufTensor *t = gguf_require_tensor(f, name, n_dims, ne, GGUF_TYPES_F32, error);
    return t ? t->data : NULL;
}

static gboolean load_layer(MambaLayer *l, const Mamba *m, int i, const GgufFile *f,
                           GError **error)
{
    const int d = m->d_model, di = m->d_inner, ds = m->d_state, dc = m->d_conv, r = m->dt_rank;
    char name[96];
#define NAME(suffix) (g_snprintf(name, sizeof name, "blk.%d." suffix, i), name)
    return (l->norm = require_f32(f, NAME("attn_norm.weight"), 1, d, 1, error)) &&
           mat_require(f, NAME("ssm_in.weight"), 2 * (int64_t)di, d, GGUF_TYPES_MATRIX,
                       &l->in_proj, error) &&
           (l->conv_w = require_f32(f, NAME("ssm_conv1d.weight"), 2, dc, di, error)) &&
           (l->conv_b = require_f32(f, NAME("ssm_conv1d.bias"), 1, di, 1, error)) &&
           mat_require(f, NAME("ssm_x.weight"), r + 2 * (int64_t)ds, di, GGUF_TYPES_MATRIX,
                       &l->x_proj, error) &&
           mat_require(f, NAME("ssm_dt.weight"), di, r, GGUF_TYPES_MATRIX, &l->dt_proj,
                       error) &&
           (l->dt_b = require_f32(f, NAME("ssm_dt.bias"), 1, di, 1, error)) &&
           (l->A = require_f32(f, NAME("ssm_a"), 2, ds, di, error)) &&
           (l->D = require_f32(f, NAME("ssm_d"), 1, di, 1, error)) &&
           mat_require(f, NAME("ssm_out.weight"), d, di, GGUF_TYPES_MATRIX, &l->out_proj,
                       error);
#undef NAME
}

gboolean mamba_load(Mamba *m, const GgufFile *f, GError **error)
{
    memset(m, 0, sizeof *m);
    /* Bounds keep every product of dims (state, activations) far from overflow. */
    const uint64_t max_dim = 1u << 20;
    double eps;
    if (!get_dim(f, "mamba.embedding_length", max_dim, &m->d_model, error) ||
        !get_dim(f, "mamba.block_count", 4096, &m->n_layer, error) ||
        !get_dim(f, "mamba.ssm.inner_size", max_dim, &m->d_inner, error) ||
        !get_dim(f, "mamba.ssm.state_size", MAX_D_STATE, &m->d_state, error) ||
        !get_dim(f, "mamba.ssm.conv_kernel", 4096, &m->d_conv, error) ||
        !get_dim(f, "mamba.ssm.time_step_rank", max_dim, &m->dt_rank, error) ||
        !get_dim(f, "mamba.vocab_size", 1u << 24, &m->n_vocab, error) ||
        !gguf_get_float(f, "mamba.attention.layer_norm_rms_epsilon", &eps, error))
        return FALSE;
    if (!(eps > 0 && eps < 1)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: key mamba.attention.layer_norm_rms_epsilon = %g is not in (0, 1)",
                    gguf_path(f), eps);
        return FALSE;
    }
    m->eps = (float)eps;

    const char *head = gguf_find_tensor(f, "output.weight") ? "output.weight" : "token_embd.weight";
    if (!mat_require(f, "token_embd.weight", m->n_vocab, m->d_model, GGUF_TYPES_MATRIX,
                     &m->embed, error) ||
        !mat_require(f, head, m->n_vocab, m->d_model, GGUF_TYPES_MATRIX, &m->lm_head, error) ||
        !(m->norm_f = require_f32(f, "output_norm.weight", 1, m->d_model, 1, error)))
        return FALSE;

    m->layers = g_new0(MambaLayer, m->n_layer);
    for (int i = 0; i < m->n_layer; i++) {
        if (!load_layer(&m->layers[i], m, i, f, error)) {
            mamba_free(m);
            return FALSE;
        }
    }
    return TRUE;
}

void mamba_free(Mamba *m)
{
    g_free(m->layers);
    m->layers = NULL;
}

int mamba_max_cols(const Mamba *m)
{
    return MAX(m->d_model, MAX(m->d_inner, m->dt_rank));
}

/* ---- state ---- */

static size_t conv_floats(const Mamba *m)
{
    return (size_t)m->n_layer * m->d_inner * m->d_conv;
}

static size_t ssm_floats(const Mamba *m)
{
    return (size_t)m->n_layer * m->d_inner * m->d_state;
}

void mamba_state_init(MambaState *s, const Mamba *m)
{
    s->conv = g_new0(float, conv_floats(m));
    s->ssm = g_new0(float, ssm_floats(m));
}

void mamba_state_reset(MambaState *s, const Mamba *m)
{
    memset(s->conv, 0, conv_floats(m) * sizeof(float));
    memset(s->ssm, 0, ssm_floats(m) * sizeof(float));
}

void mamba_state_copy(MambaState *dst, const MambaState *src, const Mamba *m)
{
    memcpy(dst->conv, src->conv, conv_floats(m) * sizeof(float));
    memcpy(dst->ssm, src->ssm, ssm_floats(m) * sizeof(float));
}

void mamba_state_free(MambaState *s)
{
    g_free(s->conv);
    g_free(s->ssm);
    s->conv = s->ssm = NULL;
}

/* ---- activations ---- */

struct MambaBuffers {
    int max_chunk;
    float *res;   /* [chunk][d]   residual stream */
    float *xn;    /* [chunk][d]   normed input of a layer, then its output */
    float *xz;    /* [chunk][2di] in_proj: x then z */
    float *xpad;  /* [dc-1+chunk][di] conv inputs: state then x */
    float *conv_wT; /* [dc][di]   conv weight transposed */
    float *xc;    /* [chunk][di]  SiLU(conv(x)) */
    float *dbc;   /* [chunk][r+2ds] x_proj: dt_low, B, C */
    float *dtl;   /* [chunk][r]   dt_low, contiguous for the dt_proj GEMM */
    float *dt;    /* [chunk][di]  dt_proj + bias (the scan takes the softplus) */
    float *y;     /* [chunk][di]  scan output, gated */
    void *xin[2]; /* matvec_input_bytes(max cols) each: a decoded token's products' inputs */
};

MambaBuffers *mamba_buffers_new(const Mamba *m, int max_chunk)
{
    const size_t n = MAX(max_chunk, 1);
    const size_t d = m->d_model, di = m->d_inner, r = m->dt_rank, ds = m->d_state;
    MambaBuffers *b = g_new0(MambaBuffers, 1);
    b->max_chunk = (int)n;
    b->res = g_new(float, n * d);
    b->xn = g_new(float, n * d);
    b->xz = g_new(float, n * 2 * di);
    b->xpad = g_new(float, (m->d_conv - 1 + n) * di);
    b->conv_wT = g_new(float, (size_t)m->d_conv * di);
    b->xc = g_new(float, n * di);
    b->dbc = g_new(float, n * (r + 2 * ds));
    b->dtl = g_new(float, n * r);
    b->dt = g_new(float, n * di);
    b->y = g_new(float, n * di);
    for (int i = 0; i < 2; i++)
        b->xin[i] = g_malloc(matvec_input_bytes(mamba_max_cols(m)));
    return b;
}

void mamba_buffers_free(MambaBuffers *b)
{
    if (!b)
        return;
    g_free(b->res);
    g_free(b->xn);
    g_free(b->xz);
    g_free(b->xpad);
    g_free(b->conv_wT);
    g_free(b->xc);
    g_free(b->dbc);
    g_free(b->dtl);
    g_free(b->dt);
    g_free(b->y);
    g_free(b->xin[0]);
    g_free(b->xin[1]);
    g_free(b);
}

/* ---- forward ---- */

void mamba_embed(const Mamba *m, const int32_t *ids, int n, float *out)
{
    for (int i = 0; i < n; i++)
        mat_get_row(&m->embed, ids[i], out + (size_t)i * m->d_model);
}

/* Below this many multiply-adds a parallel region costs more than it saves. */
#define PARALLEL_MIN 65536

static inline float fast_silu(float v)
{
    return v / (1.0f + fast_expf(-v));
}

/* log(1 + e^v) = max(v, 0) + log1p(e^-|v|) to 3e-7 relative; log1p(w) = 2 atanh(w / (2 + w)) by
 * its series (w / (2 + w) <= 1/3). Past v = 20 this is v in float, the reference's threshold. */
static inline float fast_softplus(float v)
{
    const float a = fabsf(v), w = fast_expf(-a);
    const float s = w / (2.0f + w), s2 = s * s;
    float p = 1.0f / 15;
    p = p * s2 + 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    return 0.5f * (v + a) + 2.0f * s * (1.0f + s2 * p);
}

/* One output row of the causal depthwise conv: out[c] = SiLU(b[c] + Σ_k wT[k][c] win[k][c]),
 * win[dc][di] = the input rows ending at this token. */
SIMD_TARGETS
static void conv_row(float *out, const float *win, const float *wT, const float *b, int di, int dc)
{
    for (int c = 0; c < di; c++)
        out[c] = b[c];
    for (int k = 0; k < dc; k++)
        for (int c = 0; c < di; c++)
            out[c] += wT[(size_t)k * di + c] * win[(size_t)k * di + c];
    for (int c = 0; c < di; c++)
        out[c] = fast_silu(out[c]);
}

/* xc[t][c] = SiLU(conv over [state ; x] + b) for the n tokens x (row stride ldx), then the
 * state keeps the last dc inputs, newest last. The inputs are laid out time-major in
 * xpad[dc-1+n][di] (the dc-1 from the state first) so that the channel loop is contiguous. */
static void conv1d_silu(float *xc, float *conv, const float *x, size_t ldx, int n, int di, int dc,
                        const float *w, const float *b, float *xpad, float *wT)
{
    for (int c = 0; c < di; c++) {
        for (int k = 0; k < dc; k++)
            wT[(size_t)k * di + c] = w[(size_t)c * dc + k];
        for (int k = 0; k < dc - 1; k++)
            xpad[(size_t)k * di + c] = conv[(size_t)c * dc + k + 1];
    }
    for (int t = 0; t < n; t++)
        memcpy(xpad + (size_t)(dc - 1 + t) * di, x + (size_t)t * ldx, di * sizeof(float));
#pragma omp parallel for schedule(static) if ((size_t)n * di * dc >= PARALLEL_MIN)
    for (int t = 0; t < n; t++)
        conv_row(xc + (size_t)t * di, xpad + (size_t)t * di, wT, b, di, dc);
    /* The last dc inputs are xpad rows n-1 .. n+dc-2 (n >= 1). */
    for (int c = 0; c < di; c++)
        for (int k = 0; k < dc; k++)
            conv[(size_t)c * dc + k] = xpad[(size_t)(n - 1 + k) * di + c];
}

/* Channels scanned together: one vector register (AVX-512) or two (AVX2) per state row. */
#define SCAN_BLOCK 16

/* The selective scan of channels c0 .. c0+cw-1 from state h[c][ds], for t in 0..n-1, with
 * dt = softplus(dt_raw[t][c]):
 *   h[k] = exp(dt A[c][k]) h[k] + dt B[t][k] x,  y = (Σ_k h[k] C[t][k] + D[c] x) SiLU(z).
 * Channels are independent and x, dt, z, y are contiguous in c, so the vector loop runs over
 * channels (a block's state transposed to [ds][block]); the time loop is the serial part. */
static inline __attribute__((always_inline)) void
scan_channels(float *y, float *h, const float *x, const float *dt, const float *z, size_t ldz,
              const float *bc, size_t ldbc, const float *A, const float *D, int n, int di, int ds,
              int c0, int cw)
{
    float hb[MAX_D_STATE][SCAN_BLOCK], Ab[MAX_D_STATE][SCAN_BLOCK];
    for (int k = 0; k < ds; k++) {
        for (int j = 0; j < cw; j++) {
            hb[k][j] = h[(size_t)(c0 + j) * ds + k];
            Ab[k][j] = A[(size_t)(c0 + j) * ds + k];
        }
    }
    for (int t = 0; t < n; t++) {
        const float *B = bc + (size_t)t * ldbc, *C = B + ds;
        const float *xt = x + (size_t)t * di + c0, *dtt = dt + (size_t)t * di + c0;
        const float *zt = z + (size_t)t * ldz + c0;
        float *yt = y + (size_t)t * di + c0;
        float acc[SCAN_BLOCK], dtv[SCAN_BLOCK], dtx[SCAN_BLOCK];
        for (int j = 0; j < cw; j++) {
            acc[j] = D[c0 + j] * xt[j];
            dtv[j] = fast_softplus(dtt[j]);
            dtx[j] = dtv[j] * xt[j];
        }
        for (int k = 0; k < ds; k++) {
            const float Bk = B[k], Ck = C[k];
            for (int j = 0; j < cw; j++) {
                hb[k][j] = fast_expf(dtv[j] * Ab[k][j]) * hb[k][j] + dtx[j] * Bk;
                acc[j] += hb[k][j] * Ck;
            }
        }
        for (int j = 0; j < cw; j++)
            yt[j] = acc[j] * fast_silu(zt[j]);
    }
    for (int k = 0; k < ds; k++)
        for (int j = 0; j < cw; j++)
            h[(size_t)(c0 + j) * ds + k] = hb[k][j];
}

/* A full block is scanned with cw a constant, so its channel loops are whole vectors with no
 * remainder loop or overlap checks. */
SIMD_TARGETS
static void scan_block(float *y, float *h, const float *x, const float *dt, const float *z,
                       size_t ldz, const float *bc, size_t ldbc, const float *A, const float *D,
                       int n, int di, int ds, int c0, int cw)
{
    if (cw == SCAN_BLOCK)
        scan_channels(y, h, x, dt, z, ldz, bc, ldbc, A, D, n, di, ds, c0, SCAN_BLOCK);
    else
        scan_channels(y, h, x, dt, z, ldz, bc, ldbc, A, D, n, di, ds, c0, cw);
}

static void selective_scan(float *y, float *h, const float *x, const float *dt, const float *z,
                           size_t ldz, const float *bc, size_t ldbc, const float *A,
                           const float *D, int n, int di, int ds)
{
    const int n_blocks = (di + SCAN_BLOCK - 1) / SCAN_BLOCK;
#pragma omp parallel for schedule(static) if ((size_t)n * di * ds >= PARALLEL_MIN)
    for (int b = 0; b < n_blocks; b++) {
        const int c0 = b * SCAN_BLOCK;
        scan_block(y, h, x, dt, z, ldz, bc, ldbc, A, D, n, di, ds, c0, MIN(SCAN_BLOCK, di - c0));
    }
}

/* res[n][d] += Mixer(RMSNorm(res)) for layer l, continuing from its conv and ssm state. */
static void layer_forward(const Mamba *m, const MambaLayer *l, float *conv, float *ssm, int n,
                          MambaBuffers *b, Workspace *ws)
{
    const int d = m->d_model, di = m->d_inner, ds = m->d_state, r = m->dt_rank;
    const int nbc = r + 2 * ds;

    rmsnorm(b->xn, b->res, l->norm, n, d, m->eps);
    matmul(b->xz, b->xn, n, &l->in_proj, NULL, ws);
    conv1d_silu(b->xc, conv, b->xz, 2 * (size_t)di, n, di, m->d_conv, l->conv_w, l->conv_b,
                b->xpad, b->conv_wT);
    matmul(b->dbc, b->xc, n, &l->x_proj, NULL, ws);
    for (int t = 0; t < n; t++)
        memcpy(b->dtl + (size_t)t * r, b->dbc + (size_t)t * nbc, r * sizeof(float));
    matmul(b->dt, b->dtl, n, &l->dt_proj, l->dt_b, ws);
    selective_scan(b->y, ssm, b->xc, b->dt, b->xz + di, 2 * (size_t)di, b->dbc + r, nbc, l->A,
                   l->D, n, di, ds);
    matmul(b->xn, b->y, n, &l->out_proj, NULL, ws);
    add(b->res, b->xn, (size_t)n * d);
}

/* ---- the recurrent step: one parallel region per token ----
 *
 * A decoded token is a dozen small products per layer. A parallel region for each costs ~2 us
 * with spinning threads but ~110 us with sleeping ones (OMP_WAIT_POLICY=passive, measured on a
 * 2-vCPU VM), and each region's closing barrier waits for every thread, also for one whose core
 * another process has just taken. So a token is one region whose work is a list of chunks in
 * order: per layer the norm, blocks of channels through in_proj and the conv, x_proj rows,
 * blocks of channels through dt_proj and the scan, out_proj rows; then the head. Threads take
 * the next chunk from a counter, and a chunk waits only until every chunk of the earlier phases
 * is done: a late thread finds its share taken by the others, and nobody waits for a thread
 * that holds no chunk. Each chunk also quantises what it wrote for the next product, so that
 * the norm is the only phase of one chunk (every phase boundary is a point where a thread that
 * lost its core mid-chunk holds the others up). Each output is still computed by one call of
 * the same code, so results do not depend on the thread count. */

enum { PH_NORM, PH_IN_CONV, PH_X_PROJ, PH_SCAN, PH_OUT, N_LAYER_PHASES };
enum { PH_NORM_F, PH_HEAD, N_TAIL_PHASES };

/* Chunks of a few us of weight streaming on one core (in_proj: 2 x 64 rows of 2560, out_proj 32
 * rows of 5120, head 256 rows of 2560 at cobra+3b's shapes): 80 or more per large product, so
 * that 16 threads share them evenly, while taking one (an atomic add) stays negligible. Channel
 * and row blocks are whole quantisation blocks, which their chunk quantises. */
#define STEP_CHANNELS 64
#define STEP_ROWS 32
#define STEP_HEAD_ROWS 256
G_STATIC_ASSERT(STEP_CHANNELS % SCAN_BLOCK == 0);
G_STATIC_ASSERT(STEP_CHANNELS % QK8_0 == 0 && STEP_ROWS % QK8_0 == 0);

/* Below this many multiply-adds per token (~50 us of one core) one thread is as fast as a
 * region (2-110 us): the demo model's tokens without the head. */
#define STEP_PARALLEL_MIN (1 << 20)

/* A waiting thread spins this many pauses (~30-100 us) for the microseconds a phase takes, then
 * sleeps until a chunk is done: a longer wait means the thread holding the chunk lost its core
 * to another process. Sleeping (not yielding) leaves a core idle for the kernel to move that
 * thread to, and a thread that slept is scheduled ahead of a busy process when woken. */
#define STEP_SPINS 2000
/* The longest sleep: a cancel does not wake sleepers. */
#define STEP_SLEEP_NS 1000000

typedef struct {
    const Mamba *m;
    MambaState *s;
    MambaBuffers *b;
    float *normed, *logits;     /* norm_f output (hidden_out or scratch); logits or NULL */
    const gint *cancel;
    int layer_start[N_LAYER_PHASES + 1]; /* first chunk of each phase within a layer */
    int tail_start[N_TAIL_PHASES + 1];
    int n_chunks;
    /* Where each product's prepared input is (b->xin[0] or [1], or the floats themselves):
     * set by the layer's norm chunk, filled by the chunks that write them. */
    const void *in_x, *xc_x, *dt_x, *y_x;
    /* Taking a chunk and polling for finished ones hit different cache lines. */
    _Alignas(64) atomic_int next;
    _Alignas(64) atomic_int done;
    atomic_int sleepers, stop;
} Step;

static int ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

static void starts_of(int *start, const int *count, int n)
{
    start[0] = 0;
    for (int p = 0; p < n; p++)
        start[p + 1] = start[p] + count[p];
}

/* The conv and SiLU of one new token for channels c0..c1-1, shifting it into their state. */
static void conv_step(float *xc, float *conv, const float *x, const float *w, const float *b,
                      int c0, int c1, int dc)
{
    for (int c = c0; c < c1; c++) {
        float *st = conv + (size_t)c * dc;
        const float *wc = w + (size_t)c * dc;
        memmove(st, st + 1, (size_t)(dc - 1) * sizeof(float));
        st[dc - 1] = x[c];
        float v = b[c];
        for (int k = 0; k < dc; k++)
            v += wc[k] * st[k];
        xc[c] = fast_silu(v);
    }
}

static void layer_chunk(Step *st, int i, int phase, int j)
{
    const Mamba *m = st->m;
    const MambaLayer *l = &m->layers[i];
    MambaBuffers *b = st->b;
    const int d = m->d_model, di = m->d_inner, ds = m->d_state, r = m->dt_rank;
    const int nbc = r + 2 * ds;
    float *conv = st->s->conv + (size_t)i * di * m->d_conv;
    float *ssm = st->s->ssm + (size_t)i * di * ds;
    const int c0 = j * STEP_CHANNELS, c1 = MIN(c0 + STEP_CHANNELS, di);
    const int r0 = j * STEP_ROWS;

    switch (phase) {
    case PH_NORM:
        rmsnorm(b->xn, b->res, l->norm, 1, d, m->eps);
        st->in_x = matvec_input(&l->in_proj, b->xn, b->xin[0]);
        st->xc_x = matvec_input_part(&l->x_proj, b->xc, b->xin[1], 0, 0);
        st->dt_x = matvec_input_part(&l->dt_proj, b->dbc, b->xin[0], 0, 0);
        st->y_x = matvec_input_part(&l->out_proj, b->y, b->xin[1], 0, 0);
        break;
    case PH_IN_CONV: /* the x rows of in_proj feed the conv, the z rows wait for the scan */
        matvec_rows(b->xz, &l->in_proj, st->in_x, c0, c1);
        matvec_rows(b->xz, &l->in_proj, st->in_x, di + c0, di + c1);
        conv_step(b->xc, conv, b->xz, l->conv_w, l->conv_b, c0, c1, m->d_conv);
        matvec_input_part(&l->x_proj, b->xc, b->xin[1], c0, c1);
        break;
    case PH_X_PROJ: { /* dt_low is the first r values of dbc; in_proj's input is no longer read */
        const int r1 = MIN(r0 + STEP_ROWS, nbc);
        matvec_rows(b->dbc, &l->x_proj, st->xc_x, r0, r1);
        if (r0 < r)
            matvec_input_part(&l->dt_proj, b->dbc, b->xin[0], r0, MIN(r1, r));
        break;
    }
    case PH_SCAN: /* x_proj's input is no longer read */
        matvec_rows(b->dt, &l->dt_proj, st->dt_x, c0, c1);
        for (int c = c0; c < c1; c++)
            b->dt[c] += l->dt_b[c];
        for (int cb = c0; cb < c1; cb += SCAN_BLOCK)
            scan_block(b->y, ssm, b->xc, b->dt, b->xz + di, 2 * (size_t)di, b->dbc + r, nbc, l->A,
                       l->D, 1, di, ds, cb, MIN(SCAN_BLOCK, c1 - cb));
        matvec_input_part(&l->out_proj, b->y, b->xin[1], c0, c1);
        break;
    case PH_OUT: {
        const int r1 = MIN(r0 + STEP_ROWS, d);
        matvec_rows(b->xn, &l->out_proj, st->y_x, r0, r1);
        for (int k = r0; k < r1; k++)
            b->res[k] += b->xn[k];
        break;
    }
    }
}

static void tail_chunk(Step *st, int phase, int j)
{
    const Mamba *m = st->m;
    if (phase == PH_NORM_F) {
        rmsnorm(st->normed, st->b->res, m->norm_f, 1, m->d_model, m->eps);
        if (st->logits)
            st->in_x = matvec_input(&m->lm_head, st->normed, st->b->xin[0]);
    } else {
        const int r0 = j * STEP_HEAD_ROWS;
        matvec_rows(st->logits, &m->lm_head, st->in_x, r0, MIN(r0 + STEP_HEAD_ROWS, m->n_vocab));
    }
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Sleep while *addr == value, or until woken (Linux futex; elsewhere a yield). */
static void futex_wait(atomic_int *addr, int value)
{
#ifdef __linux__
    const struct timespec timeout = {0, STEP_SLEEP_NS};
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, value, &timeout, NULL, 0);
#else
    (void)addr, (void)value;
    sched_yield();
#endif
}

static void futex_wake_all(atomic_int *addr)
{
#ifdef __linux__
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)addr;
#endif
}

/* Until every chunk before `first` is done; FALSE once the step is stopped. A sleeper counts
 * itself before its last look at `done` and chunk_done reads the count after adding to it
 * (both sequentially consistent), so one of the two sees the other: no wake-up is lost. */
static gboolean wait_done(Step *st, int first)
{
    for (int spins = 0;; spins++) {
        const int done = atomic_load_explicit(&st->done, memory_order_acquire);
        if (done >= first)
            return TRUE;
        if (atomic_load_explicit(&st->stop, memory_order_relaxed))
            return FALSE;
        if (spins < STEP_SPINS) {
            cpu_relax();
            continue;
        }
        atomic_fetch_add(&st->sleepers, 1);
        if (atomic_load(&st->done) == done)
            futex_wait(&st->done, done);
        atomic_fetch_sub(&st->sleepers, 1);
    }
}

static void chunk_done(Step *st)
{
    atomic_fetch_add(&st->done, 1);
    if (atomic_load(&st->sleepers) > 0)
        futex_wake_all(&st->done);
}

/* Take chunks until none is left: chunk g is (layer, phase, index) or one of the tail's. */
static void step_worker(Step *st)
{
    const int per_layer = st->layer_start[N_LAYER_PHASES];
    const int n_layer_chunks = st->m->n_layer * per_layer;
    for (;;) {
        const int g = atomic_fetch_add_explicit(&st->next, 1, memory_order_relaxed);
        if (g >= st->n_chunks || atomic_load_explicit(&st->stop, memory_order_relaxed))
            return;
        const gboolean in_layer = g < n_layer_chunks;
        const int *start = in_layer ? st->layer_start : st->tail_start;
        const int base = in_layer ? g - g % per_layer : n_layer_chunks;
        int phase = 0;
        while (g - base >= start[phase + 1])
            phase++;
        if (!wait_done(st, base + start[phase]))
            return;
        if (in_layer && g == base && st->cancel && g_atomic_int_get(st->cancel)) {
            atomic_store(&st->stop, 1);
            return;
        }
        if (in_layer)
            layer_chunk(st, g / per_layer, phase, g - base - start[phase]);
        else
            tail_chunk(st, phase, g - base - start[phase]);
        chunk_done(st);
    }
}

/* The recurrent step: res (b->res) through every layer, then norm_f and the head. */
static gboolean mamba_step(const Mamba *m, MambaState *s, MambaBuffers *b, float *hidden_out,
                           float *logits, const gint *cancel)
{
    const int d = m->d_model, di = m->d_inner, nbc = m->dt_rank + 2 * m->d_state;
    const int blocks = ceil_div(di, STEP_CHANNELS);
    const int layer_count[N_LAYER_PHASES] = {
        [PH_NORM] = 1, [PH_IN_CONV] = blocks, [PH_X_PROJ] = ceil_div(nbc, STEP_ROWS),
        [PH_SCAN] = blocks, [PH_OUT] = ceil_div(d, STEP_ROWS),
    };
    const int tail_count[N_TAIL_PHASES] = {
        [PH_NORM_F] = 1, [PH_HEAD] = logits ? ceil_div(m->n_vocab, STEP_HEAD_ROWS) : 0,
    };
    Step st = { .m = m, .s = s, .b = b, .logits = logits, .cancel = cancel,
                .normed = hidden_out ? hidden_out : b->xn };
    starts_of(st.layer_start, layer_count, N_LAYER_PHASES);
    starts_of(st.tail_start, tail_count, N_TAIL_PHASES);
    st.n_chunks = m->n_layer * st.layer_start[N_LAYER_PHASES] + st.tail_start[N_TAIL_PHASES];
    atomic_init(&st.next, 0);
    atomic_init(&st.done, 0);
    atomic_init(&st.sleepers, 0);
    atomic_init(&st.stop, 0);

    const MambaLayer *l = &m->layers[0];
    const size_t work = (size_t)m->n_layer *
                            ((size_t)l->in_proj.rows * l->in_proj.cols +
                             (size_t)l->x_proj.rows * l->x_proj.cols +
                             (size_t)l->dt_proj.rows * l->dt_proj.cols +
                             (size_t)l->out_proj.rows * l->out_proj.cols) +
                        (logits ? (size_t)m->n_vocab * d : 0);
#pragma omp parallel if (work >= STEP_PARALLEL_MIN)
    step_worker(&st);
    return !atomic_load(&st.stop);
}

gboolean mamba_forward(const Mamba *m, MambaState *s, const float *x, int n, float *hidden_out,
                       float *logits, MambaBuffers *b, Workspace *ws, const gint *cancel)
{
    const int d = m->d_model;
    const size_t conv_layer = (size_t)m->d_inner * m->d_conv;
    const size_t ssm_layer = (size_t)m->d_inner * m->d_state;

    if (n == 1) {
        memcpy(b->res, x, (size_t)d * sizeof(float));
        return mamba_step(m, s, b, hidden_out, logits, cancel);
    }
    for (int t0 = 0; t0 < n; t0 += b->max_chunk) {
        const int nc = MIN(b->max_chunk, n - t0);
        const gboolean last = t0 + nc == n;
        memcpy(b->res, x + (size_t)t0 * d, (size_t)nc * d * sizeof(float));
        for (int i = 0; i < m->n_layer; i++) {
            if (cancel && g_atomic_int_get(cancel))
                return FALSE;
            layer_forward(m, &m->layers[i], s->conv + i * conv_layer, s->ssm + i * ssm_layer, nc,
                          b, ws);
        }

        /* norm_f: every row when the caller wants them, else only the last row for the logits. */
        float *normed = b->xn + (size_t)(nc - 1) * d;
        if (hidden_out) {
            rmsnorm(hidden_out + (size_t)t0 * d, b->res, m->norm_f, nc, d, m->eps);
            normed = hidden_out + (size_t)(n - 1) * d;
        } else if (last && logits) {
            rmsnorm(normed, b->res + (size_t)(nc - 1) * d, m->norm_f, 1, d, m->eps);
        }
        if (last && logits)
            matmul(logits, normed, 1, &m->lm_head, NULL, ws);
    }
    return TRUE;
}
