/* test_mamba.c - the Mamba language model against the reference run of the tiny model
 * (tests/data/tiny/golden): prefill in one chunk, in small chunks and token by token, greedy
 * decoding through the recurrent step, state snapshots, quantised weights and load errors. */
#include <glib/gstdio.h>
#include <omp.h>
#include <string.h>

#include "cobra.h"
#include "gguf.h"
#include "mamba.h"
#include "support.h"

#define TOL 1e-4

typedef struct {
    GgufFile *file;
    Mamba m;
    Workspace ws;
    MambaBuffers *buf;
    MambaState state;
} Lm;

static void lm_open(Lm *lm, const char *outtype, int max_chunk)
{
    char *path = test_model_path(outtype);
    GError *err = NULL;
    lm->file = gguf_open(path, &err);
    g_assert_no_error(err);
    g_assert_true(mamba_load(&lm->m, lm->file, &err));
    g_assert_no_error(err);
    workspace_init(&lm->ws, mamba_max_cols(&lm->m), max_chunk);
    lm->buf = mamba_buffers_new(&lm->m, max_chunk);
    mamba_state_init(&lm->state, &lm->m);
    g_free(path);
}

static void lm_close(Lm *lm)
{
    mamba_state_free(&lm->state);
    mamba_buffers_free(lm->buf);
    workspace_free(&lm->ws);
    mamba_free(&lm->m);
    gguf_close(lm->file);
}

/* The shape of every golden array is checked against the model before it is used. */
static void check_shape(const Npy *a, const char *what, int n_dims, const int64_t *shape)
{
    g_assert_cmpint(a->n_dims, ==, n_dims);
    for (int i = 0; i < n_dims; i++)
        if (a->shape[i] != shape[i])
            g_error("%s: dim %d is %" G_GINT64_FORMAT ", expected %" G_GINT64_FORMAT, what, i,
                    a->shape[i], shape[i]);
}

static void load_expect(const char *rel, Npy *a, int n_dims, const int64_t *shape)
{
    test_load_npy(rel, a);
    check_shape(a, rel, n_dims, shape);
}

static float *embed_ids(const Lm *lm, const Npy *ids)
{
    g_assert_cmpstr(ids->dtype, ==, "i4");
    const int32_t *v = ids->data;
    for (size_t i = 0; i < ids->n_elems; i++)
        g_assert_true(v[i] >= 0 && v[i] < lm->m.n_vocab);
    float *x = g_new(float, ids->n_elems * lm->m.d_model);
    mamba_embed(&lm->m, v, (int)ids->n_elems, x);
    return x;
}

/* The multimodal sequence: image tokens (projected.npy) then the embedded prompt. */
static float *multimodal_input(const Lm *lm, int *n)
{
    const int d = lm->m.d_model;
    Npy proj, ids;
    test_load_npy("tiny/golden/projected.npy", &proj);
    test_load_npy("tiny/golden/prompt_ids.npy", &ids);
    g_assert_cmpint(proj.n_dims, ==, 2);
    g_assert_cmpint(proj.shape[1], ==, d);
    const int n_img = (int)proj.shape[0], n_txt = (int)ids.n_elems;
    float *txt = embed_ids(lm, &ids);
    float *x = g_new(float, (size_t)(n_img + n_txt) * d);
    memcpy(x, proj.data, (size_t)n_img * d * sizeof(float));
    memcpy(x + (size_t)n_img * d, txt, (size_t)n_txt * d * sizeof(float));
    *n = n_img + n_txt;
    g_free(txt);
    npy_free(&proj);
    npy_free(&ids);
    return x;
}

/* From a zero state: all n positions at once (in chunks of the buffers' size), or one
 * recurrent step per position. */
