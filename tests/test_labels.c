/* test_labels.c - cobra_session_score_labels() and cobra-cli --labels: single-token labels against
 * the golden logits, multi-token labels against tools/label_reference.py's float64 reference
 * (tests/data/tiny/labels/reference.json), and the errors. */
#include <math.h>
#include <string.h>

#include "cobra.h"
#include "support.h"

/* The relative logit errors test_cobra accepts per weight type. */
typedef struct {
    const char *outtype;
    double logits_tol;
} Weights;

static const Weights weights[] = {{"f32", 1e-4}, {"f16", 5e-3}, {"q8_0", 5e-2}};

/* A session of `outtype` holding the golden image. */
static CobraSession *golden_session(const char *outtype, CobraModel **model)
{
    *model = test_load_model(outtype);
    GError *err = NULL;
    CobraSession *s = cobra_session_new(*model, 0, &err);
    g_assert_no_error(err);
    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    g_assert_no_error(err);
    npy_free(&a);
    return s;
}

/* A logit within tol * max|logits| of the reference moves a log-softmax by at most twice that
 * (once itself, once through the log-sum-exp): the bound per label token. */
static double token_bound(double logits_tol)
{
    Npy ref;
    test_load_npy("tiny/golden/logits_last.npy", &ref);
    double max = 0;
    for (size_t i = 0; i < ref.n_elems; i++)
        max = fmax(max, fabs(((float *)ref.data)[i]));
    npy_free(&ref);
    return 2 * logits_tol * max;
}

/* log softmax(golden logits_last)[id], in double. */
static double golden_log_softmax(int32_t id)
{
    Npy ref;
    test_load_npy("tiny/golden/logits_last.npy", &ref);
    const float *x = ref.data;
    double max = -INFINITY, sum = 0;
    for (size_t i = 0; i < ref.n_elems; i++)
        max = fmax(max, x[i]);
    for (size_t i = 0; i < ref.n_elems; i++)
        sum += exp(x[i] - max);
    double lp = x[id] - max - log(sum);
    npy_free(&ref);
    return lp;
}

/* 1. Single-token labels from the golden step-0 top-5: their log-probs differ as the golden
 * logits do, equal the golden log-softmax, and the best is the greedy answer's first token. */
static void check_top5(const Weights *w)
{
    CobraModel *m;
    CobraSession *s = golden_session(w->outtype, &m);
    Npy ids, logits, gen;
    test_load_npy("tiny/golden/step_top5_ids.npy", &ids);
    test_load_npy("tiny/golden/step_top5_logits.npy", &logits);
    test_load_npy("tiny/golden/generated_ids.npy", &gen);
    int k = (int)ids.shape[1];
    const int32_t *top = ids.data; /* row 0: before the first generated token */
    const float *top_logit = logits.data;
    GPtrArray *labels = g_ptr_array_new_with_free_func(g_free);
    GArray *kept = g_array_new(FALSE, FALSE, sizeof(int)); /* indices into the top-k */
    GError *err = NULL;
    for (int i = 0; i < k; i++) {
        char *text = cobra_model_detokenize(m, &top[i], 1, FALSE);
        GArray *again = g_array_new(FALSE, FALSE, sizeof(int32_t));
        if (cobra_model_tokenize(m, text, again, NULL) && again->len == 1 &&
            g_array_index(again, int32_t, 0) == top[i]) {
            g_ptr_array_add(labels, text);
            g_array_append_val(kept, i);
        } else {
            g_free(text);
        }
        g_array_unref(again);
    }
    int n = (int)labels->len;
    g_test_message("%s: %d of the top-%d ids are labels of their own", w->outtype, n, k);
    g_assert_cmpint(n, >=, 2);
    float *lp = g_new(float, n);
    char *q = test_golden_question();
    g_assert_true(cobra_session_score_labels(s, q, (const char *const *)labels->pdata, n, lp,
                                             &err));
    g_assert_no_error(err);

    double bound = token_bound(w->logits_tol);
    int best = 0;
    for (int i = 0; i < n; i++) {
        int t = g_array_index(kept, int, i);
        int t0 = g_array_index(kept, int, 0);
        double diff = (double)lp[i] - lp[0], ref_diff = (double)top_logit[t] - top_logit[t0];
        if (!(fabs(diff - ref_diff) <= bound))
            g_test_fail_printf("%s: '%s' - '%s' = %g, golden logits give %g (bound %g)",
                               w->outtype, (char *)labels->pdata[i], (char *)labels->pdata[0],
                               diff, ref_diff, bound);
        double ref = golden_log_softmax(top[t]);
        if (!(fabs(lp[i] - ref) <= bound))
            g_test_fail_printf("%s: log p('%s') = %g, golden log-softmax %g (bound %g)",
                               w->outtype, (char *)labels->pdata[i], lp[i], ref, bound);
        if (lp[i] > lp[best])
            best = i;
    }
    int32_t first = ((int32_t *)gen.data)[0];
    g_assert_cmpint(top[g_array_index(kept, int, best)], ==, first);
    g_free(q);
    g_free(lp);
    g_array_unref(kept);
    g_ptr_array_unref(labels);
    npy_free(&gen);
    npy_free(&logits);
    npy_free(&ids);
    cobra_session_free(s);
    cobra_model_free(m);
}

