/* cobra.c - the whole path behind include/cobra.h:
 * frame -> RGB -> Pillow bicubic S x S -> per-tower normalisation -> DINOv2 and SigLIP features
 * -> concatenation -> projector -> image tokens -> Mamba prefill (kept as the image state)
 * -> prompt tokens -> greedy or sampled decoding through the recurrent step. */
#include "cobra.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "gguf.h"
#include "image.h"
#include "mamba.h"
#include "ops.h"
#include "projector.h"
#include "sampler.h"
#include "tokenizer.h"
#include "vit.h"

G_DEFINE_QUARK(cobra-error-quark, cobra_error)

/* Prefill chunk: big enough for sgemm efficiency, small enough that the activations stay a few
 * MB whatever the prompt length. (Cancellation is checked before every layer of a chunk.) */
#define PREFILL_CHUNK 256
#define N_TOWERS 2

struct CobraModel {
    GgufFile *file;
    char *name;
    Vit towers[N_TOWERS];       /* in feature order (DINOv2 first) */
    Projector projector;
    Mamba lm;
    Tokenizer *tokenizer;
    GArray *prompt_before;      /* ids of the template text before "{question}" */
    GArray *prompt_after;       /* and after it */
    int image_size;             /* S */
    int n_image_tokens;         /* G * G */
    int feature_dim;            /* sum of the towers' widths */
    int max_prompt_tokens;
};

struct CobraSession {
    CobraModel *model;
    int n_threads;
    Workspace ws;
    VitBuffers *vit_buf[N_TOWERS];
    MambaBuffers *lm_buf;
    uint8_t *rgb;               /* [h][w][3], grown to the largest frame seen */
    size_t rgb_cap;
    uint8_t *resize_tmp;        /* [h][S][3], grown likewise */
    size_t resize_tmp_cap;
    uint8_t *resized;           /* [S][S][3] */
    float *pixels;              /* [3][S][S] */
    float *features[N_TOWERS];  /* [G*G][C_t] */
    float *fused;               /* [G*G][Fv] */
    float *proj_hidden;         /* [G*G][4Fv + d] */
    float *image_tokens;        /* [G*G][d] */
    float *embeds;              /* [PREFILL_CHUNK][d] */
    float *logits;              /* [V] */
    float *image_hidden;        /* [G*G][d], only while a tensor callback is set */
    MambaState state;           /* the sequence being generated */
    MambaState image_state;     /* after the image tokens: restored before every question */
    gboolean has_image;
    double image_prefill_s;     /* prefill time of the image tokens, part of every answer's */
    char *question;             /* the last question asked, as given */
    GArray *question_ids;       /* its templated prompt ids: tokenised once per question */
    int question_truncated;     /* question tokens cut to fit the context */
    gint cancelled;             /* atomic; set by cancel, cleared only by resume */
    CobraTimings timings;
    CobraTensorFunc dump;
    void *dump_data;
};

/* ---- model ---- */

/* The template's ids around "{question}", tokenised once here. They must leave room in the
 * context for at least one question token, or every question would be cut to nothing. */
static gboolean load_template(CobraModel *m, GError **error)
{
    const char *tpl = gguf_get_string(m->file, "cobra.prompt_template", error);
    if (!tpl)
        return FALSE;
    const char *q = strstr(tpl, "{question}");
    if (!q) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: cobra.prompt_template has no {question} placeholder", gguf_path(m->file));
        return FALSE;
    }
    m->prompt_before = g_array_new(FALSE, FALSE, sizeof(int32_t));
    m->prompt_after = g_array_new(FALSE, FALSE, sizeof(int32_t));
    if (!tokenizer_encode(m->tokenizer, tpl, (gssize)(q - tpl), m->prompt_before, error) ||
        !tokenizer_encode(m->tokenizer, q + strlen("{question}"), -1, m->prompt_after, error))
        return FALSE;
    int64_t n_template = (int64_t)m->prompt_before->len + m->prompt_after->len;
    if (n_template + 1 > m->max_prompt_tokens) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: key 'cobra.prompt_template' is %" G_GINT64_FORMAT " tokens without the "
                    "question, which leaves no room for one in key 'mamba.context_length' (%d)",
                    gguf_path(m->file), n_template, m->max_prompt_tokens);
        return FALSE;
    }
    return TRUE;
}

