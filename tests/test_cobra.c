/* test_cobra.c - the whole path through the public API and cobra-cli, against the reference run
 * in tests/data/tiny/golden. */
#include <fcntl.h>
#include <glib/gstdio.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cobra.h"
#include "support.h"

typedef struct {
    GHashTable *tensors; /* name -> Npy* */
} Dumps;

static void free_npy(gpointer p)
{
    npy_free(p);
    g_free(p);
}

static void keep_tensor(const char *name, const char *dtype, const int64_t *shape, int n_dims,
                        const void *data, void *user_data)
{
    Dumps *d = user_data;
    Npy *a = g_new0(Npy, 1);
    g_strlcpy(a->dtype, dtype, sizeof a->dtype);
    a->n_dims = n_dims;
    a->n_elems = 1;
    for (int i = 0; i < n_dims; i++) {
        a->shape[i] = shape[i];
        a->n_elems *= (size_t)shape[i];
    }
    a->elem_size = dtype[1] - '0';
    a->data = g_memdup2(data, a->n_elems * a->elem_size);
    g_hash_table_replace(d->tensors, g_strdup(name), a);
}

static int golden_n_generated(void)
{
    Npy ids;
    test_load_npy("tiny/golden/generated_ids.npy", &ids);
    int n = (int)ids.n_elems;
    npy_free(&ids);
    return n;
}

static void check_same_shape(const char *name, const Npy *got, const Npy *ref)
{
    g_assert_cmpstr(got->dtype, ==, ref->dtype);
    g_assert_cmpint(got->n_dims, ==, ref->n_dims);
    for (int i = 0; i < ref->n_dims; i++)
        if (got->shape[i] != ref->shape[i])
            g_test_fail_printf("%s: dimension %d is %" G_GINT64_FORMAT ", reference %"
                               G_GINT64_FORMAT, name, i, got->shape[i], ref->shape[i]);
}

/* Every intermediate the session reports equals the reference dump of the same name. */
static void compare_dumps(GHashTable *tensors, double tol)
{
    static const char *exact[] = {"resized_rgb", "prompt_ids", "generated_ids"};
    static const char *close[] = {"pixel_values_dino", "pixel_values_siglip", "dino_patches",
                                  "siglip_patches", "fused_patches", "projected", "final_hidden",
                                  "logits_last", "conv_state", "ssm_state"};
    for (size_t i = 0; i < G_N_ELEMENTS(exact) + G_N_ELEMENTS(close); i++) {
        gboolean is_exact = i < G_N_ELEMENTS(exact);
        const char *name = is_exact ? exact[i] : close[i - G_N_ELEMENTS(exact)];
        Npy *got = g_hash_table_lookup(tensors, name);
        if (!got) {
            g_test_fail_printf("the session reported no '%s'", name);
            continue;
        }
        char *rel = g_strdup_printf("tiny/golden/%s.npy", name);
        Npy ref;
        test_load_npy(rel, &ref);
        check_same_shape(name, got, &ref);
        if (is_exact) {
            if (memcmp(got->data, ref.data, MIN(got->n_elems, ref.n_elems) * ref.elem_size) != 0)
                g_test_fail_printf("%s differs from the reference", name);
        } else if (got->n_elems == ref.n_elems) {
            assert_rel_error(name, got->data, ref.data, ref.n_elems, tol);
        }
        npy_free(&ref);
        g_free(rel);
    }
}

static void test_golden(void)
{
    CobraModel *m = test_load_model("f32");
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 0, &err);
    g_assert_no_error(err);
    Dumps d = {g_hash_table_new_full(g_str_hash, g_str_equal, g_free, free_npy)};
    cobra_session_set_tensor_callback(s, keep_tensor, &d);
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    g_assert_no_error(err);
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = golden_n_generated();
    char *q = test_golden_question();
    char *answer = cobra_session_ask(s, q, &p, NULL, NULL, &err);
    g_assert_no_error(err);
    compare_dumps(d.tensors, 1e-4);

    char *manifest = test_read_text("tiny/golden/manifest.json");
    char *expected = g_strstrip(test_json_string(manifest, "generated_text"));
    g_assert_cmpstr(answer, ==, expected);

    CobraTimings t;
    cobra_session_get_timings(s, &t);
    g_assert_cmpint(t.n_image_tokens, ==, cobra_model_n_image_tokens(m));
    g_assert_cmpint(t.n_generated, ==, p.max_tokens);
    g_assert_cmpint(t.n_prompt_truncated, ==, 0);
    g_free(expected);
    g_free(manifest);
    g_free(answer);
    g_free(q);
    npy_free(&a);
    g_hash_table_unref(d.tensors);
    cobra_session_free(s);
    cobra_model_free(m);
}

typedef struct {
    GString *text;
    int n;
} Streamed;

static gboolean collect(const char *piece, int id, void *user_data)
{
    Streamed *st = user_data;
    g_string_append(st->text, piece);
    st->n++;
    return TRUE;
}

/* Streaming pieces add up to the answer; one image serves several questions, and the answer to
 * a question does not depend on what was asked before (the image state is restored). */
