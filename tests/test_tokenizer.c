/* test_tokenizer.c - the BPE tokenizer against Hugging Face `tokenizers` (tests/data/tokenizer/
 * cases.jsonl and the tiny model's golden prompt), streaming decode, bad input and speed. */
#include <string.h>

#include "cobra.h"
#include "gguf.h"
#include "support.h"
#include "tokenizer.h"

/* ---- the cases: one flat JSON object a line ---- */

typedef struct {
    char *text, *decoded, *decoded_skip;
    GArray *ids;
} Case;

/* The int array of field "ids" in a line: [1, 2, ...]. */
static gboolean parse_ids(const char *line, GArray *ids)
{
    const char *p = strstr(line, "\"ids\":");
    if (!p || !(p = strchr(p, '[')))
        return FALSE;
    for (p++; *p != ']';) {
        char *end;
        gint64 v = g_ascii_strtoll(p, &end, 10);
        if (end == p)
            return FALSE;
        int32_t id = (int32_t)v;
        g_array_append_val(ids, id);
        for (p = end; *p == ',' || *p == ' '; p++)
            ;
    }
    return TRUE;
}

static gboolean parse_case(const char *line, Case *c)
{
    c->text = test_json_string(line, "text");
    c->decoded = test_json_string(line, "decoded");
    c->decoded_skip = test_json_string(line, "decoded_skip_special");
    c->ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    return c->text && c->decoded && c->decoded_skip && parse_ids(line, c->ids);
}

static void case_clear(Case *c)
{
    g_free(c->text);
    g_free(c->decoded);
    g_free(c->decoded_skip);
    g_array_unref(c->ids);
}

static GArray *load_cases(void)
{
    char *doc = test_read_text("tokenizer/cases.jsonl");
    GArray *cases = g_array_new(FALSE, TRUE, sizeof(Case));
    g_array_set_clear_func(cases, (GDestroyNotify)case_clear);
    char **lines = g_strsplit(doc, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        if (!*lines[i])
            continue;
        Case c = { 0 };
        if (!parse_case(lines[i], &c))
            g_error("cases.jsonl line %d: cannot parse", i + 1);
        g_array_append_val(cases, c);
    }
    g_assert_cmpuint(cases->len, >, 100);
    g_strfreev(lines);
    g_free(doc);
    return cases;
}

/* ---- fixtures ---- */

typedef struct {
    GgufFile *file;
    Tokenizer *tok;
} Fixture;

static void fixture_setup(Fixture *fx, gconstpointer data)
{
    char *path = test_model_path("f32");
    GError *err = NULL;
    fx->file = gguf_open(path, &err);
    g_assert_no_error(err);
    fx->tok = tokenizer_load(fx->file, &err);
    g_assert_no_error(err);
    g_free(path);
}

static void fixture_teardown(Fixture *fx, gconstpointer data)
{
    tokenizer_free(fx->tok);
    gguf_close(fx->file);
}

static GArray *encode(const Tokenizer *t, const char *text, gssize len)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *err = NULL;
    g_assert_true(tokenizer_encode(t, text, len, ids, &err));
    g_assert_no_error(err);
    return ids;
}

static char *format_ids(const GArray *ids)
{
    GString *s = g_string_new("[");
    for (guint i = 0; i < ids->len; i++)
        g_string_append_printf(s, i ? ", %d" : "%d", g_array_index(ids, int32_t, i));
    g_string_append_c(s, ']');
    return g_string_free(s, FALSE);
}

static gboolean ids_equal(const GArray *a, const GArray *b)
{
    /* an empty GArray's data may be NULL, which memcmp must not be given even for 0 bytes */
    return a->len == b->len &&
           (a->len == 0 || memcmp(a->data, b->data, a->len * sizeof(int32_t)) == 0);
}

static void assert_ids(const char *what, const GArray *got, const GArray *want)
{
    if (ids_equal(got, want))
        return;
    char *g = format_ids(got), *w = format_ids(want);
    g_test_fail_printf("%s: ids %s, expected %s", what, g, w);
    g_free(g);
    g_free(w);
}

static void assert_text(const char *what, const char *got, const char *want)
{
    if (strcmp(got, want) != 0)
        g_test_fail_printf("%s: decoded \"%s\", expected \"%s\"", what, got, want);
}

/* Every line of cases.jsonl: ids, decoded and decoded_skip_special, exactly. */
static void test_cases(Fixture *fx, gconstpointer data)
{
    GArray *cases = load_cases();
    for (guint i = 0; i < cases->len; i++) {
        const Case *c = &g_array_index(cases, Case, i);
        char *what = g_strdup_printf("case %u \"%s\"", i + 1, c->text);
        GArray *ids = encode(fx->tok, c->text, -1);
        assert_ids(what, ids, c->ids);
        const int32_t *ref = (const int32_t *)c->ids->data;
        char *decoded = tokenizer_decode(fx->tok, ref, c->ids->len, FALSE);
        char *skipped = tokenizer_decode(fx->tok, ref, c->ids->len, TRUE);
        assert_text(what, decoded, c->decoded);
        assert_text(what, skipped, c->decoded_skip);
        g_free(decoded);
        g_free(skipped);
        g_array_unref(ids);
        g_free(what);
    }
    g_array_unref(cases);
}