static void test_top5_f32(void) { check_top5(&weights[0]); }
static void test_top5_f16(void) { check_top5(&weights[1]); }
static void test_top5_q8_0(void) { check_top5(&weights[2]); }

/* tests/data/tiny/labels/reference.json, read field by field. */
typedef struct {
    char *question;
    GPtrArray *text;      /* char* */
    GPtrArray *ids;       /* GArray of int32 */
    GArray *log_prob;     /* double */
} Reference;

static GArray *json_int_array(const char *json, const char *key)
{
    char *pat = g_strdup_printf("\"%s\"", key);
    const char *p = strstr(json, pat);
    g_assert_nonnull(p);
    p = strchr(p, '[');
    g_assert_nonnull(p);
    GArray *a = g_array_new(FALSE, FALSE, sizeof(int32_t));
    for (p++; *p && *p != ']';) {
        char *end;
        int32_t v = (int32_t)g_ascii_strtoll(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        g_array_append_val(a, v);
        p = end;
    }
    g_free(pat);
    return a;
}

static Reference load_reference(void)
{
    char *json = test_read_text("tiny/labels/reference.json");
    Reference r = {test_json_string(json, "question"), g_ptr_array_new_with_free_func(g_free),
                   g_ptr_array_new_with_free_func((GDestroyNotify)g_array_unref),
                   g_array_new(FALSE, FALSE, sizeof(double))};
    int n = (int)test_json_number(json, "n_labels");
    const char *p = strstr(json, "\"labels\"");
    g_assert_nonnull(p);
    for (int i = 0; i < n; i++) {
        p = strstr(p, "\"text\"");
        g_assert_nonnull(p);
        g_ptr_array_add(r.text, test_json_string(p, "text"));
        g_ptr_array_add(r.ids, json_int_array(p, "ids"));
        double lp = test_json_number(p, "log_prob");
        g_assert_false(isnan(lp));
        g_array_append_val(r.log_prob, lp);
        p = strstr(p, "\"log_prob\"");
    }
    g_assert_cmpint(n, >=, 2);
    g_free(json);
    return r;
}

static void reference_free(Reference *r)
{
    g_free(r->question);
    g_ptr_array_unref(r->text);
    g_ptr_array_unref(r->ids);
    g_array_unref(r->log_prob);
}

static int argmax_double(const double *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* 2. Multi-token labels: f32 equals the reference to 1e-4 relative; f16 and Q8_0 keep the best
 * label and the order of every pair the reference separates by more than their bounds. */
static void check_reference(const Weights *w)
{
    Reference r = load_reference();
    CobraModel *m;
    CobraSession *s = golden_session(w->outtype, &m);
    int n = (int)r.text->len;
    GError *err = NULL;
    for (int i = 0; i < n; i++) {
        GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
        g_assert_true(cobra_model_tokenize(m, r.text->pdata[i], ids, &err));
        GArray *ref = g_ptr_array_index(r.ids, i);
        g_assert_cmpmem(ids->data, ids->len * sizeof(int32_t), ref->data,
                        ref->len * sizeof(int32_t));
        g_array_unref(ids);
    }
    float *lp = g_new(float, n), *ref = g_new(float, n);
    g_assert_true(cobra_session_score_labels(s, r.question, (const char *const *)r.text->pdata,
                                             n, lp, &err));
    g_assert_no_error(err);
    const double *ref_lp = (const double *)r.log_prob->data;
    for (int i = 0; i < n; i++) {
        ref[i] = (float)ref_lp[i];
        g_test_message("%s: log p('%s') = %.7g, reference %.7g", w->outtype,
                       (char *)r.text->pdata[i], lp[i], ref_lp[i]);
    }
    if (strcmp(w->outtype, "f32") == 0)
        assert_rel_error("f32 label log-probs", lp, ref, n, 1e-4);

    int best = argmax_double(ref_lp, n), got_best = 0;
    for (int i = 1; i < n; i++)
        if (lp[i] > lp[got_best])
            got_best = i;
    g_assert_cmpstr(r.text->pdata[got_best], ==, r.text->pdata[best]);
    double bound = token_bound(w->logits_tol);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double bi = bound * ((GArray *)g_ptr_array_index(r.ids, i))->len;
            double bj = bound * ((GArray *)g_ptr_array_index(r.ids, j))->len;
            if (ref_lp[i] - ref_lp[j] > bi + bj && !(lp[i] > lp[j]))
                g_test_fail_printf("%s: '%s' should score above '%s' (%g vs %g)", w->outtype,
                                   (char *)r.text->pdata[i], (char *)r.text->pdata[j], lp[i],
                                   lp[j]);
        }
    g_free(lp);
    g_free(ref);
    reference_free(&r);
    cobra_session_free(s);
    cobra_model_free(m);
}

static void test_reference_f32(void) { check_reference(&weights[0]); }
static void test_reference_f16(void) { check_reference(&weights[1]); }
static void test_reference_q8_0(void) { check_reference(&weights[2]); }

/* Each label continues from the state after the prompt, not from the label before it, and
 * scoring leaves the image state as it was; the timings count the prompt and no generation. */
static void test_independent(void)
{
    CobraModel *m;
    CobraSession *s = golden_session("f32", &m);
    char *q = test_golden_question();
    const char *both[] = {"a red circle", "blue sky"}, *swapped[] = {"blue sky", "a red circle"};
    float lp[2], lp_swapped[2], alone;
    GError *err = NULL;
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = 8;
    char *before = cobra_session_ask(s, q, &p, NULL, NULL, &err);
    g_assert_true(cobra_session_score_labels(s, q, both, 2, lp, &err));
    g_assert_true(cobra_session_score_labels(s, q, swapped, 2, lp_swapped, &err));
    g_assert_true(cobra_session_score_labels(s, q, both + 1, 1, &alone, &err));
    CobraTimings t;
    cobra_session_get_timings(s, &t);
    Npy prompt_ids;
    test_load_npy("tiny/golden/prompt_ids.npy", &prompt_ids);
    g_assert_cmpint(t.n_prompt_tokens, ==, (int)prompt_ids.n_elems);
    g_assert_cmpint(t.n_generated, ==, 0);
    npy_free(&prompt_ids);
    char *after = cobra_session_ask(s, q, &p, NULL, NULL, &err);
    g_assert_no_error(err);
    g_assert_cmpfloat(lp[0], ==, lp_swapped[1]);
    g_assert_cmpfloat(lp[1], ==, lp_swapped[0]);
    g_assert_cmpfloat(lp[1], ==, alone);
    g_assert_cmpstr(before, ==, after);
    g_free(before);
    g_free(after);
    g_free(q);
    cobra_session_free(s);
    cobra_model_free(m);
}

/* A failed call: INVALID (or `code`), a message containing `needle`. */
static void expect_error(CobraSession *s, const char *const *labels, int n, int code,
                         const char *needle)
{
    GError *err = NULL;
    float *lp = g_new(float, MAX(n, 1));
    g_assert_false(cobra_session_score_labels(s, "What is it?", labels, n, lp, &err));
    g_assert_error(err, COBRA_ERROR, code);
    if (!strstr(err->message, needle))
        g_test_fail_printf("'%s' does not mention '%s'", err->message, needle);
    g_clear_error(&err);
    g_free(lp);
}

/* n copies of `label`, for the count limit. */
static const char **repeat(const char *label, int n)
{
    const char **labels = g_new(const char *, n);
    for (int i = 0; i < n; i++)
        labels[i] = label;
    return labels;
}

/* " cat" n times: n tokens (checked). */
static char *label_of_tokens(const CobraModel *m, int n)
{
    GString *s = g_string_new("cat");
    for (int i = 1; i < n; i++)
        g_string_append(s, " cat");
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    g_assert_true(cobra_model_tokenize(m, s->str, ids, NULL));
    g_assert_cmpint(ids->len, ==, n);
    g_array_unref(ids);
    return g_string_free(s, FALSE);
}

/* 3. Errors, each naming the label or count and the limit; the limits themselves pass. */
static void test_errors(void)
{
    CobraModel *m = test_load_model("f32");
    GError *err = NULL;
    CobraSession *s = cobra_session_new(m, 0, &err);
    const char *ok[] = {"yes", "no"};
    expect_error(s, ok, 2, COBRA_ERROR_STATE, "image");

    Npy a;
    CobraImage img = test_golden_image(&a);
    g_assert_true(cobra_session_set_image(s, &img, &err));
    expect_error(s, ok, 0, COBRA_ERROR_INVALID, "no labels");
    const char *blank[] = {"yes", "  "};
    expect_error(s, blank, 2, COBRA_ERROR_INVALID, "label 1 ('  ') is empty");
    const char *empty[] = {""};
    expect_error(s, empty, 1, COBRA_ERROR_INVALID, "label 0");
    const char *bad_utf8[] = {"yes", "no", "caf\xc3 bad"};
    expect_error(s, bad_utf8, 3, COBRA_ERROR_INVALID, "label 2 is not valid UTF-8");
    const char *null_label[] = {"yes", NULL};
    expect_error(s, null_label, 2, COBRA_ERROR_INVALID, "label 1");
    /* The GPT-NeoX tokenizer has added tokens past the embedding rows. */
    const char *unembedded[] = {"RWKV"};
    expect_error(s, unembedded, 1, COBRA_ERROR_INVALID, "label 0 ('RWKV') contains token");

    const char **many = repeat("yes", COBRA_MAX_LABELS + 1);
    char *limit = g_strdup_printf("%d labels, more than %d", COBRA_MAX_LABELS + 1,
                                  COBRA_MAX_LABELS);
    expect_error(s, many, COBRA_MAX_LABELS + 1, COBRA_ERROR_INVALID, limit);
    float *lp = g_new(float, COBRA_MAX_LABELS);
    g_assert_true(cobra_session_score_labels(s, "What is it?", many, COBRA_MAX_LABELS, lp, &err));
    g_assert_no_error(err);
    g_assert_cmpfloat(lp[0], ==, lp[COBRA_MAX_LABELS - 1]);

    char *longest = label_of_tokens(m, COBRA_MAX_LABEL_TOKENS);
    char *too_long = label_of_tokens(m, COBRA_MAX_LABEL_TOKENS + 1);
    const char *labels[] = {"yes", too_long};
    char *tokens = g_strdup_printf("has %d tokens, more than %d", COBRA_MAX_LABEL_TOKENS + 1,
                                   COBRA_MAX_LABEL_TOKENS);
    expect_error(s, labels, 2, COBRA_ERROR_INVALID, tokens);
    labels[1] = longest;
    g_assert_true(cobra_session_score_labels(s, "What is it?", labels, 2, lp, &err));
    g_assert_no_error(err);
    g_assert_true(lp[1] < 0 && isfinite(lp[1]));

    /* The question is checked as ask() checks it. */
    GError *qerr = NULL;
    g_assert_false(cobra_session_score_labels(s, " \n", ok, 2, lp, &qerr));
    g_assert_error(qerr, COBRA_ERROR, COBRA_ERROR_INVALID);
    g_clear_error(&qerr);

    g_free(tokens);
    g_free(longest);
    g_free(too_long);
    g_free(lp);
    g_free(limit);
    g_free(many);
    npy_free(&a);
    cobra_session_free(s);
    cobra_model_free(m);
}

/* Scoring after a cancel fails with CANCELLED. The session is not used again: whether the
 * cancel outlives the call is the cancellation API's business (tests/test_cobra.c). */
static void test_cancel(void)
{
    CobraModel *m;
    CobraSession *s = golden_session("f32", &m);
    const char *labels[] = {"yes", "no"};
    cobra_session_cancel(s);
    expect_error(s, labels, 2, COBRA_ERROR_CANCELLED, "cancel");
    cobra_session_free(s);
    cobra_model_free(m);
}

/* Runs cobra-cli on the golden image with --labels; returns its stdout, `ok` its success. */
static char *run_cli(const char *label_list, gboolean *ok, char **errout)
{
    char *model = test_model_path("f32");
    char *image = test_data_path("tiny/golden/image.png");
    Reference r = load_reference();
    const char *argv[] = {g_getenv("COBRA_CLI"), "-m", model, "-i", image, "-p", r.question,
                          "--labels", label_list, NULL};
    char *out = NULL;
    int status;
    GError *err = NULL;
    g_assert_nonnull(argv[0]);
    g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out,
                               errout, &status, &err));
    g_assert_no_error(err);
    *ok = g_spawn_check_wait_status(status, NULL);
    reference_free(&r);
    g_free(image);
    g_free(model);
    return out;
}

