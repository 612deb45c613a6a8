/* vit.c - the timm VisionTransformer forward (pre-norm blocks, optional LayerScale, prefix tokens)
 * up to the feature block. Every size comes from the model file. */
#include "vit.h"

#include <math.h>
#include <string.h>

#include "attention.h"
#include "cobra.h"

struct VitBuffers {
    float *cols;   /* [G*G][3*P*P] unfolded patches */
    float *x;      /* [T][C] residual stream, T = n_prefix + G*G */
    float *xn;     /* [T][C] normed input / sub-layer output */
    float *qkv;    /* [T][3C] */
    float *att;    /* [T][C] attention output, heads side by side */
    float *attn;   /* attention()'s scratch, for attn_threads threads */
    int attn_threads;
    float *hidden; /* [T][F] MLP hidden */
};

static int vit_tokens(const Vit *vit) { return vit->n_prefix + vit->grid * vit->grid; }

/* ---- loading ---- */

static gboolean get_uint(const GgufFile *f, const char *key, uint64_t min, uint64_t max, int *out,
                         GError **error)
{
    uint64_t v;
    if (!gguf_get_uint(f, key, max, &v, error))
        return FALSE;
    if (v < min) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: key '%s' is %" G_GUINT64_FORMAT
                    ", must be at least %" G_GUINT64_FORMAT, gguf_path(f), key, v, min);
        return FALSE;
    }
    *out = (int)v;
    return TRUE;
}

static gboolean get_tower_uint(const GgufFile *f, const char *prefix, const char *name,
                               uint64_t min, uint64_t max, int *out, GError **error)
{
    char key[96];
    g_snprintf(key, sizeof key, "clip.%s.%s", prefix, name);
    return get_uint(f, key, min, max, out, error);
}

/* The three per-channel values of key clip.{prefix}.{name}: finite and above `above`. */
static gboolean get_normalisation(const GgufFile *f, const char *prefix, const char *name,
                                  float above, float *out, GError **error)
{
    char key[96];
    g_snprintf(key, sizeof key, "clip.%s.%s", prefix, name);
    if (!gguf_get_f32_array(f, key, out, 3, error))
        return FALSE;
    for (int c = 0; c < 3; c++)
        if (!isfinite(out[c]) || !(out[c] > above)) {
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                        "%s: key '%s' has %g for channel %d; every value must be finite%s",
                        gguf_path(f), key, out[c], c, above == 0 ? " and positive" : "");
            return FALSE;
        }
    return TRUE;
}

/* The F32 tensor "{prefix}.{name}" of shape ne (ggml order). */
static const float *require_f32(const GgufFile *f, const char *prefix, const char *name,
                                int n_dims, const int64_t *ne, GError **error)
{
    char full[96];
    g_snprintf(full, sizeof full, "%s.%s", prefix, name);
    const GgufTensor *t = gguf_require_tensor(f, full, n_dims, ne, GGUF_TYPES_F32, error);
    return t ? t->data : NULL;
}

static const float *require_vec(const GgufFile *f, const char *prefix, const char *name,
                                int64_t n, GError **error)
{
    return require_f32(f, prefix, name, 1, &n, error);
}

/* The matrix "{prefix}.{name}" with `rows` outputs and `cols` inputs, of a type in `types`. */
static gboolean require_mat(const GgufFile *f, const char *prefix, const char *name, int64_t rows,
                            int64_t cols, unsigned types, Mat *out, GError **error)
{
    char full[96];
    g_snprintf(full, sizeof full, "%s.%s", prefix, name);
    return mat_require(f, full, rows, cols, types, out, error);
}