static gboolean load_towers(CobraModel *m, GError **error)
{
    size_t n;
    const char *const *order = gguf_get_string_array(m->file, "clip.vision.feature_order", &n, error);
    if (!order)
        return FALSE;
    if (n != N_TOWERS) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: clip.vision.feature_order lists %zu towers, expected %d",
                    gguf_path(m->file), n, N_TOWERS);
        return FALSE;
    }
    for (int t = 0; t < N_TOWERS; t++) {
        /* Both towers read their grid from clip.vision.image_size and patch_size, so the
         * patch tokens of the two line up one to one. */
        if (!vit_load(&m->towers[t], m->file, order[t], error))
            return FALSE;
        m->feature_dim += m->towers[t].dim;
    }
    m->image_size = m->towers[0].image_size;
    m->n_image_tokens = m->towers[0].grid * m->towers[0].grid;
    return TRUE;
}

static gboolean check_resize_strategy(const GgufFile *f, GError **error)
{
    if (!gguf_has_key(f, "cobra.image_resize_strategy"))
        return TRUE;
    const char *s = gguf_get_string(f, "cobra.image_resize_strategy", error);
    if (!s)
        return FALSE;
    if (strcmp(s, "resize-naive") != 0) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: image resize strategy '%s' is not supported (only resize-naive)",
                    gguf_path(f), s);
        return FALSE;
    }
    return TRUE;
}

CobraModel *cobra_model_load_with_flags(const char *path, CobraLoadFlags flags, GError **error)
{
    g_return_val_if_fail(path != NULL, NULL);
    CobraModel *m = g_new0(CobraModel, 1);
    uint64_t max_len;
    m->file = flags & COBRA_LOAD_MMAP ? gguf_open_mapped(path, error) : gguf_open(path, error);
    if (!m->file)
        goto fail;
    const char *arch = gguf_get_string(m->file, "general.architecture", error);
    if (!arch)
        goto fail;
    if (strcmp(arch, "cobra") != 0) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: architecture '%s' is not a Cobra model (expected 'cobra')", path, arch);
        goto fail;
    }
    m->name = g_strdup(gguf_has_key(m->file, "general.name")
                           ? gguf_get_string(m->file, "general.name", NULL)
                           : "cobra");
    if (!check_resize_strategy(m->file, error) || !load_towers(m, error) ||
        !mamba_load(&m->lm, m->file, error) ||
        !projector_load(&m->projector, m->file, m->feature_dim, m->lm.d_model, error) ||
        !gguf_get_uint(m->file, "mamba.context_length", 1 << 20, &max_len, error))
        goto fail;
    m->max_prompt_tokens = (int)max_len;
    m->tokenizer = tokenizer_load(m->file, error);
    if (!m->tokenizer || !load_template(m, error))
        goto fail;
    return m;
fail:
    cobra_model_free(m);
    return NULL;
}

CobraModel *cobra_model_load(const char *path, GError **error)
{
    return cobra_model_load_with_flags(path, COBRA_LOAD_DEFAULT, error);
}

void cobra_model_free(CobraModel *m)
{
    if (!m)
        return;
    for (int t = 0; t < N_TOWERS; t++)
        vit_free(&m->towers[t]);
    mamba_free(&m->lm);
    if (m->tokenizer)
        tokenizer_free(m->tokenizer);
    if (m->prompt_before)
        g_array_unref(m->prompt_before);
    if (m->prompt_after)
        g_array_unref(m->prompt_after);
    g_free(m->name);
    gguf_close(m->file);
    g_free(m);
}