static void run_sequence(Lm *lm, const float *x, int n, gboolean stepwise, float *hidden,
                         float *logits)
{
    const int d = lm->m.d_model;
    mamba_state_reset(&lm->state, &lm->m);
    if (!stepwise) {
        mamba_forward(&lm->m, &lm->state, x, n, hidden, logits, lm->buf, &lm->ws, NULL);
        return;
    }
    for (int t = 0; t < n; t++)
        mamba_forward(&lm->m, &lm->state, x + (size_t)t * d, 1, hidden + (size_t)t * d,
                      t == n - 1 ? logits : NULL, lm->buf, &lm->ws, NULL);
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* ids of the k largest values, largest first. */
static void top_k(const float *v, int n, int k, int32_t *ids)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            gboolean taken = FALSE;
            for (int p = 0; p < j; p++)
                taken |= ids[p] == i;
            if (!taken && (best < 0 || v[i] > v[best]))
                best = i;
        }
        ids[j] = best;
    }
}

static void test_text_only(void)
{
    Lm lm;
    lm_open(&lm, "f32", 64);
    const int d = lm.m.d_model, V = lm.m.n_vocab;
    Npy ids, hid_ref, logits_ref;
    test_load_npy("tiny/golden/text_ids.npy", &ids);
    const int n = (int)ids.n_elems;
    load_expect("tiny/golden/text_final_hidden.npy", &hid_ref, 2, (int64_t[]){n, d});
    load_expect("tiny/golden/text_logits_last.npy", &logits_ref, 1, (int64_t[]){V});

    float *x = embed_ids(&lm, &ids);
    float *hidden = g_new(float, (size_t)n * d), *logits = g_new(float, V);
    run_sequence(&lm, x, n, FALSE, hidden, logits);
    assert_rel_error("text_final_hidden", hidden, hid_ref.data, (size_t)n * d, TOL);
    assert_rel_error("text_logits_last", logits, logits_ref.data, V, TOL);

    /* Logits alone (no hidden_out) take the last-row path. */
    float *logits2 = g_new(float, V);
    run_sequence(&lm, x, n, FALSE, NULL, logits2);
    g_assert_cmpmem(logits, V * sizeof(float), logits2, V * sizeof(float));

    g_free(logits2);
    g_free(x);
    g_free(hidden);
    g_free(logits);
    npy_free(&ids);
    npy_free(&hid_ref);
    npy_free(&logits_ref);
    lm_close(&lm);
}

/* The multimodal prompt with prefill chunks of max_chunk (or one step per token) against every
 * golden output of the prompt: hidden states, last logits and the final state. */
static void check_multimodal(int max_chunk, gboolean stepwise)
{
    Lm lm;
    lm_open(&lm, "f32", max_chunk);
    const int d = lm.m.d_model, V = lm.m.n_vocab, L = lm.m.n_layer, di = lm.m.d_inner;
    int n;
    float *x = multimodal_input(&lm, &n);
    Npy hid_ref, logits_ref, conv_ref, ssm_ref;
    load_expect("tiny/golden/final_hidden.npy", &hid_ref, 2, (int64_t[]){n, d});
    load_expect("tiny/golden/logits_last.npy", &logits_ref, 1, (int64_t[]){V});
    load_expect("tiny/golden/conv_state.npy", &conv_ref, 3, (int64_t[]){L, di, lm.m.d_conv});
    load_expect("tiny/golden/ssm_state.npy", &ssm_ref, 3, (int64_t[]){L, di, lm.m.d_state});

    float *hidden = g_new(float, (size_t)n * d), *logits = g_new(float, V);
    run_sequence(&lm, x, n, stepwise, hidden, logits);
    assert_rel_error("final_hidden", hidden, hid_ref.data, (size_t)n * d, TOL);
    assert_rel_error("logits_last", logits, logits_ref.data, V, TOL);
    assert_rel_error("conv_state", lm.state.conv, conv_ref.data, conv_ref.n_elems, TOL);
    assert_rel_error("ssm_state", lm.state.ssm, ssm_ref.data, ssm_ref.n_elems, TOL);

    g_free(x);
    g_free(hidden);
    g_free(logits);
    npy_free(&hid_ref);
    npy_free(&logits_ref);
    npy_free(&conv_ref);
    npy_free(&ssm_ref);
    lm_close(&lm);
}

