/* test_vision.c - both vision towers and the projector against the reference dumps of the tiny
 * model, a plain double-precision ViT on altered tower shapes, and load errors naming the
 * culprit. */
#include <glib/gstdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cobra.h"
#include "projector.h"
#include "support.h"
#include "vit.h"

typedef struct {
    GgufFile *f;
    Vit dino, siglip;
    Projector proj;
    Workspace ws;
} Model;

static void model_open(Model *m, const char *outtype)
{
    GError *err = NULL;
    char *path = test_model_path(outtype);
    m->f = gguf_open(path, &err);
    g_assert_no_error(err);
    g_free(path);
    g_assert_true(vit_load(&m->dino, m->f, "dino", &err));
    g_assert_no_error(err);
    g_assert_true(vit_load(&m->siglip, m->f, "siglip", &err));
    g_assert_no_error(err);
    uint64_t d_model;
    g_assert_true(gguf_get_uint(m->f, "mamba.embedding_length", 1 << 20, &d_model, &err));
    g_assert_no_error(err);
    g_assert_true(projector_load(&m->proj, m->f, m->dino.dim + m->siglip.dim, (int)d_model, &err));
    g_assert_no_error(err);
    int cols = MAX(MAX(vit_max_cols(&m->dino), vit_max_cols(&m->siglip)),
                   MAX(m->proj.hidden_dim, MAX(m->proj.in_dim, m->proj.out_dim)));
    workspace_init(&m->ws, cols, MAX(vit_max_rows(&m->dino), vit_max_rows(&m->siglip)));
}

static void model_close(Model *m)
{
    workspace_free(&m->ws);
    vit_free(&m->dino);
    vit_free(&m->siglip);
    gguf_close(m->f);
}

static void assert_shape(const char *what, const Npy *a, int n_dims, const int64_t *shape)
{
    g_assert_cmpstr(a->dtype, ==, "f4");
    g_assert_cmpint(a->n_dims, ==, n_dims);
    for (int i = 0; i < n_dims; i++)
        if (a->shape[i] != shape[i])
            g_error("%s: dimension %d is %" G_GINT64_FORMAT " in the fixture, %" G_GINT64_FORMAT
                    " in the model", what, i, a->shape[i], shape[i]);
}

/* Run `vit` on the fixture pixels and return its [G*G][C] features (g_free). */
static float *run_tower(Model *m, const Vit *vit, const char *pixels_npy)
{
    Npy px;
    test_load_npy(pixels_npy, &px);
    const int64_t px_shape[3] = {3, vit->image_size, vit->image_size};
    assert_shape(pixels_npy, &px, 3, px_shape);
    float *out = g_new(float, (size_t)vit->grid * vit->grid * vit->dim);
    VitBuffers *b = vit_buffers_new(vit);
    vit_forward(vit, px.data, out, b, &m->ws, NULL);
    vit_buffers_free(b);
    npy_free(&px);
    return out;
}

static void check_tower(Model *m, const Vit *vit, const char *pixels_npy, const char *ref_npy,
                        double tol)
{
    float *out = run_tower(m, vit, pixels_npy);
    Npy ref;
    test_load_npy(ref_npy, &ref);
    const int64_t shape[2] = {(int64_t)vit->grid * vit->grid, vit->dim};
    assert_shape(ref_npy, &ref, 2, shape);
    assert_rel_error(ref_npy, out, ref.data, ref.n_elems, tol);
    npy_free(&ref);
    g_free(out);
}

static float *run_projector(Model *m, const float *in, int n)
{
    float *out = g_new(float, (size_t)n * m->proj.out_dim);
    float *hidden = g_new(float, (size_t)n * (m->proj.hidden_dim + m->proj.out_dim));
    projector_forward(&m->proj, in, n, out, hidden, &m->ws);
    g_free(hidden);
    return out;
}

typedef struct {
    const char *outtype;
    double tower_tol, proj_tol;
} Precision;

/* F32 meets the reference's 1e-4. F16 and Q8_0 bounds are about 3x the errors measured on the tiny
 * model (F16: towers 3.8e-4, projector 3.5e-4, pixels to tokens 5.7e-4; Q8_0, whose activations
 * are quantised too: 1.6e-2, 1.5e-2, 1.7e-2). Under Q8_0 the tiny SigLIP's attention and fc1
 * matrices stay F16 (its width 48 is not a multiple of 32); its fc2 is Q8_0, the MLP width
 * padded from 179 to 192 (its towers' error 7.2e-3, 3.1e-4 before the padding). */