int cobra_model_image_size(const CobraModel *m) { return m->image_size; }
int cobra_model_n_image_tokens(const CobraModel *m) { return m->n_image_tokens; }
int cobra_model_max_prompt_tokens(const CobraModel *m) { return m->max_prompt_tokens; }
const char *cobra_model_name(const CobraModel *m) { return m->name; }
const char *cobra_model_path(const CobraModel *m) { return gguf_path(m->file); }

gboolean cobra_model_tokenize(const CobraModel *m, const char *text, GArray *ids, GError **error)
{
    return tokenizer_encode(m->tokenizer, text, -1, ids, error);
}

char *cobra_model_detokenize(const CobraModel *m, const int32_t *ids, size_t n,
                             gboolean skip_special)
{
    return tokenizer_decode(m->tokenizer, ids, n, skip_special);
}

/* ---- session ---- */

static int max_int(int a, int b) { return a > b ? a : b; }

CobraSession *cobra_session_new(CobraModel *m, int n_threads, GError **error)
{
    g_return_val_if_fail(m != NULL, NULL);
    if (n_threads < 0 || n_threads > 1024) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID,
                    "n_threads %d is out of range (0 = all cores, up to 1024)", n_threads);
        return NULL;
    }
    CobraSession *s = g_new0(CobraSession, 1);
    s->model = m;
    s->n_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
    int S = m->image_size, n_img = m->n_image_tokens, d = m->lm.d_model;
    int max_cols = max_int(mamba_max_cols(&m->lm), m->projector.hidden_dim);
    int max_rows = max_int(PREFILL_CHUNK, n_img);
    for (int t = 0; t < N_TOWERS; t++) {
        s->vit_buf[t] = vit_buffers_new(&m->towers[t]);
        s->features[t] = g_new(float, (size_t)n_img * m->towers[t].dim);
        max_cols = max_int(max_cols, vit_max_cols(&m->towers[t]));
        max_rows = max_int(max_rows, vit_max_rows(&m->towers[t]));
    }
    workspace_init(&s->ws, max_cols, max_rows);
    s->lm_buf = mamba_buffers_new(&m->lm, PREFILL_CHUNK);
    s->resized = g_new(uint8_t, (size_t)S * S * 3);
    s->pixels = g_new(float, (size_t)3 * S * S);
    s->fused = g_new(float, (size_t)n_img * m->feature_dim);
    s->proj_hidden = g_new(float, (size_t)n_img * (m->projector.hidden_dim + d));
    s->image_tokens = g_new(float, (size_t)n_img * d);
    s->embeds = g_new(float, (size_t)PREFILL_CHUNK * d);
    s->logits = g_new(float, (size_t)m->lm.n_vocab);
    mamba_state_init(&s->state, &m->lm);
    mamba_state_init(&s->image_state, &m->lm);
    return s;
}

void cobra_session_free(CobraSession *s)
{
    if (!s)
        return;
    for (int t = 0; t < N_TOWERS; t++) {
        vit_buffers_free(s->vit_buf[t]);
        g_free(s->features[t]);
    }
    mamba_buffers_free(s->lm_buf);
    workspace_free(&s->ws);
    mamba_state_free(&s->state);
    mamba_state_free(&s->image_state);
    g_free(s->rgb);
    g_free(s->resize_tmp);
    g_free(s->resized);
    g_free(s->pixels);
    g_free(s->fused);
    g_free(s->proj_hidden);
    g_free(s->image_tokens);
    g_free(s->embeds);
    g_free(s->logits);
    g_free(s->image_hidden);
    g_free(s->question);
    if (s->question_ids)
        g_array_unref(s->question_ids);
    g_free(s);
}

void cobra_session_cancel(CobraSession *s)
{
    g_atomic_int_set(&s->cancelled, 1);
}

void cobra_session_resume(CobraSession *s)
{
    g_atomic_int_set(&s->cancelled, 0);
}

void cobra_session_get_timings(const CobraSession *s, CobraTimings *t)
{
    *t = s->timings;
}