static char *stream_decode(const Tokenizer *t, const int32_t *ids, size_t n, gboolean skip)
{
    TokenStream s;
    GString *out = g_string_new(NULL);
    token_stream_init(&s);
    for (size_t i = 0; i < n; i++) {
        gsize before = out->len;
        token_stream_push(t, &s, ids[i], skip, out);
        g_assert_true(g_utf8_validate(out->str + before, out->len - before, NULL));
    }
    token_stream_finish(&s, out);
    token_stream_clear(&s);
    return g_string_free(out, FALSE);
}

/* Pushing each case's ids one at a time gives exactly the full decode, in whole characters. */
static void test_stream(Fixture *fx, gconstpointer data)
{
    GArray *cases = load_cases();
    int split_chars = 0;
    for (guint i = 0; i < cases->len; i++) {
        const Case *c = &g_array_index(cases, Case, i);
        for (int skip = 0; skip <= 1; skip++) {
            char *streamed = stream_decode(fx->tok, (const int32_t *)c->ids->data, c->ids->len,
                                           skip);
            char *what = g_strdup_printf("streamed case %u (skip_special %d)", i + 1, skip);
            assert_text(what, streamed, skip ? c->decoded_skip : c->decoded);
            g_free(what);
            g_free(streamed);
        }
        for (guint k = 0; k < c->ids->len; k++) { /* count tokens that end mid-character */
            char *piece = tokenizer_decode(fx->tok, &g_array_index(c->ids, int32_t, k), 1, FALSE);
            split_chars += strstr(piece, "\xEF\xBF\xBD") != NULL;
            g_free(piece);
        }
    }
    g_assert_cmpint(split_chars, >, 0); /* the cases do exercise held-back bytes */
    g_array_unref(cases);
}

static int32_t token_id(const Tokenizer *t, const char *text)
{
    for (int id = 0; id < tokenizer_n_tokens(t); id++)
        if (g_strcmp0(tokenizer_token_text(t, id), text) == 0)
            return id;
    g_error("no token \"%s\"", text);
}

/* Bytes that are not UTF-8 on their own become U+FFFD, one per maximal bad sequence, and
 * unknown ids decode to nothing. */
static void test_decode_lossy(Fixture *fx, gconstpointer data)
{
    /* the byte tokens of E2 and 82 (the start of "\u20ac"), then "b" */
    int32_t ids[] = { token_id(fx->tok, "\xC3\xA2"), token_id(fx->tok, "\xC4\xA4"), 67 };
    char *text = tokenizer_decode(fx->tok, ids, 3, FALSE);
    assert_text("E2 82 'b'", text, "\xEF\xBF\xBD" "b");
    char *streamed = stream_decode(fx->tok, ids, 3, FALSE);
    assert_text("streamed E2 82 'b'", streamed, "\xEF\xBF\xBD" "b");
    char *tail = stream_decode(fx->tok, ids, 2, FALSE);
    assert_text("streamed E2 82 at the end", tail, "\xEF\xBF\xBD");
    int32_t lead_only[] = { ids[1], ids[0], ids[2] }; /* 82 alone, then E2 before "b" */
    char *two = tokenizer_decode(fx->tok, lead_only, 3, FALSE);
    assert_text("82 E2 'b'", two, "\xEF\xBF\xBD\xEF\xBF\xBD" "b");
    int32_t out_of_range[] = { -1, tokenizer_n_tokens(fx->tok), 66 };
    char *ignored = tokenizer_decode(fx->tok, out_of_range, 3, FALSE);
    assert_text("ids out of range", ignored, "a");
    g_free(text);
    g_free(streamed);
    g_free(tail);
    g_free(two);
    g_free(ignored);
}

