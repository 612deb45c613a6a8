/* mamba.c - the Mamba-1 language model (docs/cobra-spec.md section 5).
 *
 * Prefill runs chunk by chunk, and within a chunk layer by layer: every projection is one GEMM
 * over the chunk; the causal conv and the selective scan continue from the state the previous
 * chunk left, vectorised over channels with time as the serial loop. The recurrent step is the
 * same code with a chunk of one token, where matmul() takes its matrix-vector path. Nothing grows
 * with the number of positions.
 */
#include "mamba.h"

#include <string.h>

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
    g_free(b);
}

/* ---- forward ---- */

void mamba_embed(const Mamba *m, const int32_t *ids, int n, float *out)
{
    for (int i = 0; i < n; i++)
        mat_get_row(&m->embed, ids[i], out + (size_t)i * m->d_model);
}

/* Below this many multiply-adds a parallel region costs more than it saves; the larger one
 * when idle threads sleep keeps a decoded token's scan step (d_inner x d_state) on one thread. */
#define PARALLEL_MIN 65536
#define PARALLEL_MIN_SLEEPING (1 << 18)

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
    const size_t min = ops_threads_sleep() ? PARALLEL_MIN_SLEEPING : PARALLEL_MIN;
#pragma omp parallel for schedule(static) if ((size_t)n * di * ds >= min)
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

gboolean mamba_forward(const Mamba *m, MambaState *s, const float *x, int n, float *hidden_out,
                       float *logits, MambaBuffers *b, Workspace *ws, const gint *cancel)
{
    const int d = m->d_model;
    const size_t conv_layer = (size_t)m->d_inner * m->d_conv;
    const size_t ssm_layer = (size_t)m->d_inner * m->d_state;

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