void cobra_session_set_tensor_callback(CobraSession *s, CobraTensorFunc func, void *user_data)
{
    s->dump = func;
    s->dump_data = user_data;
}

static void dump(CobraSession *s, const char *name, const char *dtype, const void *data,
                 int n_dims, int64_t d0, int64_t d1, int64_t d2)
{
    if (!s->dump)
        return;
    int64_t shape[3] = {d0, d1, d2};
    s->dump(name, dtype, shape, n_dims, data, s->dump_data);
}

static gboolean fail_cancelled(GError **error)
{
    g_set_error(error, COBRA_ERROR, COBRA_ERROR_CANCELLED, "cancelled");
    return FALSE;
}

/* Checked on entry, between stages, prefill chunks and tokens and before returning (the towers
 * and the LM also check between blocks and layers). The flag stays set until resume, so a
 * cancel can never fall between two calls and be lost. */
static gboolean check_cancel(CobraSession *s, GError **error)
{
    return !g_atomic_int_get(&s->cancelled) || fail_cancelled(error);
}

static double now_s(void) { return g_get_monotonic_time() / 1e6; }

static void *grow(void *buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return buf;
    *cap = need;
    return g_realloc(buf, need);
}

/* Frame -> S x S RGB, Pillow-exact. */
static void resize_frame(CobraSession *s, const CobraImage *img)
{
    int S = s->model->image_size;
    size_t w = (size_t)img->width, h = (size_t)img->height;
    s->rgb = grow(s->rgb, &s->rgb_cap, w * h * 3);
    s->resize_tmp = grow(s->resize_tmp, &s->resize_tmp_cap, h * (size_t)S * 3);
    image_to_rgb(img, s->rgb);
    resize_bicubic_rgb(s->rgb, img->width, img->height, s->resized, S, S, s->resize_tmp);
    dump(s, "resized_rgb", "u1", s->resized, 3, S, S, 3);
}

static void concat_features(CobraSession *s)
{
    const CobraModel *m = s->model;
    for (int i = 0; i < m->n_image_tokens; i++) {
        float *row = s->fused + (size_t)i * m->feature_dim;
        for (int t = 0; t < N_TOWERS; t++) {
            int c = m->towers[t].dim;
            memcpy(row, s->features[t] + (size_t)i * c, (size_t)c * sizeof(float));
            row += c;
        }
    }
}

/* Run n embeddings through the LM in chunks from the current state; the LM checks for
 * cancellation before every layer of every chunk. hidden (optional) gets norm_f outputs, logits
 * (optional) the last logits. */
static gboolean prefill(CobraSession *s, const float *x, int n, float *hidden, float *logits,
                        GError **error)
{
    const Mamba *lm = &s->model->lm;
    for (int i = 0; i < n; i += PREFILL_CHUNK) {
        int len = MIN(PREFILL_CHUNK, n - i);
        if (!mamba_forward(lm, &s->state, x + (size_t)i * lm->d_model, len,
                           hidden ? hidden + (size_t)i * lm->d_model : NULL,
                           i + len == n ? logits : NULL, s->lm_buf, &s->ws, &s->cancelled))
            return fail_cancelled(error);
    }
    return TRUE;
}