static const Precision precisions[] = {
    {"f32", 1e-4, 1e-4},
    {"f16", 2e-3, 2e-3},
    {"q8_0", 6e-2, 6e-2},
};

static void test_towers(gconstpointer data)
{
    const Precision *p = data;
    Model m;
    model_open(&m, p->outtype);
    check_tower(&m, &m.dino, "tiny/golden/pixel_values_dino.npy", "tiny/golden/dino_patches.npy",
                p->tower_tol);
    check_tower(&m, &m.siglip, "tiny/golden/pixel_values_siglip.npy",
                "tiny/golden/siglip_patches.npy", p->tower_tol);
    model_close(&m);
}

static void test_projector(gconstpointer data)
{
    const Precision *p = data;
    Model m;
    model_open(&m, p->outtype);
    Npy in, ref;
    test_load_npy("tiny/golden/fused_patches.npy", &in);
    test_load_npy("tiny/golden/projected.npy", &ref);
    const int n = m.dino.grid * m.dino.grid;
    const int64_t in_shape[2] = {n, m.proj.in_dim}, out_shape[2] = {n, m.proj.out_dim};
    assert_shape("fused_patches.npy", &in, 2, in_shape);
    assert_shape("projected.npy", &ref, 2, out_shape);
    float *out = run_projector(&m, in.data, n);
    assert_rel_error("projected.npy", out, ref.data, ref.n_elems, p->proj_tol);
    g_free(out);
    npy_free(&in);
    npy_free(&ref);
    model_close(&m);
}

/* Pixels -> both towers -> concatenation (DINOv2 channels first) -> projector. */
static void test_image_tokens(gconstpointer data)
{
    const Precision *p = data;
    Model m;
    model_open(&m, p->outtype);
    g_assert_cmpint(m.dino.grid, ==, m.siglip.grid);
    const int n = m.dino.grid * m.dino.grid, Cd = m.dino.dim, Cs = m.siglip.dim;
    float *dino = run_tower(&m, &m.dino, "tiny/golden/pixel_values_dino.npy");
    float *siglip = run_tower(&m, &m.siglip, "tiny/golden/pixel_values_siglip.npy");
    float *fused = g_new(float, (size_t)n * (Cd + Cs));
    for (int t = 0; t < n; t++) {
        memcpy(fused + (size_t)t * (Cd + Cs), dino + (size_t)t * Cd, Cd * sizeof(float));
        memcpy(fused + (size_t)t * (Cd + Cs) + Cd, siglip + (size_t)t * Cs, Cs * sizeof(float));
    }
    float *out = run_projector(&m, fused, n);
    Npy ref;
    test_load_npy("tiny/golden/projected.npy", &ref);
    const int64_t shape[2] = {n, m.proj.out_dim};
    assert_shape("projected.npy", &ref, 2, shape);
    assert_rel_error("projected.npy from pixels", out, ref.data, ref.n_elems,
                     MAX(p->tower_tol, p->proj_tol));
    npy_free(&ref);
    g_free(out);
    g_free(fused);
    g_free(siglip);
    g_free(dino);
    model_close(&m);
}

/* ---- a plain ViT in double precision, straight from the definition, for altered shapes ---- */

static void ref_linear(const Mat *W, const float *bias, const double *x, int n, double *y)
{
    float *row = g_new(float, W->cols);
    for (int o = 0; o < W->rows; o++) {
        mat_get_row(W, o, row);
        for (int t = 0; t < n; t++) {
            double s = bias ? bias[o] : 0;
            for (int i = 0; i < W->cols; i++)
                s += (double)row[i] * x[(size_t)t * W->cols + i];
            y[(size_t)t * W->rows + o] = s;
        }
    }
    g_free(row);
}