static gboolean load_block(const GgufFile *f, const char *prefix, int i, int C, int F,
                           gboolean has_ls, VitBlock *b, GError **error)
{
    char p[64];
    g_snprintf(p, sizeof p, "%s.blk.%d", prefix, i);
    if (!(b->ln1_w = require_vec(f, p, "ln1.weight", C, error)) ||
        !(b->ln1_b = require_vec(f, p, "ln1.bias", C, error)) ||
        !require_mat(f, p, "attn_qkv.weight", 3 * (int64_t)C, C, GGUF_TYPES_MATRIX, &b->qkv,
                     error) ||
        !(b->qkv_b = require_vec(f, p, "attn_qkv.bias", 3 * (int64_t)C, error)) ||
        !require_mat(f, p, "attn_out.weight", C, C, GGUF_TYPES_MATRIX, &b->attn_out, error) ||
        !(b->attn_out_b = require_vec(f, p, "attn_out.bias", C, error)) ||
        !(b->ln2_w = require_vec(f, p, "ln2.weight", C, error)) ||
        !(b->ln2_b = require_vec(f, p, "ln2.bias", C, error)) ||
        !require_mat(f, p, "ffn_up.weight", F, C, GGUF_TYPES_MATRIX, &b->ffn_up, error) ||
        !(b->ffn_up_b = require_vec(f, p, "ffn_up.bias", F, error)) ||
        !require_mat(f, p, "ffn_down.weight", C, F, GGUF_TYPES_MATRIX, &b->ffn_down, error) ||
        !(b->ffn_down_b = require_vec(f, p, "ffn_down.bias", C, error)))
        return FALSE;
    b->ls1 = b->ls2 = NULL;
    if (has_ls && (!(b->ls1 = require_vec(f, p, "ls1.weight", C, error)) ||
                   !(b->ls2 = require_vec(f, p, "ls2.weight", C, error))))
        return FALSE;
    return TRUE;
}

/* LayerScale is all or nothing: if any block stores a gamma, every block must store both. */
static gboolean any_layer_scale(const GgufFile *f, const char *prefix, int n_blocks)
{
    for (int i = 0; i < n_blocks; i++)
        for (int k = 1; k <= 2; k++) {
            char name[96];
            g_snprintf(name, sizeof name, "%s.blk.%d.ls%d.weight", prefix, i, k);
            if (gguf_find_tensor(f, name))
                return TRUE;
        }
    return FALSE;
}