static gboolean encode_image(CobraSession *s, const CobraImage *img, GError **error)
{
    CobraModel *m = s->model;
    memset(&s->timings, 0, sizeof s->timings);
    s->has_image = FALSE;
    if (!check_cancel(s, error) || !image_validate(img, error))
        return FALSE;
    double t0 = now_s();
    int S = m->image_size, n_img = m->n_image_tokens, d = m->lm.d_model;
    resize_frame(s, img);
    for (int t = 0; t < N_TOWERS; t++) {
        const Vit *v = &m->towers[t];
        normalize_rgb(s->resized, S, v->mean, v->std, s->pixels);
        char name[48];
        g_snprintf(name, sizeof name, "pixel_values_%s", v->prefix);
        dump(s, name, "f4", s->pixels, 3, 3, S, S);
        if (!check_cancel(s, error))
            return FALSE;
        if (!vit_forward(v, s->pixels, s->features[t], s->vit_buf[t], &s->ws, &s->cancelled))
            return fail_cancelled(error);
        g_snprintf(name, sizeof name, "%s_patches", v->prefix);
        dump(s, name, "f4", s->features[t], 2, n_img, v->dim, 0);
    }
    if (!check_cancel(s, error))
        return FALSE;
    concat_features(s);
    dump(s, "fused_patches", "f4", s->fused, 2, n_img, m->feature_dim, 0);
    projector_forward(&m->projector, s->fused, n_img, s->image_tokens, s->proj_hidden, &s->ws);
    dump(s, "projected", "f4", s->image_tokens, 2, n_img, d, 0);
    double t1 = now_s();

    /* The image tokens come first and do not depend on the question: prefill them once. */
    mamba_state_reset(&s->state, &m->lm);
    g_clear_pointer(&s->image_hidden, g_free);
    if (s->dump)
        s->image_hidden = g_new(float, (size_t)n_img * d);
    if (!prefill(s, s->image_tokens, n_img, s->image_hidden, NULL, error) ||
        !check_cancel(s, error))
        return FALSE;
    mamba_state_copy(&s->image_state, &s->state, &m->lm);
    s->has_image = TRUE;
    s->timings.image_s = t1 - t0;
    s->image_prefill_s = s->timings.prefill_s = now_s() - t1;
    s->timings.n_image_tokens = n_img;
    return TRUE;
}

gboolean cobra_session_set_image(CobraSession *s, const CobraImage *img, GError **error)
{
    g_return_val_if_fail(s != NULL && img != NULL, FALSE);
    omp_set_num_threads(s->n_threads);
    return encode_image(s, img, error);
}

/* The templated prompt's ids; a question too long for the context is cut from its end (the
 * template around it is kept, so the model still sees a well-formed turn; load_template made
 * sure at least one question token fits). *truncated gets the number of tokens cut. */
/* Every id has an embedding row (the tokenizer knows a few added tokens the LM does not). */
static gboolean check_embedded(const CobraModel *m, const GArray *ids, const char *what,
                               GError **error)
{
    for (guint i = 0; i < ids->len; i++) {
        int32_t id = g_array_index(ids, int32_t, i);
        if (id < 0 || id >= m->lm.n_vocab) {
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID,
                        "%s contains token %d ('%s'), which the model has no embedding for "
                        "(%d rows)", what, id, tokenizer_token_text(m->tokenizer, id),
                        m->lm.n_vocab);
            return FALSE;
        }
    }
    return TRUE;
}

static GArray *encode_prompt(const CobraModel *m, const char *question, int *truncated,
                             GError **error)
{
    char *q = g_strstrip(g_strdup(question));
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    gboolean ok = FALSE;
    *truncated = 0;
    if (!*q) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "the question is empty");
        goto out;
    }
    g_array_append_vals(ids, m->prompt_before->data, m->prompt_before->len);
    if (!tokenizer_encode(m->tokenizer, q, -1, ids, error))
        goto out;
    int after = (int)m->prompt_after->len;
    if ((int64_t)ids->len + after > m->max_prompt_tokens) {
        int keep = m->max_prompt_tokens - after;
        *truncated = (int)ids->len - keep;
        g_array_set_size(ids, (guint)keep);
    }
    g_array_append_vals(ids, m->prompt_after->data, m->prompt_after->len);
    ok = check_embedded(m, ids, "the prompt", error);
out:
    g_free(q);
    if (!ok)
        g_clear_pointer(&ids, g_array_unref);
    return ids;
}

/* The templated ids of `question`, kept for the next request: a stream asks the same question
 * of every sampled frame, and tokenising a long prompt costs more than its prefill. */