static void test_questions_share_image(void)
{
    CobraModel *m = test_load_model("f32");
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 1, &err);
    CobraSession *fresh = cobra_session_new(m, 2, &err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    g_assert_true(cobra_session_set_image(fresh, &img, &err));
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 12;
    Streamed st = {g_string_new(NULL), 0};
    char *a1 = cobra_session_ask(s, "What is in this picture?", &p, collect, &st, &err);
    g_assert_no_error(err);
    g_assert_cmpint(st.n, ==, 12);
    g_assert_cmpstr(g_strstrip(st.text->str), ==, a1);
    char *a2 = cobra_session_ask(s, "What colour is the sky?", &p, NULL, NULL, &err);
    char *a1_again = cobra_session_ask(s, "What is in this picture?", &p, NULL, NULL, &err);
    char *a2_fresh = cobra_session_ask(fresh, "What colour is the sky?", &p, NULL, NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpstr(a1, ==, a1_again);
    g_assert_cmpstr(a2, ==, a2_fresh);
    g_assert_cmpstr(a1, !=, a2);
    g_free(a1);
    g_free(a2);
    g_free(a1_again);
    g_free(a2_fresh);
    g_string_free(st.text, TRUE);
    npy_free(&a);
    cobra_session_free(s);
    cobra_session_free(fresh);
    cobra_model_free(m);
}

static void test_bad_requests(void)
{
    CobraModel *m = test_load_model("f32");
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 0, &err);
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 4;

    g_assert_null(cobra_session_ask(s, "Hello?", &p, NULL, NULL, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_STATE);
    g_clear_error(&err);

    Npy a;
    CobraImage img = test_golden_image(&a);
    CobraImage bad = img;
    bad.strides[0] = 2;
    g_assert_false(cobra_session_set_image(s, &bad, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    g_clear_error(&err);
    g_assert_true(cobra_session_set_image(s, &img, &err));

    g_assert_null(cobra_session_ask(s, "  \n ", &p, NULL, NULL, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    g_assert_nonnull(strstr(err->message, "empty"));
    g_clear_error(&err);

    g_assert_null(cobra_session_ask(s, "caf\xc3 bad", &p, NULL, NULL, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    g_assert_nonnull(strstr(err->message, "UTF-8"));
    g_clear_error(&err);

    /* The GPT-NeoX tokenizer has added tokens past the embedding rows. */
    g_assert_null(cobra_session_ask(s, "Is RWKV here?", &p, NULL, NULL, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    g_assert_nonnull(strstr(err->message, "RWKV"));
    g_clear_error(&err);

    CobraParams bad_p = p;
    bad_p.top_p = 0;
    g_assert_null(cobra_session_ask(s, "Hello?", &bad_p, NULL, NULL, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    g_assert_nonnull(strstr(err->message, "top_p"));
    g_clear_error(&err);

    /* A question longer than the context is cut, reported, and still answered. */
    int limit = cobra_model_max_prompt_tokens(m);
    GString *huge = g_string_new(NULL);
    for (int i = 0; i < limit + 100; i++)
        g_string_append(huge, " cat");
    char *answer = cobra_session_ask(s, huge->str, &p, NULL, NULL, &err);
    g_assert_no_error(err);
    g_assert_nonnull(answer);
    CobraTimings t;
    cobra_session_get_timings(s, &t);
    g_assert_cmpint(t.n_prompt_tokens, ==, limit);
    g_assert_cmpint(t.n_prompt_truncated, >, 0);
    g_free(answer);
    g_string_free(huge, TRUE);

    g_assert_null(cobra_session_new(m, -1, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    g_clear_error(&err);
    npy_free(&a);
    cobra_session_free(s);
    cobra_model_free(m);
}

static char *golden_text(void)
{
    char *manifest = test_read_text("tiny/golden/manifest.json");
    char *text = g_strstrip(test_json_string(manifest, "generated_text"));
    g_free(manifest);
    return text;
}

/* The golden question about the golden image must get the golden answer. */
static void assert_golden_answer(CobraSession *s)
{
    GError *err = NULL;
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    g_assert_no_error(err);
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = golden_n_generated();
    char *q = test_golden_question(), *expected = golden_text();
    char *answer = cobra_session_ask(s, q, &p, NULL, NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpstr(answer, ==, expected);
    g_free(answer);
    g_free(expected);
    g_free(q);
    npy_free(&a);
}

static void assert_cancelled(GError **err)
{
    g_assert_error(*err, COBRA_ERROR, COBRA_ERROR_CANCELLED);
    g_clear_error(err);
}

typedef struct {
    CobraSession *session;
    int n;
} CancelAt;

static gboolean cancel_at_token(const char *piece, int id, void *user_data)
{
    CancelAt *c = user_data;
    if (++c->n == 2)
        cobra_session_cancel(c->session);
    return TRUE;
}

static gboolean stop_after_three(const char *piece, int id, void *user_data)
{
    return ++*(int *)user_data < 3;
}

/* Cancel is sticky: a cancel before a call fails it at once, and every call fails until
 * resume; after resume the session answers as if nothing had happened. */
static void test_cancel(void)
{
    CobraModel *m = test_load_model("f32");
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 0, &err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 20;

    cobra_session_cancel(s);
    g_assert_false(cobra_session_set_image(s, &img, &err));
    assert_cancelled(&err);
    g_assert_false(cobra_session_set_image(s, &img, &err));
    assert_cancelled(&err);
    g_assert_null(cobra_session_ask(s, "What is it?", &p, NULL, NULL, &err));
    assert_cancelled(&err);
    cobra_session_resume(s);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    g_assert_no_error(err);

    /* The yes/no case: one token, so no decode step follows the prompt; the cancel must still
     * be seen (it used to be lost, and the call returned text). */
    CobraParams one = p;
    one.max_tokens = 1;
    cobra_session_cancel(s);
    g_assert_null(cobra_session_ask(s, "What is it?", &one, NULL, NULL, &err));
    assert_cancelled(&err);
    cobra_session_resume(s);
    /* ... and also when it lands while the only token is being reported. */
    CancelAt c = {s, 1};
    g_assert_null(cobra_session_ask(s, "What is it?", &one, cancel_at_token, &c, &err));
    assert_cancelled(&err);
    g_assert_null(cobra_session_ask(s, "What is it?", &one, NULL, NULL, &err));
    assert_cancelled(&err);
    cobra_session_resume(s);

    /* A cancel during generation stops it before the next token, and stays. */
    c = (CancelAt){s, 0};
    g_assert_null(cobra_session_ask(s, "What is it?", &p, cancel_at_token, &c, &err));
    assert_cancelled(&err);
    g_assert_cmpint(c.n, ==, 2);
    g_assert_null(cobra_session_ask(s, "What is it?", &p, NULL, NULL, &err));
    assert_cancelled(&err);
    cobra_session_resume(s);
    assert_golden_answer(s);
    npy_free(&a);
    cobra_session_free(s);
    cobra_model_free(m);
}

/* Another thread that cancels the session once told to go. */
typedef struct {
    CobraSession *session;
    GMutex lock;
    GCond cond;
    gboolean go, done;
} Canceller;

static gpointer canceller_main(gpointer data)
{
    Canceller *c = data;
    g_mutex_lock(&c->lock);
    while (!c->go)
        g_cond_wait(&c->cond, &c->lock);
    g_mutex_unlock(&c->lock);
    cobra_session_cancel(c->session);
    g_mutex_lock(&c->lock);
    c->done = TRUE;
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
    return NULL;
}

/* The first call starts the other thread's cancel and returns at once; later calls wait until
 * it is done, so it lands inside the running call wherever that is (inside a tower or a layer,
 * or before a later check). */
static void canceller_step(Canceller *c)
{
    g_mutex_lock(&c->lock);
    if (!c->go) {
        c->go = TRUE;
        g_cond_broadcast(&c->cond);
    } else {
        while (!c->done)
            g_cond_wait(&c->cond, &c->lock);
    }
    g_mutex_unlock(&c->lock);
}

static void step_on_tensor(const char *name, const char *dtype, const int64_t *shape, int n_dims,
                           const void *data, void *user_data)
{
    canceller_step(user_data);
}

static gboolean step_on_token(const char *piece, int id, void *user_data)
{
    canceller_step(user_data);
    return TRUE;
}

static GThread *canceller_start(Canceller *c, CobraSession *s)
{
    *c = (Canceller){.session = s};
    g_mutex_init(&c->lock);
    g_cond_init(&c->cond);
    return g_thread_new("canceller", canceller_main, c);
}

static void canceller_join(Canceller *c, GThread *t)
{
    g_thread_join(t);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->cond);
}

static void test_cancel_from_thread(void)
{
    CobraModel *m = test_load_model("f32");
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 0, &err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    Canceller c;

    /* during set_image: the first intermediate (the resized frame) sets the other thread off */
    GThread *t = canceller_start(&c, s);
    cobra_session_set_tensor_callback(s, step_on_tensor, &c);
    g_assert_false(cobra_session_set_image(s, &img, &err));
    assert_cancelled(&err);
    canceller_join(&c, t);
    cobra_session_set_tensor_callback(s, NULL, NULL);
    cobra_session_resume(s);
    g_assert_true(cobra_session_set_image(s, &img, &err));

    /* during ask: the first token sets it off */
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = golden_n_generated();
    t = canceller_start(&c, s);
    g_assert_null(cobra_session_ask(s, "What is it?", &p, step_on_token, &c, &err));
    assert_cancelled(&err);
    canceller_join(&c, t);
    cobra_session_resume(s);
    assert_golden_answer(s);
    npy_free(&a);
    cobra_session_free(s);
    cobra_model_free(m);
}

static char *patched_model(const char *key, const void *value, size_t n);

/* The stop reason says which limit ended the answer. */
static void test_stop_reason(void)
{
    CobraModel *m = test_load_model("f32");
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 0, &err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    CobraParams p;
    cobra_params_init(&p);
    CobraTimings t;

    p.max_tokens = 1;
    g_free(cobra_session_ask(s, "What is it?", &p, NULL, NULL, &err));
    g_assert_no_error(err);
    cobra_session_get_timings(s, &t);
    g_assert_cmpint(t.stop_reason, ==, COBRA_STOP_MAX_TOKENS);
    g_assert_cmpint(t.n_generated, ==, 1);

    p.max_tokens = 20;
    int n = 0;
    g_free(cobra_session_ask(s, "What is it?", &p, stop_after_three, &n, &err));
    g_assert_no_error(err);
    cobra_session_get_timings(s, &t);
    g_assert_cmpint(t.stop_reason, ==, COBRA_STOP_CALLBACK);
    g_assert_cmpint(t.n_generated, ==, 3);
    npy_free(&a);
    cobra_session_free(s);
    cobra_model_free(m);

    /* The tiny model never says its stop token in the golden run, so make the first token of
     * that run the stop token: the same question must then end after one token. */
    Npy ids;
    test_load_npy("tiny/golden/generated_ids.npy", &ids);
    uint32_t first = (uint32_t)((int32_t *)ids.data)[0];
    char *path = patched_model("tokenizer.ggml.eos_token_id", &first, 4);
    m = cobra_model_load(path, &err);
    g_assert_no_error(err);
    s = cobra_session_new(m, 0, &err);
    img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    p.max_tokens = (int)ids.n_elems;
    char *q = test_golden_question();
    g_free(cobra_session_ask(s, q, &p, NULL, NULL, &err));
    g_assert_no_error(err);
    cobra_session_get_timings(s, &t);
    g_assert_cmpint(t.stop_reason, ==, COBRA_STOP_EOS);
    g_assert_cmpint(t.n_generated, ==, 1);
    g_free(q);
    npy_free(&ids);
    npy_free(&a);
    cobra_session_free(s);
    cobra_model_free(m);
    test_remove_temp_file(path);
}

/* ---- damaged copies of the tiny model ---- */

/* A copy of the tiny f32 model in a new directory with the value of metadata `key` (a scalar, or
 * the first elements of an array) overwritten by the n bytes at `value`. */
static char *patched_model(const char *key, const void *value, size_t n)
{
    char *src = test_model_path("f32"), *bytes;
    gsize len;
    g_assert_true(g_file_get_contents(src, &bytes, &len, NULL));
    /* the key as stored: u64 length, the text, then the u32 value type */
    uint64_t klen = strlen(key);
    GString *needle = g_string_new_len((const char *)&klen, 8);
    g_string_append(needle, key);
    char *hit = memmem(bytes, len, needle->str, needle->len);
    g_assert_nonnull(hit);
    char *v = hit + needle->len;
    uint32_t type;
    memcpy(&type, v, 4);
    v += 4 + (type == 9 ? 4 + 8 : 0); /* an array: element type and count first */
    memcpy(v, value, n);
    char *dir = g_dir_make_tmp("cobra-test-XXXXXX", NULL);
    char *path = g_build_filename(dir, "patched.gguf", NULL);
    g_assert_true(g_file_set_contents(path, bytes, (gssize)len, NULL));
    g_string_free(needle, TRUE);
    g_free(dir);
    g_free(bytes);
    g_free(src);
    return path;
}

/* Loading the copy fails with a FORMAT error whose message holds every string in `expect`. */
static void expect_load_error(char *path, const char *const *expect)
{
    GError *err = NULL;
    g_assert_null(cobra_model_load(path, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, path));
    for (; *expect; expect++)
        if (!strstr(err->message, *expect))
            g_test_fail_printf("'%s' does not mention '%s'", err->message, *expect);
    g_error_free(err);
    test_remove_temp_file(path);
}

/* The template's own tokens (the prompt of an empty question, less its question) */
static int template_tokens(CobraModel *m)
{
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 1, &err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 1;
    /* "a" is one token in GPT-NeoX's vocabulary (checked here through the tokenizer) */
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    g_assert_true(cobra_model_tokenize(m, "a", ids, &err));
    g_assert_cmpuint(ids->len, ==, 1);
    g_array_unref(ids);
    g_free(cobra_session_ask(s, "a", &p, NULL, NULL, &err));
    g_assert_no_error(err);
    CobraTimings t;
    cobra_session_get_timings(s, &t);
    npy_free(&a);
    cobra_session_free(s);
    return t.n_prompt_tokens - 1;
}

/* Values that used to be accepted or blamed on the wrong key. */
static void test_bad_metadata(void)
{
    float inf = INFINITY, nan_ = NAN, zero = 0;
    expect_load_error(patched_model("clip.dino.image_mean", &inf, 4),
                      (const char *[]){"'clip.dino.image_mean'", "inf", NULL});
    expect_load_error(patched_model("clip.siglip.image_mean", &nan_, 4),
                      (const char *[]){"'clip.siglip.image_mean'", NULL});
    expect_load_error(patched_model("clip.dino.image_std", &zero, 4),
                      (const char *[]){"'clip.dino.image_std'", "positive", NULL});

    /* A context that cannot hold the template and one question token. */
    CobraModel *m = test_load_model("f32");
    int n_template = template_tokens(m);
    cobra_model_free(m);
    g_assert_cmpint(n_template, >, 1);
    char *n_str = g_strdup_printf("%d", n_template);
    uint32_t contexts[] = {0, 1, (uint32_t)n_template};
    for (size_t i = 0; i < G_N_ELEMENTS(contexts); i++) {
        char *ctx_str = g_strdup_printf("(%u)", contexts[i]);
        expect_load_error(patched_model("mamba.context_length", &contexts[i], 4),
                          (const char *[]){"'cobra.prompt_template'", "'mamba.context_length'",
                                           n_str, ctx_str, NULL});
        g_free(ctx_str);
    }
    /* One more token is enough: the question is cut to one token, and said so. */
    uint32_t tight = (uint32_t)n_template + 1;
    char *path = patched_model("mamba.context_length", &tight, 4);
    GError *err = NULL;
    m = cobra_model_load(path, &err);
    g_assert_no_error(err);
    CobraSession *s = cobra_session_new(m, 1, &err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 1;
    g_free(cobra_session_ask(s, "a b c d", &p, NULL, NULL, &err));
    g_assert_no_error(err);
    CobraTimings t;
    cobra_session_get_timings(s, &t);
    g_assert_cmpint(t.n_prompt_tokens, ==, (int)tight);
    g_assert_cmpint(t.n_prompt_truncated, ==, 3);
    npy_free(&a);
    cobra_session_free(s);
    cobra_model_free(m);
    test_remove_temp_file(path);
    g_free(n_str);
}

/* Quantised models are judged on the logits after the prompt: close, same top-1. */
static void check_quantised(const char *outtype, double tol)
{
    CobraModel *m = test_load_model(outtype);
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 0, &err);
    Dumps d = {g_hash_table_new_full(g_str_hash, g_str_equal, g_free, free_npy)};
    cobra_session_set_tensor_callback(s, keep_tensor, &d);
    Npy a, ref;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 1;
    char *q = test_golden_question();
    g_free(cobra_session_ask(s, q, &p, NULL, NULL, &err));
    g_assert_no_error(err);
    test_load_npy("tiny/golden/logits_last.npy", &ref);
    Npy *got = g_hash_table_lookup(d.tensors, "logits_last");
    g_assert_nonnull(got);
    g_assert_cmpuint(got->n_elems, ==, ref.n_elems);
    assert_rel_error(outtype, got->data, ref.data, ref.n_elems, tol);
    Npy ids;
    test_load_npy("tiny/golden/generated_ids.npy", &ids);
    Npy *gen = g_hash_table_lookup(d.tensors, "generated_ids");
    g_assert_cmpint(((int32_t *)gen->data)[0], ==, ((int32_t *)ids.data)[0]);
    npy_free(&ids);
    npy_free(&ref);
    npy_free(&a);
    g_free(q);
    g_hash_table_unref(d.tensors);
    cobra_session_free(s);
    cobra_model_free(m);
}

static void test_f16(void) { check_quantised("f16", 5e-3); }
/* Q8_0 quantises the activations as well as the weights: 1.9e-2 measured. */
static void test_q8_0(void) { check_quantised("q8_0", 5e-2); }
/* Q4_0 in the LM layers' in_proj and out_proj, the rest Q8_0: 0.166 measured (the tiny LM's
 * 32-wide in_proj rows are single blocks, so 4-bit noise is not averaged; the head at Q4_0 as
 * well measured 0.286). */
static void test_q4_0(void) { check_quantised("q4_0", 0.4); }

static void test_model_errors(void)
{
    GError *err = NULL;
    g_assert_null(cobra_model_load("/nonexistent/model.gguf", &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_IO);
    g_assert_nonnull(strstr(err->message, "/nonexistent/model.gguf"));
    g_clear_error(&err);

    /* A truncated copy names the file and fails cleanly. */
    char *src = test_model_path("f32");
    char *bytes;
    gsize len;
    g_assert_true(g_file_get_contents(src, &bytes, &len, NULL));
    char *dir = g_dir_make_tmp("cobra-test-XXXXXX", NULL);
    char *cut = g_build_filename(dir, "cut.gguf", NULL);
    g_assert_true(g_file_set_contents(cut, bytes, (gssize)(len * 2 / 3), NULL));
    g_assert_null(cobra_model_load(cut, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
    g_assert_nonnull(strstr(err->message, "cut.gguf"));
    g_clear_error(&err);
    g_unlink(cut);
    g_rmdir(dir);
    g_free(cut);
    g_free(dir);
    g_free(bytes);
    g_free(src);
}

/* ---- loading ---- */

static void blocked(int sig)
{
    static const char msg[] = "cobra_model_load blocked on a FIFO\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

static void expect_not_regular(const char *path, CobraLoadFlags flags)
{
    GError *err = NULL;
    g_assert_null(cobra_model_load_with_flags(path, flags, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_IO);
    g_test_message("%s", err->message);
    g_assert_nonnull(strstr(err->message, path));
    g_assert_nonnull(strstr(err->message, "not a regular file"));
    g_clear_error(&err);
}

/* A FIFO (whose open() would wait for a writer), a directory and a device are refused at once,
 * in both modes; an alarm turns a hang into a failure. */
static void test_load_not_regular(void)
{
    char *dir = g_dir_make_tmp("cobra-test-XXXXXX", NULL);
    char *fifo = g_build_filename(dir, "model.gguf", NULL);
    g_assert_cmpint(mkfifo(fifo, 0600), ==, 0);
    signal(SIGALRM, blocked);
    alarm(20);
    expect_not_regular(fifo, COBRA_LOAD_DEFAULT);
    expect_not_regular(fifo, COBRA_LOAD_MMAP);
    alarm(0);
    signal(SIGALRM, SIG_DFL);
    expect_not_regular(dir, COBRA_LOAD_DEFAULT);
    expect_not_regular("/dev/null", COBRA_LOAD_DEFAULT);
    g_unlink(fifo);
    g_rmdir(dir);
    g_free(fifo);
    g_free(dir);
}

/* Copy the tiny f32 model into dir, load it with `flags`, overwrite the file in place the way
 * `cp tiny-f16.gguf model.gguf` does (truncate, then write), then ask the golden question. */
static void load_then_overwrite(const char *dir, CobraLoadFlags flags)
{
    char *src = test_model_path("f32"), *other = test_model_path("f16");
    char *path = g_build_filename(dir, "model.gguf", NULL), *bytes;
    gsize len;
    g_assert_true(g_file_get_contents(src, &bytes, &len, NULL));
    g_assert_true(g_file_set_contents(path, bytes, (gssize)len, NULL));
    g_free(bytes);
    GError *err = NULL;
    CobraModel *m = cobra_model_load_with_flags(path, flags, &err);
    g_assert_no_error(err);
    CobraSession *s = cobra_session_new(m, 0, &err);

    g_assert_true(g_file_get_contents(other, &bytes, &len, NULL));
    int fd = open(path, O_WRONLY | O_TRUNC);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(write(fd, bytes, len), ==, (gssize)len);
    g_assert_cmpint(close(fd), ==, 0);
    g_free(bytes);

    assert_golden_answer(s);
    cobra_session_free(s);
    cobra_model_free(m);
    g_unlink(path);
    g_free(path);
    g_free(other);
    g_free(src);
}

/* A model loaded the default way keeps its weights when its file is rewritten under it; the
 * mapped one dies of SIGBUS (documented: only safe with rename-over updates). */
static void test_overwrite_while_loaded(void)
{
    /* The subprocess works in its parent's directory, named after the parent, and dies there. */
    char *name = g_strdup_printf("cobra-test-overwrite-%d",
                                 (int)(g_test_subprocess() ? getppid() : getpid()));
    char *dir = g_build_filename(g_get_tmp_dir(), name, NULL);
    g_free(name);
    if (g_test_subprocess()) {
        load_then_overwrite(dir, COBRA_LOAD_MMAP);
        g_free(dir);
        return;
    }
    g_assert_cmpint(g_mkdir(dir, 0700), ==, 0);
    load_then_overwrite(dir, COBRA_LOAD_DEFAULT);
    g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
    g_test_trap_assert_failed();
    char *left = g_build_filename(dir, "model.gguf", NULL);
    g_unlink(left);
    g_rmdir(dir);
    g_free(left);
    g_free(dir);
}

/* ---- the question's ids are kept ---- */

static double ask_seconds(CobraSession *s, const char *q, const CobraParams *p)
{
    GError *err = NULL;
    gint64 t0 = g_get_monotonic_time();
    g_free(cobra_session_ask(s, q, p, NULL, NULL, &err));
    g_assert_no_error(err);
    return (g_get_monotonic_time() - t0) / 1e6;
}

/* A 2 MB question is tokenised when it changes, not on every ask: the kept ids are those a fresh
 * session computes, and asking again costs a small fraction of the first ask. A ratio inside one
 * process, so the model gets a 64-token context: what is left of an ask is then a few ms of
 * prefill against 0.2-0.5 s of tokenising, and a margin of 5 holds on a loaded machine. */
static void test_question_kept(void)
{
    uint32_t context = 64;
    char *path = patched_model("mamba.context_length", &context, 4);
    GError *err = NULL;
    CobraModel *m = cobra_model_load(path, &err);
    g_assert_no_error(err);
    /* One thread: no OpenMP team to wait for on a machine busy with other work. */
    CobraSession *s = cobra_session_new(m, 1, &err), *fresh = cobra_session_new(m, 1, &err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    g_assert_true(cobra_session_set_image(fresh, &img, &err));
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 1;
    GString *big = g_string_new(NULL);
    while (big->len < 2 << 20)
        g_string_append(big, "a cat ");

    /* Minimums: the cost of each path without the other processes' interruptions. */
    double first = ask_seconds(s, big->str, &p), kept = G_MAXDOUBLE;
    for (int i = 0; i < 3; i++)
        kept = MIN(kept, ask_seconds(s, big->str, &p));
    ask_seconds(s, "Hello?", &p);
    double changed = ask_seconds(s, big->str, &p); /* tokenised anew */
    g_test_message("2 MB question: %.3f s, kept %.4f s, %.3f s after a change", first, kept,
                   changed);
    g_assert_cmpfloat(kept, <, MIN(first, changed) / 5);

    Dumps kept_dumps = {g_hash_table_new_full(g_str_hash, g_str_equal, g_free, free_npy)};
    Dumps ref = {g_hash_table_new_full(g_str_hash, g_str_equal, g_free, free_npy)};
    cobra_session_set_tensor_callback(s, keep_tensor, &kept_dumps);
    cobra_session_set_tensor_callback(fresh, keep_tensor, &ref);
    ask_seconds(s, big->str, &p);
    CobraTimings t_kept, t_ref;
    cobra_session_get_timings(s, &t_kept);
    ask_seconds(fresh, big->str, &p);
    cobra_session_get_timings(fresh, &t_ref);
    Npy *got = g_hash_table_lookup(kept_dumps.tensors, "prompt_ids");
    Npy *want = g_hash_table_lookup(ref.tensors, "prompt_ids");
    g_assert_cmpmem(got->data, got->n_elems * 4, want->data, want->n_elems * 4);
    g_assert_cmpint(t_kept.n_prompt_truncated, ==, t_ref.n_prompt_truncated);
    g_assert_cmpint(t_kept.n_prompt_truncated, >, 0);
    g_assert_cmpint(t_kept.n_prompt_tokens, ==, cobra_model_max_prompt_tokens(m));

    g_hash_table_unref(kept_dumps.tensors);
    g_hash_table_unref(ref.tensors);
    g_string_free(big, TRUE);
    npy_free(&a);
    cobra_session_free(s);
    cobra_session_free(fresh);
    cobra_model_free(m);
    test_remove_temp_file(path);
}

/* cobra-cli: decodes the PNG with GStreamer, prints only the answer, dumps the intermediates. */
static void test_cli(void)
{
    const char *cli = g_getenv("COBRA_CLI");
    g_assert_nonnull(cli);
    char *model = test_model_path("f32");
    char *image = test_data_path("tiny/golden/image.png");
    char *dir = g_dir_make_tmp("cobra-cli-XXXXXX", NULL);
    char *q = test_golden_question();
    char *n = g_strdup_printf("%d", golden_n_generated());
    const char *argv[] = {cli, "-m", model, "-i", image, "-p", q, "-n", n, "--dump-dir", dir, NULL};
    char *out = NULL, *errout = NULL;
    int status;
    GError *err = NULL;
    g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out,
                               &errout, &status, &err));
    g_assert_no_error(err);
    g_assert_true(g_spawn_check_wait_status(status, NULL));
    char *manifest = test_read_text("tiny/golden/manifest.json");
    char *expected = g_strstrip(test_json_string(manifest, "generated_text"));
    char *expected_line = g_strconcat(expected, "\n", NULL);
    g_assert_cmpstr(out, ==, expected_line);

    GHashTable *tensors = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, free_npy);
    GDir *gd = g_dir_open(dir, 0, NULL);
    const char *name;
    while ((name = g_dir_read_name(gd))) {
        char *path = g_build_filename(dir, name, NULL);
        Npy *a = g_new0(Npy, 1);
        g_assert_true(npy_load(path, a, NULL));
        g_hash_table_insert(tensors, g_strndup(name, strlen(name) - 4), a);
        g_unlink(path);
        g_free(path);
    }
    g_dir_close(gd);
    g_rmdir(dir);
    compare_dumps(tensors, 1e-4);
    g_hash_table_unref(tensors);

    /* A question in UTF-8 under a UTF-8 locale is taken and answered. */
    const char *utf8[] = {cli, "-m", model, "-i", image, "-p", "Qu\u00e9 ves? \u2014 \u753b\u50cf", "-n", "2",
                          NULL};
    char **env = g_environ_setenv(g_environ_unsetenv(g_get_environ(), "LC_ALL"), "LANG",
                                  "C.UTF-8", TRUE);
    g_free(errout);
    g_free(out);
    g_assert_true(g_spawn_sync(NULL, (char **)utf8, env, G_SPAWN_DEFAULT, NULL, NULL, &out,
                               &errout, &status, NULL));
    g_assert_true(g_spawn_check_wait_status(status, NULL));
    g_assert_cmpuint(strlen(out), >, 1);
    g_strfreev(env);

    /* Errors: one line on stderr, non-zero exit. */
    const char *bad[] = {cli, "-m", "/nonexistent.gguf", "-i", image, "-p", "hi", NULL};
    g_free(errout);
    g_free(out);
    g_assert_true(g_spawn_sync(NULL, (char **)bad, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out,
                               &errout, &status, NULL));
    g_assert_false(g_spawn_check_wait_status(status, NULL));
    g_assert_cmpstr(out, ==, "");
    g_assert_nonnull(strstr(errout, "/nonexistent.gguf"));
    g_assert_cmpint(strchr(errout, '\n') - errout, ==, (long)strlen(errout) - 1);

    g_free(expected_line);
    g_free(expected);
    g_free(manifest);
    g_free(out);
    g_free(errout);
    g_free(n);
    g_free(q);
    g_free(dir);
    g_free(image);
    g_free(model);
}

/* Runs `cobra-cli -m MODEL FLAG` with the n bytes of `input` on stdin; returns its exit status,
 * its stdout in *out and its stderr in *err. */
static int run_cli_stdin(const char *flag, const char *input, size_t n, char **out, char **err)
{
    char *model = test_model_path("f32");
    char *dir = g_dir_make_tmp("cobra-cli-XXXXXX", NULL);
    char *in = g_build_filename(dir, "stdin", NULL);
    g_assert_true(g_file_set_contents(in, input, (gssize)n, NULL));
    const char *argv[] = {"/bin/sh", "-c", "exec \"$0\" -m \"$1\" $2 < \"$3\"",
                          g_getenv("COBRA_CLI"), model, flag, in, NULL};
    int status;
    g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, out, err,
                               &status, NULL));
    g_unlink(in);
    g_rmdir(dir);
    g_free(in);
    g_free(dir);
    g_free(model);
    g_assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* Runs `cobra-cli -m MODEL FLAG` with `input` on stdin, expecting success; returns its stdout. */
static char *cli_filter(const char *flag, const char *input)
{
    char *out, *err;
    g_assert_cmpint(run_cli_stdin(flag, input, strlen(input), &out, &err), ==, 0);
    g_free(err);
    return out;
}

/* --tokenize gives the reference prompt ids as a JSON array; --detokenize brings the text back. */
static void test_cli_tokenize(void)
{
    char *manifest = test_read_text("tiny/golden/manifest.json");
    char *prompt = test_json_string(manifest, "prompt");
    Npy ids;
    test_load_npy("tiny/golden/prompt_ids.npy", &ids);
    GString *expected = g_string_new("[");
    for (size_t i = 0; i < ids.n_elems; i++)
        g_string_append_printf(expected, "%s%d", i ? ", " : "", ((int32_t *)ids.data)[i]);
    g_string_append(expected, "]\n");
    char *json = cli_filter("--tokenize", prompt);
    g_assert_cmpstr(json, ==, expected->str);
    char *text = cli_filter("--detokenize", json);
    g_assert_cmpstr(text, ==, prompt);
    g_free(text);
    g_free(json);
    g_string_free(expected, TRUE);
    npy_free(&ids);
    g_free(prompt);
    g_free(manifest);
}

/* A NUL on stdin is not silently the end of the text. */
static void test_cli_tokenize_nul(void)
{
    char *out, *err;
    g_assert_cmpint(run_cli_stdin("--tokenize", "abc\0def", 7, &out, &err), !=, 0);
    g_test_message("%s", err);
    g_assert_cmpstr(out, ==, "");
    g_assert_nonnull(strstr(err, "NUL byte at offset 3"));
    g_free(out);
    g_free(err);
}

/* --detokenize takes integers, bare or in one pair of brackets, separated by commas or space;
 * anything else is refused with exit status 2, naming what it could not read. */
static void test_cli_detokenize_strict(void)
{
    char *hello = cli_filter("--detokenize", "[12092, 13]");
    static const char *same[] = {"12092 13", "12092,13", " [ 12092 ,\n13 ]\n", "12092, 13"};
    for (size_t i = 0; i < G_N_ELEMENTS(same); i++) {
        char *text = cli_filter("--detokenize", same[i]);
        g_assert_cmpstr(text, ==, hello);
        g_free(text);
    }
    char *empty = cli_filter("--detokenize", "[]");
    g_assert_cmpstr(empty, ==, "");
    static const struct {
        const char *input, *named;
    } bad[] = {
        {"[1,2", "bracket"}, {"1,2]", "bracket"}, {"1e5", "'1e5'"}, {"[1, x]", "'x'"},
        {"-1", "'-1'"},      {"1.0", "'1.0'"},    {"2147483648", "'2147483648'"},
        {"[[1]]", "'[1]'"},   {"0x10", "'0x10'"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        char *out, *err;
        int status = run_cli_stdin("--detokenize", bad[i].input, strlen(bad[i].input), &out, &err);
        g_test_message("%s -> %d: %s", bad[i].input, status, err);
        g_assert_cmpint(status, ==, 2);
        g_assert_cmpstr(out, ==, "");
        if (!strstr(err, bad[i].named))
            g_test_fail_printf("'%s': the error '%s' does not name %s", bad[i].input, err,
                               bad[i].named);
        g_free(out);
        g_free(err);
    }
    g_free(empty);
    g_free(hello);
}

/* Crafted .npy headers: each is refused with an error, none is read past its end. The ASan build
 * of this test catches an overread: the header that ends right after 'descr':'< (with the other
 * keys before it) was read two bytes past its copy. */
static void test_npy_headers(void)
{
    static const char *headers[] = {
        "{'descr':'<",
        "{'descr':'",
        "{'descr':'<f",
        "{'descr':'<f4",
        "{'descr':'<f4', 'fortran_order': False, 'shape': (",
        "{'descr':'<f4', 'fortran_order': False, 'shape': (2,",
        "{'descr':'<f4', 'fortran_order': False, 'shape': (-2,), }",
        "{'descr':'<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }",
        "{'descr':'<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }",
        "{'descr':'<f4', 'fortran_order': True, 'shape': (2,), }",
        "{'descr':'>f4', 'fortran_order': False, 'shape': (2,), }",
        "{'descr':'<c8', 'fortran_order': False, 'shape': (2,), }",
        "{'fortran_order': False, 'shape': (2,), 'descr':'<",
        "",
    };
    char *dir = g_dir_make_tmp("cobra-npy-XXXXXX", NULL);
    char *path = g_build_filename(dir, "a.npy", NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(headers); i++) {
        size_t n = strlen(headers[i]);
        /* the header sits exactly at the end of the file: nothing after it to run into */
        GByteArray *file = g_byte_array_new();
        uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)n, (uint8_t)(n >> 8)};
        g_byte_array_append(file, pre, 10);
        g_byte_array_append(file, (const uint8_t *)headers[i], (guint)n);
        g_assert_true(g_file_set_contents(path, (const char *)file->data, file->len, NULL));
        Npy a;
        GError *err = NULL;
        g_assert_false(npy_load(path, &a, &err));
        g_assert_nonnull(err);
        g_assert_nonnull(strstr(err->message, path));
        g_clear_error(&err);
        g_byte_array_unref(file);
    }
    g_unlink(path);
    g_rmdir(dir);
    g_free(path);
    g_free(dir);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/cobra/golden", test_golden);
    g_test_add_func("/cobra/questions-share-image", test_questions_share_image);
    g_test_add_func("/cobra/bad-requests", test_bad_requests);
    g_test_add_func("/cobra/cancel", test_cancel);
    g_test_add_func("/cobra/cancel-from-thread", test_cancel_from_thread);
    g_test_add_func("/cobra/stop-reason", test_stop_reason);
    g_test_add_func("/cobra/bad-metadata", test_bad_metadata);
    g_test_add_func("/cobra/f16", test_f16);
    g_test_add_func("/cobra/q8_0", test_q8_0);
    g_test_add_func("/cobra/q4_0", test_q4_0);
    g_test_add_func("/cobra/model-errors", test_model_errors);
    g_test_add_func("/cobra/load-not-regular", test_load_not_regular);
    g_test_add_func("/cobra/overwrite-while-loaded", test_overwrite_while_loaded);
    g_test_add_func("/cobra/question-kept", test_question_kept);
    g_test_add_func("/cobra/cli", test_cli);
    g_test_add_func("/cobra/cli-tokenize", test_cli_tokenize);
    g_test_add_func("/cobra/cli-tokenize-nul", test_cli_tokenize_nul);
    g_test_add_func("/cobra/cli-detokenize-strict", test_cli_detokenize_strict);
    g_test_add_func("/cobra/npy-headers", test_npy_headers);
    return g_test_run();
}