static void test_multimodal(void)
{
    check_multimodal(256, FALSE);
}

static void test_multimodal_chunked(void)
{
    /* 5 does not divide the sequence and is larger than d_conv - 1 of the tiny model; 2 is
     * smaller, so the conv state is shifted rather than replaced. */
    check_multimodal(5, FALSE);
    check_multimodal(2, FALSE);
}

static void test_multimodal_stepwise(void)
{
    check_multimodal(8, TRUE);
}

/* Greedy decoding through the recurrent step from the prompt state, with `threads` OpenMP
 * threads: a token's chunks are shared among whichever threads come (3 on a 2-core machine
 * leaves one late), and every count must give the reference's tokens. */
static void check_greedy(int threads)
{
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    Lm lm;
    lm_open(&lm, "f32", 16);
    const int d = lm.m.d_model, V = lm.m.n_vocab;
    int n;
    float *x = multimodal_input(&lm, &n);
    Npy gen, top_ids, top_logits;
    test_load_npy("tiny/golden/generated_ids.npy", &gen);
    const int steps = (int)gen.n_elems;
    g_assert_cmpint(steps, >, 0);
    load_expect("tiny/golden/step_top5_ids.npy", &top_ids, 2, (int64_t[]){steps, 5});
    load_expect("tiny/golden/step_top5_logits.npy", &top_logits, 2, (int64_t[]){steps, 5});
    const int32_t *gen_ref = gen.data, *top_ref = top_ids.data;
    const float *top_logit_ref = top_logits.data;

    float *logits = g_new(float, V), *emb = g_new(float, d);
    run_sequence(&lm, x, n, FALSE, NULL, logits);
    double worst = 0;
    for (int s = 0; s < steps; s++) {
        int32_t ids[5];
        float vals[5];
        top_k(logits, V, 5, ids);
        for (int j = 0; j < 5; j++) {
            if (ids[j] != top_ref[s * 5 + j])
                g_test_fail_printf("step %d: top-%d id %d, reference %d", s, j + 1, ids[j],
                                   top_ref[s * 5 + j]);
            vals[j] = logits[top_ref[s * 5 + j]];
        }
        worst = MAX(worst, rel_error(vals, top_logit_ref + s * 5, 5));
        const int32_t next = argmax(logits, V);
        g_assert_cmpint(next, ==, gen_ref[s]);
        mamba_embed(&lm.m, &next, 1, emb);
        mamba_forward(&lm.m, &lm.state, emb, 1, NULL, logits, lm.buf, &lm.ws, NULL);
    }
    g_test_message("top-5 logits over %d steps: worst relative error %.3g", steps, worst);
    g_assert_cmpfloat(worst, <=, TOL);

    g_free(x);
    g_free(logits);
    g_free(emb);
    npy_free(&gen);
    npy_free(&top_ids);
    npy_free(&top_logits);
    lm_close(&lm);
    omp_set_num_threads(saved);
}

static void test_greedy(void)
{
    check_greedy(omp_get_num_procs());
}

static void test_greedy_one_thread(void)
{
    check_greedy(1);
}

static void test_greedy_more_threads_than_cores(void)
{
    check_greedy(omp_get_num_procs() + 1);
}

/* A set cancel flag stops the forward before its first layer: FALSE, no logits written, the
 * state untouched; a clear one lets it run. */