static const GArray *question_ids(CobraSession *s, const char *question, GError **error)
{
    if (s->question_ids && strcmp(s->question, question) == 0)
        return s->question_ids;
    g_clear_pointer(&s->question, g_free);
    g_clear_pointer(&s->question_ids, g_array_unref);
    GArray *ids = encode_prompt(s->model, question, &s->question_truncated, error);
    if (!ids)
        return NULL;
    s->question = g_strdup(question);
    s->question_ids = ids;
    return ids;
}

/* Prompt tokens through the LM from the image state; leaves the last logits in s->logits. */
static gboolean prefill_prompt(CobraSession *s, const GArray *ids, GError **error)
{
    const CobraModel *m = s->model;
    int n = (int)ids->len, d = m->lm.d_model, n_img = m->n_image_tokens;
    const int32_t *p = (const int32_t *)ids->data;
    float *hidden = NULL;
    if (s->dump && s->image_hidden) {
        hidden = g_new(float, (size_t)(n_img + n) * d);
        memcpy(hidden, s->image_hidden, (size_t)n_img * d * sizeof(float));
    }
    gboolean ok = TRUE;
    for (int i = 0; i < n && ok; i += PREFILL_CHUNK) {
        int len = MIN(PREFILL_CHUNK, n - i);
        mamba_embed(&m->lm, p + i, len, s->embeds);
        ok = prefill(s, s->embeds, len, hidden ? hidden + (size_t)(n_img + i) * d : NULL,
                     i + len == n ? s->logits : NULL, error);
    }
    if (ok && s->dump) {
        const Mamba *lm = &m->lm;
        dump(s, "prompt_ids", "i4", p, 1, n, 0, 0);
        if (hidden)
            dump(s, "final_hidden", "f4", hidden, 2, n_img + n, d, 0);
        dump(s, "logits_last", "f4", s->logits, 1, lm->n_vocab, 0, 0);
        dump(s, "conv_state", "f4", s->state.conv, 3, lm->n_layer, lm->d_inner, lm->d_conv);
        dump(s, "ssm_state", "f4", s->state.ssm, 3, lm->n_layer, lm->d_inner, lm->d_state);
    }
    g_free(hidden);
    return ok;
}

/* The question's prompt through the LM from the image state, with the checks and timings every
 * request shares; leaves the state after the prompt in s->state and its logits in s->logits. */
static gboolean prefill_question(CobraSession *s, const char *question, GError **error)
{
    const CobraModel *m = s->model;
    if (!check_cancel(s, error))
        return FALSE;
    if (!s->has_image) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_STATE, "no image: call set_image first");
        return FALSE;
    }
    if (!g_utf8_validate(question, -1, NULL)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "the question is not valid UTF-8");
        return FALSE;
    }
    s->timings.prefill_s = s->image_prefill_s;
    s->timings.decode_s = 0;
    s->timings.n_generated = 0;
    const GArray *ids = question_ids(s, question, error);
    if (!ids)
        return FALSE;
    s->timings.n_prompt_tokens = (int)ids->len;
    s->timings.n_prompt_truncated = s->question_truncated;

    double t0 = now_s();
    mamba_state_copy(&s->state, &s->image_state, &m->lm);
    gboolean ok = prefill_prompt(s, ids, error);
    s->timings.prefill_s += now_s() - t0;
    return ok;
}

static gboolean check_params(const CobraParams *params, GError **error)
{
    if (params->max_tokens < 1 || params->max_tokens > 1 << 20 || !(params->temperature >= 0) ||
        params->top_k < 0 || !(params->top_p > 0 && params->top_p <= 1) ||
        !(params->repeat_penalty > 0)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID,
                    "decoding parameters out of range (max_tokens %d, temperature %g, top_k %d, "
                    "top_p %g, repeat_penalty %g)", params->max_tokens, params->temperature,
                    params->top_k, params->top_p, params->repeat_penalty);
        return FALSE;
    }
    return TRUE;
}