static void ref_layernorm(const double *x, const float *w, const float *b, int n, int C,
                          double eps, double *y)
{
    for (int t = 0; t < n; t++) {
        const double *r = x + (size_t)t * C;
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++)
            mean += r[i] / C;
        for (int i = 0; i < C; i++)
            var += (r[i] - mean) * (r[i] - mean) / C;
        for (int i = 0; i < C; i++)
            y[(size_t)t * C + i] = (r[i] - mean) / sqrt(var + eps) * w[i] + b[i];
    }
}

static void ref_residual(double *x, const double *y, const float *gamma, int n, int C)
{
    for (int t = 0; t < n; t++)
        for (int i = 0; i < C; i++)
            x[(size_t)t * C + i] += (gamma ? gamma[i] : 1.0) * y[(size_t)t * C + i];
}

static void ref_vit(const Vit *v, const float *pixels, float *out)
{
    const int C = v->dim, P = v->patch, G = v->grid, S = v->image_size, T = v->n_prefix + G * G;
    const int H = v->n_heads, hd = v->head_dim;
    double *x = g_new0(double, (size_t)T * C), *xn = g_new(double, (size_t)T * C);
    double *qkv = g_new(double, (size_t)T * 3 * C), *att = g_new(double, (size_t)T * C);
    double *h = g_new(double, (size_t)T * v->ffn_dim), *p = g_new(double, T);
    float *w = g_new(float, 3 * P * P);

    const int n_cls = v->cls ? 1 : 0;
    for (int i = 0; i < v->n_prefix; i++)
        for (int c = 0; c < C; c++)
            x[(size_t)i * C + c] = i < n_cls ? v->cls[c] : v->reg[(size_t)(i - n_cls) * C + c];
    for (int o = 0; o < C; o++) {
        mat_get_row(&v->patch_embd, o, w);
        for (int gy = 0; gy < G; gy++)
            for (int gx = 0; gx < G; gx++) {
                double s = v->patch_embd_b[o] + v->pos_embd[(size_t)(gy * G + gx) * C + o];
                for (int c = 0; c < 3; c++)
                    for (int y = 0; y < P; y++)
                        for (int xx = 0; xx < P; xx++)
                            s += (double)w[(c * P + y) * P + xx] *
                                 pixels[((size_t)c * S + gy * P + y) * S + gx * P + xx];
                x[(size_t)(v->n_prefix + gy * G + gx) * C + o] = s;
            }
    }
    for (int l = 0; l < v->n_blocks; l++) {
        const VitBlock *b = &v->blocks[l];
        ref_layernorm(x, b->ln1_w, b->ln1_b, T, C, v->eps, xn);
        ref_linear(&b->qkv, b->qkv_b, xn, T, qkv);
        for (int hh = 0; hh < H; hh++)
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += qkv[(size_t)i * 3 * C + hh * hd + d] *
                             qkv[(size_t)j * 3 * C + C + hh * hd + d];
                    p[j] = s / sqrt(hd);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < T; j++)
                    sum += (p[j] = exp(p[j] - mx));
                for (int d = 0; d < hd; d++) {
                    double s = 0;
                    for (int j = 0; j < T; j++)
                        s += p[j] / sum * qkv[(size_t)j * 3 * C + 2 * C + hh * hd + d];
                    att[(size_t)i * C + hh * hd + d] = s;
                }
            }
        ref_linear(&b->attn_out, b->attn_out_b, att, T, xn);
        ref_residual(x, xn, b->ls1, T, C);
        ref_layernorm(x, b->ln2_w, b->ln2_b, T, C, v->eps, xn);
        ref_linear(&b->ffn_up, b->ffn_up_b, xn, T, h);
        for (size_t i = 0; i < (size_t)T * v->ffn_dim; i++)
            h[i] = 0.5 * h[i] * (1 + erf(h[i] / sqrt(2)));
        ref_linear(&b->ffn_down, b->ffn_down_b, h, T, xn);
        ref_residual(x, xn, b->ls2, T, C);
    }
    for (size_t i = 0; i < (size_t)G * G * C; i++)
        out[i] = (float)x[(size_t)v->n_prefix * C + i];
    g_free(x), g_free(xn), g_free(qkv), g_free(att), g_free(h), g_free(p), g_free(w);
}

static float *random_floats(guint n, double lo, double hi)
{
    float *a = g_new(float, n);
    for (size_t i = 0; i < n; i++)
        a[i] = (float)g_test_rand_double_range(lo, hi);
    return a;
}