/* 4. cobra-cli --labels: one JSON line whose label, confidence and scores follow the reference;
 * items are trimmed, and quotes, backslashes and tabs in labels are escaped. */
static void test_cli(void)
{
    Reference r = load_reference();
    int n = (int)r.text->len;
    GString *list = g_string_new(NULL);
    for (int i = 0; i < n; i++)
        g_string_append_printf(list, "%s %s ", i ? "," : "", (char *)r.text->pdata[i]);
    g_string_append(list, ", say \"hi\"\\, a\tb");
    gboolean ok;
    char *out = run_cli(list->str, &ok, NULL);
    g_assert_true(ok);
    g_test_message("%s", out);
    g_assert_true(g_str_has_prefix(out, "{") && g_str_has_suffix(out, "}}\n"));
    g_assert_cmpint(strchr(out, '\n') - out, ==, (long)strlen(out) - 1);

    const double *ref_lp = (const double *)r.log_prob->data;
    const char *scores = strstr(out, "\"scores\"");
    g_assert_nonnull(scores);
    char *label = test_json_string(out, "label");
    double *all = g_new(double, n + 2);
    for (int i = 0; i < n; i++) {
        all[i] = test_json_number(scores, r.text->pdata[i]);
        if (!(fabs(all[i] - ref_lp[i]) <= 1e-4 * fabs(ref_lp[i])))
            g_test_fail_printf("cli: '%s' scored %g, reference %g", (char *)r.text->pdata[i],
                               all[i], ref_lp[i]);
    }
    all[n] = test_json_number(scores, "say \\\"hi\\\"\\\\");
    all[n + 1] = test_json_number(scores, "a\\tb");
    g_assert_false(isnan(all[n]) || isnan(all[n + 1]));
    int best = argmax_double(all, n + 2);
    g_assert_cmpint(best, <, n); /* the extra two are no match for the reference's best */
    g_assert_cmpstr(label, ==, r.text->pdata[best]);
    double sum = 0;
    for (int i = 0; i < n + 2; i++)
        sum += exp(all[i] - all[best]);
    double confidence = test_json_number(out, "confidence");
    g_assert_cmpfloat_with_epsilon(confidence, 1 / sum, 1e-6);
    g_free(all);
    g_free(label);
    g_free(out);

    /* An empty item is refused with a message on stderr and nothing on stdout. */
    char *errout = NULL;
    out = run_cli("yes,,no", &ok, &errout);
    g_assert_false(ok);
    g_assert_cmpstr(out, ==, "");
    g_assert_nonnull(strstr(errout, "empty"));
    g_free(errout);
    g_free(out);
    g_string_free(list, TRUE);
    reference_free(&r);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/labels/top5-f32", test_top5_f32);
    g_test_add_func("/labels/top5-f16", test_top5_f16);
    g_test_add_func("/labels/top5-q8_0", test_top5_q8_0);
    g_test_add_func("/labels/reference-f32", test_reference_f32);
    g_test_add_func("/labels/reference-f16", test_reference_f16);
    g_test_add_func("/labels/reference-q8_0", test_reference_q8_0);
    g_test_add_func("/labels/independent", test_independent);
    g_test_add_func("/labels/errors", test_errors);
    g_test_add_func("/labels/cancel", test_cancel);
    g_test_add_func("/labels/cli", test_cli);
    return g_test_run();
}