static char *answer(CobraSession *s, const char *question, const CobraParams *params,
                    CobraTokenFunc on_token, void *user_data, GError **error)
{
    CobraModel *m = s->model;
    if (!check_params(params, error) || !prefill_question(s, question, error))
        return NULL;
    gboolean ok = TRUE;

    double t1 = now_s();
    Sampler sampler;
    sampler_init(&sampler, params, m->lm.n_vocab);
    GArray *out = g_array_new(FALSE, FALSE, sizeof(int32_t));
    TokenStream stream;
    token_stream_init(&stream);
    GString *piece = g_string_new(NULL);
    int eos = tokenizer_eos(m->tokenizer);
    /* Each token: cancel check, sample, report, stop or step. The check comes first so that it
     * runs after every forward pass, the prompt's included, even when max_tokens is 1. */
    for (;;) {
        if (!check_cancel(s, error)) {
            ok = FALSE;
            break;
        }
        int32_t id = sampler_sample(&sampler, s->logits, (const int32_t *)out->data, (int)out->len);
        g_array_append_val(out, id);
        if (on_token) {
            g_string_truncate(piece, 0);
            token_stream_push(m->tokenizer, &stream, id, TRUE, piece);
            if (!on_token(piece->str, id, user_data)) {
                s->timings.stop_reason = COBRA_STOP_CALLBACK;
                break;
            }
        }
        if (id == eos) {
            s->timings.stop_reason = COBRA_STOP_EOS;
            break;
        }
        if ((int)out->len == params->max_tokens) {
            s->timings.stop_reason = COBRA_STOP_MAX_TOKENS;
            break;
        }
        mamba_embed(&m->lm, &id, 1, s->embeds);
        if (!mamba_forward(&m->lm, &s->state, s->embeds, 1, NULL, s->logits, s->lm_buf, &s->ws,
                           &s->cancelled)) {
            ok = fail_cancelled(error);
            break;
        }
    }
    /* A cancel that came during the last token's callback still wins over the answer. */
    if (ok)
        ok = check_cancel(s, error);
    s->timings.decode_s = now_s() - t1;
    s->timings.n_generated = (int)out->len;
    dump(s, "generated_ids", "i4", out->data, 1, out->len, 0, 0);
    char *text = NULL;
    if (ok)
        text = g_strstrip(tokenizer_decode(m->tokenizer, (const int32_t *)out->data, out->len,
                                           TRUE));
    token_stream_clear(&stream);
    g_string_free(piece, TRUE);
    g_array_unref(out);
    sampler_free(&sampler);
    return text;
}

char *cobra_session_ask(CobraSession *s, const char *question, const CobraParams *params,
                        CobraTokenFunc on_token, void *user_data, GError **error)
{
    g_return_val_if_fail(s != NULL && question != NULL, NULL);
    CobraParams defaults;
    if (!params) {
        cobra_params_init(&defaults);
        params = &defaults;
    }
    omp_set_num_threads(s->n_threads);
    return answer(s, question, params, on_token, user_data, error);
}

/* ---- labels: log-probability of fixed answers ---- */

/* log softmax(logits)[id] = logits[id] - max - log sum exp(logits - max), summed in double. */
static double log_softmax_at(const float *logits, int n, int id)
{
    float max = logits[0];
    for (int i = 1; i < n; i++)
        max = fmaxf(max, logits[i]);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp((double)logits[i] - max);
    return (double)logits[id] - max - log(sum);
}

/* The ids of label i, tokenised alone (no leading space, no stop token), or NULL and an error
 * naming the label and the limit it breaks. */
static GArray *encode_label(const CobraModel *m, const char *label, int i, GError **error)
{
    if (!label || !g_utf8_validate(label, -1, NULL)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "label %d is %s", i,
                    label ? "not valid UTF-8" : "NULL");
        return NULL;
    }
    const char *p = label;
    while (g_ascii_isspace(*p))
        p++;
    if (!*p) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "label %d ('%s') is empty", i,
                    label);
        return NULL;
    }
    char *what = g_strdup_printf("label %d ('%s')", i, label);
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    gboolean ok = tokenizer_encode(m->tokenizer, label, -1, ids, error) &&
                  check_embedded(m, ids, what, error);
    if (ok && ids->len > COBRA_MAX_LABEL_TOKENS) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "%s has %u tokens, more than %d",
                    what, ids->len, COBRA_MAX_LABEL_TOKENS);
        ok = FALSE;
    }
    if (!ok)
        g_clear_pointer(&ids, g_array_unref);
    g_free(what);
    return ids;
}