static void test_cancel_flag(void)
{
    Lm lm;
    lm_open(&lm, "f32", 16);
    const int V = lm.m.n_vocab;
    int n;
    float *x = multimodal_input(&lm, &n);
    float *logits = g_new(float, V);
    size_t ssm_bytes = (size_t)lm.m.n_layer * lm.m.d_inner * lm.m.d_state * sizeof(float);
    float *ssm_before = g_malloc(ssm_bytes);
    mamba_state_reset(&lm.state, &lm.m);
    memcpy(ssm_before, lm.state.ssm, ssm_bytes);
    for (int i = 0; i < V; i++)
        logits[i] = -1;
    gint cancel = 1;
    g_assert_false(mamba_forward(&lm.m, &lm.state, x, n, NULL, logits, lm.buf, &lm.ws, &cancel));
    g_assert_cmpfloat(logits[0], ==, -1);
    g_assert_cmpmem(lm.state.ssm, ssm_bytes, ssm_before, ssm_bytes);
    cancel = 0;
    g_assert_true(mamba_forward(&lm.m, &lm.state, x, n, NULL, logits, lm.buf, &lm.ws, &cancel));
    Npy ref;
    load_expect("tiny/golden/logits_last.npy", &ref, 1, (int64_t[]){V});
    assert_rel_error("logits_last with a clear cancel flag", logits, ref.data, V, TOL);
    npy_free(&ref);
    g_free(ssm_before);
    g_free(logits);
    g_free(x);
    lm_close(&lm);
}

/* A copied state continues exactly as the original: a session snapshots the post-image state
 * and restores it before each question. */
static void test_snapshot(void)
{
    Lm lm;
    lm_open(&lm, "f32", 16);
    const int d = lm.m.d_model, V = lm.m.n_vocab;
    int n;
    float *x = multimodal_input(&lm, &n);
    const int split = n / 2; /* "image" part, then "question" part */
    MambaState snap;
    mamba_state_init(&snap, &lm.m);
    float *a = g_new(float, V), *b = g_new(float, V);

    mamba_state_reset(&lm.state, &lm.m);
    mamba_forward(&lm.m, &lm.state, x, split, NULL, NULL, lm.buf, &lm.ws, NULL);
    mamba_state_copy(&snap, &lm.state, &lm.m);
    mamba_forward(&lm.m, &lm.state, x + (size_t)split * d, n - split, NULL, a, lm.buf, &lm.ws,
                  NULL);
    /* Something else in between, then back to the snapshot. */
    mamba_forward(&lm.m, &lm.state, x, n, NULL, b, lm.buf, &lm.ws, NULL);
    g_assert_true(memcmp(a, b, V * sizeof(float)) != 0);
    mamba_state_copy(&lm.state, &snap, &lm.m);
    mamba_forward(&lm.m, &lm.state, x + (size_t)split * d, n - split, NULL, b, lm.buf, &lm.ws,
                  NULL);
    g_assert_cmpmem(a, V * sizeof(float), b, V * sizeof(float));

    /* The split prefill equals the golden one-sequence logits. */
    Npy ref;
    load_expect("tiny/golden/logits_last.npy", &ref, 1, (int64_t[]){V});
    assert_rel_error("logits_last after snapshot", b, ref.data, V, TOL);

    npy_free(&ref);
    mamba_state_free(&snap);
    g_free(a);
    g_free(b);
    g_free(x);
    lm_close(&lm);
}

/* Quantised weights, judged on the hidden states and logits (relative error, top-1), through
 * both matmul paths: GEMM (prefill chunks) and the fused matrix-vector kernels (one step per
 * token). Bounds are about 3x the errors measured on the tiny model. */
static void check_quantised(const char *outtype, gboolean stepwise, double tol_hidden,
                            double tol_logits)
{
    Lm lm;
    lm_open(&lm, outtype, 7);
    const int d = lm.m.d_model, V = lm.m.n_vocab;
    int n;
    float *x = multimodal_input(&lm, &n);
    Npy hid_ref, logits_ref;
    load_expect("tiny/golden/final_hidden.npy", &hid_ref, 2, (int64_t[]){n, d});
    load_expect("tiny/golden/logits_last.npy", &logits_ref, 1, (int64_t[]){V});
    float *hidden = g_new(float, (size_t)n * d), *logits = g_new(float, V);
    run_sequence(&lm, x, n, stepwise, hidden, logits);
    const char *path = stepwise ? "stepwise" : "prefill";
    char *what = g_strdup_printf("%s %s final_hidden", outtype, path);
    assert_rel_error(what, hidden, hid_ref.data, (size_t)n * d, tol_hidden);
    g_free(what);
    what = g_strdup_printf("%s %s logits_last", outtype, path);
    assert_rel_error(what, logits, logits_ref.data, V, tol_logits);
    g_free(what);
    g_assert_cmpint(argmax(logits, V), ==, argmax(logits_ref.data, V));

    g_free(x);
    g_free(hidden);
    g_free(logits);
    npy_free(&hid_ref);
    npy_free(&logits_ref);
    lm_close(&lm);
}