static void assert_rejected(const Tokenizer *t, const char *text, gssize len, const char *offset)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *err = NULL;
    g_assert_false(tokenizer_encode(t, text, len, ids, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    if (!strstr(err->message, offset))
        g_test_fail_printf("error \"%s\" does not name \"%s\"", err->message, offset);
    g_assert_cmpuint(ids->len, ==, 0);
    g_error_free(err);
    g_array_unref(ids);
}

static void test_invalid_utf8(Fixture *fx, gconstpointer data)
{
    assert_rejected(fx->tok, "abc\xFF", -1, "offset 3");
    assert_rejected(fx->tok, "ab\xE2\x82", -1, "offset 2");           /* truncated */
    assert_rejected(fx->tok, "\xC0\xAF", -1, "offset 0");             /* overlong */
    assert_rejected(fx->tok, "x\xED\xA0\x80y", -1, "offset 1");       /* surrogate */
    assert_rejected(fx->tok, "hello\0world", 11, "offset 5");         /* NUL inside len */
}

static char *nfc(const char *s)
{
    return g_utf8_normalize(s, -1, G_NORMALIZE_NFC);
}

/* ~200 KB of the case texts (NFC, joined by newlines so nothing composes across them) and a
 * 200 KB word without spaces: both encode fast and decode back to the text. */
static void test_long_input(Fixture *fx, gconstpointer data)
{
    GArray *cases = load_cases();
    GString *mixed = g_string_new(NULL);
    while (mixed->len < 200 * 1024)
        for (guint i = 0; i < cases->len; i++) {
            g_string_append(mixed, g_array_index(cases, Case, i).decoded);
            g_string_append_c(mixed, '\n');
        }
    GRand *rand = g_rand_new_with_seed(7);
    GString *word = g_string_new(NULL);
    while (word->len < 200 * 1024) /* letters, half of them composed (NFC work), no space */
        g_string_append_unichar(word, g_rand_boolean(rand) ? 'a' + g_rand_int_range(rand, 0, 26)
                                                           : 0xE0 + g_rand_int_range(rand, 0, 23));
    const GString *inputs[] = { mixed, word };
    for (int k = 0; k < 2; k++) {
        GTimer *timer = g_timer_new();
        GArray *ids = encode(fx->tok, inputs[k]->str, inputs[k]->len);
        double s = g_timer_elapsed(timer, NULL);
        g_test_message("%zu bytes -> %u ids in %.3f s", inputs[k]->len, ids->len, s);
        g_assert_cmpfloat(s, <, 1.0);
        g_assert_cmpuint(ids->len, >, inputs[k]->len / 20);
        char *text = tokenizer_decode(fx->tok, (const int32_t *)ids->data, ids->len, FALSE);
        char *want = nfc(inputs[k]->str);
        if (strcmp(text, want) != 0)
            g_test_fail_printf("long input %d does not round-trip", k);
        g_free(text);
        g_free(want);
        g_array_unref(ids);
        g_timer_destroy(timer);
    }
    g_string_free(mixed, TRUE);
    g_string_free(word, TRUE);
    g_rand_free(rand);
    g_array_unref(cases);
}

static GArray *npy_ids(const char *rel)
{
    Npy a;
    test_load_npy(rel, &a);
    g_assert_cmpstr(a.dtype, ==, "i4");
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    g_array_append_vals(ids, a.data, a.n_elems);
    npy_free(&a);
    return ids;
}

/* The golden run's prompt and text-only input encode to its ids; its greedy ids decode to its
 * generated text. */
static void test_golden(Fixture *fx, gconstpointer data)
{
    char *doc = test_read_text("tiny/golden/manifest.json");
    static const char *const pairs[][2] = {
        { "prompt", "tiny/golden/prompt_ids.npy" },
        { "text_only", "tiny/golden/text_ids.npy" },
    };
    for (guint k = 0; k < G_N_ELEMENTS(pairs); k++) {
        char *text = test_json_string(doc, pairs[k][0]);
        g_assert_nonnull(text);
        GArray *want = npy_ids(pairs[k][1]), *got = encode(fx->tok, text, -1);
        assert_ids(pairs[k][0], got, want);
        g_array_unref(want);
        g_array_unref(got);
        g_free(text);
    }
    char *generated = test_json_string(doc, "generated_text");
    g_assert_nonnull(generated);
    GArray *ids = npy_ids("tiny/golden/generated_ids.npy");
    char *text = tokenizer_decode(fx->tok, (const int32_t *)ids->data, ids->len, TRUE);
    assert_text("generated_ids", text, generated);
    g_free(text);
    g_free(generated);
    g_array_unref(ids);
    g_free(doc);
}

static void test_facts(Fixture *fx, gconstpointer data)
{
    g_assert_cmpint(tokenizer_eos(fx->tok), ==, 0);
    g_assert_cmpint(tokenizer_n_tokens(fx->tok), ==, 50281);
    g_assert_cmpstr(tokenizer_token_text(fx->tok, 0), ==, "<|endoftext|>");
    g_assert_cmpstr(tokenizer_token_text(fx->tok, 24387), ==, "\xC4\xA0Hello"); /* "ĠHello" */
    g_assert_null(tokenizer_token_text(fx->tok, -1));
    g_assert_null(tokenizer_token_text(fx->tok, 50281));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
#define ADD(name, func) g_test_add("/tokenizer/" name, Fixture, NULL, fixture_setup, func, \
                                   fixture_teardown)
    ADD("facts", test_facts);
    ADD("cases", test_cases);
    ADD("stream", test_stream);
    ADD("decode-lossy", test_decode_lossy);
    ADD("invalid-utf8", test_invalid_utf8);
    ADD("long-input", test_long_input);
    ADD("golden", test_golden);
#undef ADD
    return g_test_run();
}