/* The tower `tower` of the f32 tiny model re-shaped: other head counts (so other head dims),
 * an image size that is not a multiple of the patch (so another grid, trailing pixels unused),
 * fewer blocks, and prefix tokens and LayerScale added or removed with test-made vectors.
 * vit_forward must agree with the plain ViT above on each. */
static void check_altered(Model *m, const Vit *tower, int n_heads, int grid, int extra_px,
                          int n_blocks, int n_cls, int n_reg, gboolean layer_scale)
{
    Vit v = *tower;
    const int C = v.dim;
    g_assert_cmpint(C % n_heads, ==, 0);
    g_assert_cmpint(grid, <=, tower->grid);
    g_assert_cmpint(n_blocks, <=, tower->n_blocks);
    v.n_heads = n_heads;
    v.head_dim = C / n_heads;
    v.grid = grid;
    v.image_size = grid * v.patch + extra_px;
    v.n_blocks = n_blocks;
    v.n_prefix = n_cls + n_reg;
    float *prefix = random_floats(v.n_prefix * C + 1, -1, 1);
    v.cls = n_cls ? prefix : NULL;
    v.reg = n_reg ? prefix + (size_t)n_cls * C : NULL;
    float *gamma = random_floats(2 * C, 0.2, 1.5);
    v.blocks = g_memdup2(tower->blocks, n_blocks * sizeof(VitBlock));
    for (int i = 0; i < n_blocks; i++) {
        v.blocks[i].ls1 = layer_scale ? gamma : NULL;
        v.blocks[i].ls2 = layer_scale ? gamma + C : NULL;
    }
    float *pixels = random_floats(3 * v.image_size * v.image_size, -2, 2);
    const size_t n_out = (size_t)grid * grid * C;
    float *got = g_new(float, n_out), *ref = g_new(float, n_out);
    VitBuffers *b = vit_buffers_new(&v);
    vit_forward(&v, pixels, got, b, &m->ws, NULL);
    vit_buffers_free(b);
    ref_vit(&v, pixels, ref);
    char *what = g_strdup_printf("%s: %d heads of %d, grid %d (S %d), %d blocks, %d cls + %d reg, "
                                 "LayerScale %s", v.prefix, n_heads, v.head_dim, grid, v.image_size,
                                 n_blocks, n_cls, n_reg, layer_scale ? "yes" : "no");
    assert_rel_error(what, got, ref, n_out, 1e-4);
    g_free(what);
    g_free(got), g_free(ref), g_free(pixels), g_free(gamma), g_free(prefix), g_free(v.blocks);
}

/* The divisor of n closest to want (the smaller one on a tie). */
static int divisor_near(int n, int want)
{
    int best = 1;
    for (int d = 1; d <= n; d++)
        if (n % d == 0 && abs(d - want) < abs(best - want))
            best = d;
    return best;
}