static void test_f16(void)
{
    check_quantised("f16", FALSE, 5e-3, 3e-3);
    check_quantised("f16", TRUE, 5e-3, 3e-3);
}

static void test_q8_0(void)
{
    check_quantised("q8_0", FALSE, 0.15, 0.07);
    check_quantised("q8_0", TRUE, 0.15, 0.07);
}

/* A copy of the model with one tensor renamed (one character of its name in the tensor table):
 * loading names the missing tensor. */
static void test_missing_tensor(void)
{
    char *src = test_model_path("f32");
    GError *err = NULL;
    gchar *bytes;
    gsize len;
    g_assert_true(g_file_get_contents(src, &bytes, &len, &err));

    /* The last layer's dt_proj: its name as GGUF stores it, a uint64 length then the bytes. */
    GgufFile *f = gguf_open(src, &err);
    g_assert_no_error(err);
    Mamba m;
    g_assert_true(mamba_load(&m, f, &err));
    char *name = g_strdup_printf("blk.%d.ssm_dt.weight", m.n_layer - 1);
    mamba_free(&m);
    gguf_close(f);
    const uint64_t name_len = strlen(name);
    gsize where = 0;
    int found = 0;
    for (gsize i = 0; i + 8 + name_len <= len; i++) {
        if (memcmp(bytes + i, &name_len, 8) == 0 && memcmp(bytes + i + 8, name, name_len) == 0) {
            where = i + 8;
            found++;
        }
    }
    g_assert_cmpint(found, ==, 1);
    bytes[where + name_len - strlen("weight")] = 'W'; /* blk.N.ssm_dt.Weight */

    char *dir = g_dir_make_tmp("test-mamba-XXXXXX", &err);
    g_assert_no_error(err);
    char *path = g_build_filename(dir, "renamed.gguf", NULL);
    g_assert_true(g_file_set_contents(path, bytes, len, &err));

    f = gguf_open(path, &err);
    g_assert_no_error(err);
    g_assert_false(mamba_load(&m, f, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
    g_test_message("error: %s", err->message);
    g_assert_nonnull(strstr(err->message, name));
    g_assert_nonnull(strstr(err->message, "renamed.gguf"));
    g_error_free(err);
    gguf_close(f);

    g_unlink(path);
    g_rmdir(dir);
    g_free(path);
    g_free(dir);
    g_free(name);
    g_free(bytes);
    g_free(src);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/mamba/text-only", test_text_only);
    g_test_add_func("/mamba/multimodal", test_multimodal);
    g_test_add_func("/mamba/multimodal-chunked", test_multimodal_chunked);
    g_test_add_func("/mamba/multimodal-stepwise", test_multimodal_stepwise);
    g_test_add_func("/mamba/greedy", test_greedy);
    g_test_add_func("/mamba/greedy-one-thread", test_greedy_one_thread);
    g_test_add_func("/mamba/greedy-more-threads-than-cores", test_greedy_more_threads_than_cores);
    g_test_add_func("/mamba/snapshot", test_snapshot);
    g_test_add_func("/mamba/cancel-flag", test_cancel_flag);
    g_test_add_func("/mamba/f16", test_f16);
    g_test_add_func("/mamba/q8_0", test_q8_0);
    g_test_add_func("/mamba/missing-tensor", test_missing_tensor);
    return g_test_run();
}