gboolean vit_load(Vit *vit, const GgufFile *f, const char *prefix, GError **error)
{
    memset(vit, 0, sizeof *vit);
    if (strlen(prefix) >= sizeof vit->prefix) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "%s: tower name \"%s\" is too long",
                    gguf_path(f), prefix);
        return FALSE;
    }
    g_strlcpy(vit->prefix, prefix, sizeof vit->prefix);

    /* The caps only keep int arithmetic safe; the tensor shapes checked below tie every size to
     * data that is really in the file. */
    int block_count, feature_layer, n_reg;
    gboolean has_cls;
    double eps;
    char key[96];
    if (!get_uint(f, "clip.vision.image_size", 1, 1 << 14, &vit->image_size, error) ||
        !get_uint(f, "clip.vision.patch_size", 1, 1 << 10, &vit->patch, error) ||
        !get_tower_uint(f, prefix, "embedding_length", 1, 1 << 16, &vit->dim, error) ||
        !get_tower_uint(f, prefix, "feed_forward_length", 1, 1 << 18, &vit->ffn_dim, error) ||
        !get_tower_uint(f, prefix, "attention.head_count", 1, 1 << 16, &vit->n_heads, error) ||
        !get_tower_uint(f, prefix, "block_count", 1, 1 << 12, &block_count, error) ||
        !get_tower_uint(f, prefix, "feature_layer", 0, 1 << 12, &feature_layer, error) ||
        !get_tower_uint(f, prefix, "n_register_tokens", 0, 1 << 12, &n_reg, error))
        return FALSE;
    g_snprintf(key, sizeof key, "clip.%s.attention.layer_norm_epsilon", prefix);
    if (!gguf_get_float(f, key, &eps, error))
        return FALSE;
    if (!(eps > 0 && eps < 1)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: key '%s' is %g, must be in (0, 1)",
                    gguf_path(f), key, eps);
        return FALSE;
    }
    vit->eps = (float)eps;
    g_snprintf(key, sizeof key, "clip.%s.has_class_token", prefix);
    if (!gguf_get_bool(f, key, &has_cls, error))
        return FALSE;
    if (!get_normalisation(f, prefix, "image_mean", -INFINITY, vit->mean, error) ||
        !get_normalisation(f, prefix, "image_std", 0, vit->std, error))
        return FALSE;

    if (vit->dim % vit->n_heads != 0) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: key 'clip.%s.attention.head_count' (%d) does not divide "
                    "'clip.%s.embedding_length' (%d)",
                    gguf_path(f), prefix, vit->n_heads, prefix, vit->dim);
        return FALSE;
    }
    vit->head_dim = vit->dim / vit->n_heads;
    if (feature_layer >= block_count) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: key 'clip.%s.feature_layer' (%d) must be below 'clip.%s.block_count' (%d)",
                    gguf_path(f), prefix, feature_layer, prefix, block_count);
        return FALSE;
    }
    vit->n_blocks = feature_layer + 1;
    vit->grid = vit->image_size / vit->patch;
    if (vit->grid < 1) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: key 'clip.vision.image_size' (%d) is smaller than "
                    "'clip.vision.patch_size' (%d)",
                    gguf_path(f), vit->image_size, vit->patch);
        return FALSE;
    }
    vit->n_prefix = (has_cls ? 1 : 0) + n_reg;

    const int64_t C = vit->dim, PPC = 3 * (int64_t)vit->patch * vit->patch;
    const int64_t GG = (int64_t)vit->grid * vit->grid;
    const int64_t pos_ne[2] = {C, GG}, reg_ne[2] = {C, n_reg};
    if (!require_mat(f, prefix, "patch_embd.weight", C, PPC, GGUF_TYPES_F32, &vit->patch_embd,
                     error) ||
        !(vit->patch_embd_b = require_vec(f, prefix, "patch_embd.bias", C, error)) ||
        !(vit->pos_embd = require_f32(f, prefix, "position_embd.weight", 2, pos_ne, error)) ||
        (has_cls && !(vit->cls = require_vec(f, prefix, "class_embd", C, error))) ||
        (n_reg > 0 && !(vit->reg = require_f32(f, prefix, "reg_embd", 2, reg_ne, error))))
        return FALSE;

    gboolean has_ls = any_layer_scale(f, prefix, vit->n_blocks);
    vit->blocks = g_new0(VitBlock, vit->n_blocks);
    for (int i = 0; i < vit->n_blocks; i++)
        if (!load_block(f, prefix, i, vit->dim, vit->ffn_dim, has_ls, &vit->blocks[i], error)) {
            vit_free(vit);
            return FALSE;
        }
    return TRUE;
}

void vit_free(Vit *vit)
{
    g_clear_pointer(&vit->blocks, g_free);
}

/* ---- buffers ---- */

VitBuffers *vit_buffers_new(const Vit *vit)
{
    const size_t T = vit_tokens(vit), C = vit->dim, GG = (size_t)vit->grid * vit->grid;
    VitBuffers *b = g_new0(VitBuffers, 1);
    b->cols = g_new(float, GG * 3 * vit->patch * vit->patch);
    b->x = g_new(float, T * C);
    b->xn = g_new(float, T * C);
    b->qkv = g_new(float, T * 3 * C);
    b->att = g_new(float, T * C);
    b->hidden = g_new(float, T * vit->ffn_dim);
    return b;
}

void vit_buffers_free(VitBuffers *b)
{
    if (!b)
        return;
    g_free(b->cols);
    g_free(b->x);
    g_free(b->xn);
    g_free(b->qkv);
    g_free(b->att);
    g_free(b->attn);
    g_free(b->hidden);
    g_free(b);
}

int vit_max_cols(const Vit *vit)
{
    return MAX(3 * vit->patch * vit->patch, MAX(vit->dim, vit->ffn_dim));
}

int vit_max_rows(const Vit *vit) { return vit_tokens(vit); }

/* ---- forward ---- */