static void test_altered_shapes(void)
{
    Model m;
    model_open(&m, "f32");
    const Vit *d = &m.dino, *s = &m.siglip;

    /* The plain ViT must first reproduce the reference itself on the file's own towers. */
    const struct { const Vit *vit; const char *pixels, *ref; } towers[] = {
        {d, "tiny/golden/pixel_values_dino.npy", "tiny/golden/dino_patches.npy"},
        {s, "tiny/golden/pixel_values_siglip.npy", "tiny/golden/siglip_patches.npy"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(towers); i++) {
        Npy px, ref;
        test_load_npy(towers[i].pixels, &px);
        test_load_npy(towers[i].ref, &ref);
        const Vit *v = towers[i].vit;
        g_assert_cmpuint(px.n_elems, ==, 3 * (size_t)v->image_size * v->image_size);
        g_assert_cmpuint(ref.n_elems, ==, (size_t)v->grid * v->grid * v->dim);
        float *out = g_new(float, ref.n_elems);
        ref_vit(v, px.data, out);
        assert_rel_error("plain ViT on the reference", out, ref.data, ref.n_elems, 1e-5);
        g_free(out);
        npy_free(&px);
        npy_free(&ref);
    }

    check_altered(&m, d, d->dim, MAX(1, d->grid - 1), d->patch / 2, MAX(1, d->n_blocks - 1), 0, 1,
                  FALSE);
    check_altered(&m, d, 1, 1, 0, 1, 1, 0, TRUE);
    check_altered(&m, d, divisor_near(d->dim, 2 * d->n_heads), d->grid, 1, d->n_blocks, 1, 2,
                  FALSE);
    check_altered(&m, s, divisor_near(s->dim, s->dim / 3), MAX(1, s->grid / 2), s->patch - 1,
                  s->n_blocks, 1, 3, TRUE);
    check_altered(&m, s, divisor_near(s->dim, 2 * s->n_heads + 1), s->grid, 0,
                  MAX(1, s->n_blocks - 1), 0, 0, FALSE);
    model_close(&m);
}

/* ---- load errors ---- */

/* A copy of the f32 tiny model in a temporary directory with the first occurrence of the GGUF
 * string `from` (its u64 length prefix included, so only a whole name matches) replaced by `to`
 * of the same length; returns the copy's path (g_free). */
static char *patched_model(const char *from, const char *to)
{
    g_assert_cmpuint(strlen(from), ==, strlen(to));
    char *src = test_model_path("f32"), *bytes;
    gsize len;
    GError *err = NULL;
    g_assert_true(g_file_get_contents(src, &bytes, &len, &err));
    g_assert_no_error(err);
    const uint64_t n = strlen(from);
    char *needle = g_malloc(8 + n);
    memcpy(needle, &n, 8); /* GGUF is little-endian, like every machine this runs on */
    memcpy(needle + 8, from, n);
    char *hit = memmem(bytes, len, needle, 8 + n);
    if (!hit)
        g_error("%s: string %s not found", src, from);
    memcpy(hit + 8, to, n);
    char *dir = g_dir_make_tmp("test-vision-XXXXXX", &err);
    g_assert_no_error(err);
    char *path = g_build_filename(dir, "patched.gguf", NULL);
    g_assert_true(g_file_set_contents(path, bytes, len, &err));
    g_assert_no_error(err);
    g_free(dir), g_free(needle), g_free(bytes), g_free(src);
    return path;
}

/* Loading `tower` (or the projector when tower is NULL) from the patched model fails with an
 * error whose message contains `culprit`. */
static void check_load_error(const char *from, const char *to, const char *tower,
                             const char *culprit)
{
    char *path = patched_model(from, to);
    GError *err = NULL;
    GgufFile *f = gguf_open(path, &err);
    g_assert_no_error(err);
    gboolean ok;
    if (tower) {
        Vit vit;
        ok = vit_load(&vit, f, tower, &err);
        if (ok)
            vit_free(&vit);
    } else {
        Projector p;
        Vit d, s;
        g_assert_true(vit_load(&d, f, "dino", NULL) && vit_load(&s, f, "siglip", NULL));
        uint64_t d_model;
        g_assert_true(gguf_get_uint(f, "mamba.embedding_length", 1 << 20, &d_model, NULL));
        ok = projector_load(&p, f, d.dim + s.dim, (int)d_model, &err);
        vit_free(&d);
        vit_free(&s);
    }
    g_assert_false(ok);
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
    g_test_message("%s -> %s: %s", from, to, err->message);
    g_assert_nonnull(strstr(err->message, culprit));
    g_assert_nonnull(strstr(err->message, path));
    g_error_free(err);
    gguf_close(f);
    test_remove_temp_file(path);
}

static void test_load_errors(void)
{
    check_load_error("dino.blk.1.attn_qkv.weight", "dino.blk.1.attn_qkv.weighX", "dino",
                     "dino.blk.1.attn_qkv.weight");
    check_load_error("siglip.blk.0.ffn_down.bias", "siglip.blk.0.ffn_down.biaX", "siglip",
                     "siglip.blk.0.ffn_down.bias");
    /* One gamma gone while the others remain: LayerScale is all or nothing. */
    check_load_error("dino.blk.0.ls1.weight", "dino.blk.0.ls1.weighX", "dino",
                     "dino.blk.0.ls1.weight");
    check_load_error("dino.reg_embd", "dino.reg_embX", "dino", "dino.reg_embd");
    check_load_error("siglip.position_embd.weight", "siglip.position_embd.weighX", "siglip",
                     "siglip.position_embd.weight");
    check_load_error("mm.2.weight", "mm.2.weighX", NULL, "mm.2.weight");
    check_load_error("clip.siglip.attention.head_count", "clip.siglip.attention.head_counX",
                     "siglip", "clip.siglip.attention.head_count");
    check_load_error("clip.vision.patch_size", "clip.vision.patch_sizX", "dino",
                     "clip.vision.patch_size");
}

/* A set cancel flag stops the tower before its first block, leaving out unwritten. */
static void test_cancel_flag(void)
{
    Model m;
    model_open(&m, "f32");
    Npy px;
    test_load_npy("tiny/golden/pixel_values_dino.npy", &px);
    size_t n = (size_t)m.dino.grid * m.dino.grid * m.dino.dim;
    float *out = g_new(float, n);
    for (size_t i = 0; i < n; i++)
        out[i] = -1;
    VitBuffers *b = vit_buffers_new(&m.dino);
    gint cancel = 1;
    g_assert_false(vit_forward(&m.dino, px.data, out, b, &m.ws, &cancel));
    for (size_t i = 0; i < n; i++)
        g_assert_cmpfloat(out[i], ==, -1);
    cancel = 0;
    g_assert_true(vit_forward(&m.dino, px.data, out, b, &m.ws, &cancel));
    Npy ref;
    test_load_npy("tiny/golden/dino_patches.npy", &ref);
    g_assert_cmpuint(ref.n_elems, ==, n);
    assert_rel_error("dino with a clear cancel flag", out, ref.data, n, 1e-4);
    npy_free(&ref);
    vit_buffers_free(b);
    g_free(out);
    npy_free(&px);
    model_close(&m);
}

/* A head count that does not divide the width is refused, naming the key. */
static void test_bad_head_count(void)
{
    const char *key = "clip.dino.attention.head_count";
    char *src = test_model_path("f32"), *bytes;
    gsize len;
    GError *err = NULL;
    g_assert_true(g_file_get_contents(src, &bytes, &len, &err));
    g_assert_no_error(err);
    GgufFile *f = gguf_open(src, &err);
    g_assert_no_error(err);
    Vit vit;
    g_assert_true(vit_load(&vit, f, "dino", &err));
    const uint32_t bad = (uint32_t)vit.dim + 1; /* > C, so never a divisor */
    vit_free(&vit);
    gguf_close(f);

    /* key string, then its value type (u32) and the value */
    char *hit = memmem(bytes, len, key, strlen(key));
    g_assert_nonnull(hit);
    uint32_t type;
    memcpy(&type, hit + strlen(key), 4);
    g_assert_cmpuint(type, ==, GGUF_TYPE_UINT32);
    memcpy(hit + strlen(key) + 4, &bad, 4);
    char *dir = g_dir_make_tmp("test-vision-XXXXXX", &err);
    g_assert_no_error(err);
    char *path = g_build_filename(dir, "patched.gguf", NULL);
    g_assert_true(g_file_set_contents(path, bytes, len, &err));
    g_assert_no_error(err);
    f = gguf_open(path, &err);
    g_assert_no_error(err);
    g_assert_false(vit_load(&vit, f, "dino", &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, key));
    g_error_free(err);
    gguf_close(f);
    test_remove_temp_file(path);
    g_free(dir), g_free(bytes), g_free(src);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(precisions); i++) {
        char *name = g_strdup_printf("/vision/towers/%s", precisions[i].outtype);
        g_test_add_data_func(name, &precisions[i], test_towers);
        g_free(name);
        name = g_strdup_printf("/vision/projector/%s", precisions[i].outtype);
        g_test_add_data_func(name, &precisions[i], test_projector);
        g_free(name);
        name = g_strdup_printf("/vision/image-tokens/%s", precisions[i].outtype);
        g_test_add_data_func(name, &precisions[i], test_image_tokens);
        g_free(name);
    }
    g_test_add_func("/vision/altered-shapes", test_altered_shapes);
    g_test_add_func("/vision/load-errors", test_load_errors);
    g_test_add_func("/vision/bad-head-count", test_bad_head_count);
    g_test_add_func("/vision/cancel-flag", test_cancel_flag);
    return g_test_run();
}