static GPtrArray *encode_labels(const CobraModel *m, const char *const *labels, int n,
                                GError **error)
{
    if (n < 1) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "no labels to score (%d given)", n);
        return NULL;
    }
    if (n > COBRA_MAX_LABELS) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "%d labels, more than %d", n,
                    COBRA_MAX_LABELS);
        return NULL;
    }
    GPtrArray *all = g_ptr_array_new_with_free_func((GDestroyNotify)g_array_unref);
    for (int i = 0; i < n; i++) {
        GArray *ids = encode_label(m, labels[i], i, error);
        if (!ids) {
            g_ptr_array_unref(all);
            return NULL;
        }
        g_ptr_array_add(all, ids);
    }
    return all;
}

/* *log_prob = the sum of the log-probabilities of ids, each given the ones before it, from `state`
 * (copied: the state after the prompt serves every label) and the logits it left. The last token needs no
 * step, only its probability, so a one-token label costs no copy (26 MB for the 3B model). */
static gboolean label_log_prob(CobraSession *s, const MambaState *state, const float *logits,
                               const GArray *ids, float *log_prob, GError **error)
{
    const Mamba *lm = &s->model->lm;
    const int32_t *t = (const int32_t *)ids->data;
    double lp = log_softmax_at(logits, lm->n_vocab, t[0]);
    if (ids->len > 1)
        mamba_state_copy(&s->state, state, lm);
    for (guint k = 1; k < ids->len; k++) {
        mamba_embed(lm, &t[k - 1], 1, s->embeds);
        if (!mamba_forward(lm, &s->state, s->embeds, 1, NULL, s->logits, s->lm_buf, &s->ws,
                           &s->cancelled))
            return fail_cancelled(error);
        lp += log_softmax_at(s->logits, lm->n_vocab, t[k]);
    }
    *log_prob = (float)lp;
    return TRUE;
}

static gboolean score_labels(CobraSession *s, const char *question, const char *const *labels,
                             int n_labels, float *log_probs, GError **error)
{
    const Mamba *lm = &s->model->lm;
    GPtrArray *label_ids = encode_labels(s->model, labels, n_labels, error);
    if (!label_ids)
        return FALSE;
    if (!prefill_question(s, question, error)) {
        g_ptr_array_unref(label_ids);
        return FALSE;
    }
    double t0 = now_s();
    /* A copy per call rather than per session: the session keeps its size. */
    MambaState prompt;
    mamba_state_init(&prompt, lm);
    mamba_state_copy(&prompt, &s->state, lm);
    float *prompt_logits = g_memdup2(s->logits, (gsize)lm->n_vocab * sizeof(float));
    gboolean ok = TRUE;
    for (int i = 0; i < n_labels && ok; i++)
        ok = check_cancel(s, error) &&
             label_log_prob(s, &prompt, prompt_logits, g_ptr_array_index(label_ids, i),
                            &log_probs[i], error);
    s->timings.decode_s = now_s() - t0;
    mamba_state_free(&prompt);
    g_free(prompt_logits);
    g_ptr_array_unref(label_ids);
    return ok;
}

gboolean cobra_session_score_labels(CobraSession *s, const char *question,
                                    const char *const *labels, int n_labels, float *log_probs,
                                    GError **error)
{
    g_return_val_if_fail(s != NULL && question != NULL && (labels != NULL || n_labels == 0) &&
                             (log_probs != NULL || n_labels == 0), FALSE);
    omp_set_num_threads(s->n_threads);
    return score_labels(s, question, labels, n_labels, log_probs, error);
}