/* cols[gy*G+gx][(c*P + y)*P + x] = pixels[c][gy*P + y][gx*P + x]: the stride-P convolution's
 * receptive fields, in the (channel, y, x) order of patch_embd's columns. */
static void im2col(float *cols, const float *pixels, int S, int P, int G)
{
    const int K = 3 * P * P;
#pragma omp parallel for
    for (int g = 0; g < G * G; g++) {
        const int gy = g / G, gx = g % G;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < P; y++)
                memcpy(cols + (size_t)g * K + (c * P + y) * P,
                       pixels + ((size_t)c * S + gy * P + y) * S + gx * P, P * sizeof(float));
    }
}

/* x = [cls, reg..., patch_embd(pixels) + pos_embd]: position embeddings only on the patches. */
static void embed(const Vit *vit, const float *pixels, VitBuffers *b, Workspace *ws)
{
    const int C = vit->dim, GG = vit->grid * vit->grid;
    float *patches = b->x + (size_t)vit->n_prefix * C;
    im2col(b->cols, pixels, vit->image_size, vit->patch, vit->grid);
    matmul(patches, b->cols, GG, &vit->patch_embd, vit->patch_embd_b, ws);
    add(patches, vit->pos_embd, (size_t)GG * C);
    float *row = b->x;
    if (vit->cls) {
        memcpy(row, vit->cls, C * sizeof(float));
        row += C;
    }
    if (vit->reg)
        memcpy(row, vit->reg, (size_t)(vit->n_prefix - (vit->cls ? 1 : 0)) * C * sizeof(float));
}

/* x += gamma * y, or x += y without LayerScale. */
static void residual(float *x, const float *y, const float *gamma, int n, int dim)
{
    if (gamma)
        add_scaled_rows(x, y, gamma, n, dim);
    else
        add(x, y, (size_t)n * dim);
}

static void block_forward(const Vit *vit, const VitBlock *blk, VitBuffers *b, Workspace *ws)
{
    const int T = vit_tokens(vit), C = vit->dim;
    layernorm(b->xn, b->x, blk->ln1_w, blk->ln1_b, T, C, vit->eps);
    matmul(b->qkv, b->xn, T, &blk->qkv, blk->qkv_b, ws);
    /* att = concat over heads of softmax(q kᵀ / sqrt(head_dim)) v; the scratch is allocated the
     * first time, and again only if the session's thread count grew. */
    if (ops_threads() > b->attn_threads) {
        g_free(b->attn);
        b->attn_threads = ops_threads();
        b->attn = g_new0(float, attention_scratch_floats(T, vit->n_heads, vit->head_dim,
                                                         b->attn_threads));
    }
    attention(b->att, C, b->qkv, T, vit->n_heads, vit->head_dim, 1.0f / sqrtf((float)vit->head_dim),
              b->attn);
    matmul(b->xn, b->att, T, &blk->attn_out, blk->attn_out_b, ws);
    residual(b->x, b->xn, blk->ls1, T, C);

    layernorm(b->xn, b->x, blk->ln2_w, blk->ln2_b, T, C, vit->eps);
    matmul(b->hidden, b->xn, T, &blk->ffn_up, blk->ffn_up_b, ws);
    gelu(b->hidden, (size_t)T * vit->ffn_dim);
    matmul(b->xn, b->hidden, T, &blk->ffn_down, blk->ffn_down_b, ws);
    residual(b->x, b->xn, blk->ls2, T, C);
}

gboolean vit_forward(const Vit *vit, const float *pixels, float *out, VitBuffers *b, Workspace *ws,
                     const gint *cancel)
{
    embed(vit, pixels, b, ws);
    for (int i = 0; i < vit->n_blocks; i++) {
        if (cancel && g_atomic_int_get(cancel))
            return FALSE;
        block_forward(vit, &vit->blocks[i], b, ws);
    }
    memcpy(out, b->x + (size_t)vit->n_prefix * vit->dim,
           (size_t)vit->grid * vit->grid * vit->dim * sizeof(float));
    return TRUE;
}
