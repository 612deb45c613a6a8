/* fuzz_labels.c - arbitrary label lists through cobra_session_score_labels() on the tiny model:
 * the input's bytes split at NUL into labels (so every C string is reachable as a label, and
 * long inputs reach the count limit). The promise checked:
 *
 * - a list with an invalid-UTF-8 or blank label, or more than COBRA_MAX_LABELS labels, or a label
 *   of more than COBRA_MAX_LABEL_TOKENS tokens, is refused with an INVALID error that names it;
 *   any other list is scored, unless a label has a token without an embedding row;
 * - an accepted list gets a finite, non-positive log-probability per label;
 * - nothing else: no crash, no sanitizer report, no hang.
 *
 * The model file is $COBRA_FUZZ_MODEL, else the tiny model the build converts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cobra.h"
#include "fuzz.h"

#ifndef COBRA_FUZZ_DEFAULT_MODEL
#error "the build defines COBRA_FUZZ_DEFAULT_MODEL"
#endif

static void fail(const char *what, size_t size)
{
    fprintf(stderr, "fuzz-labels: %s (input of %zu bytes)\n", what, size);
    abort();
}

/* A session holding a small gradient frame, made on first use and kept for the process. */
static CobraSession *session(CobraModel **model)
{
    static CobraModel *m;
    static CobraSession *s;
    *model = m;
    if (s)
        return s;
    const char *path = g_getenv("COBRA_FUZZ_MODEL");
    if (!path)
        path = COBRA_FUZZ_DEFAULT_MODEL;
    GError *error = NULL;
    m = cobra_model_load(path, &error);
    s = m ? cobra_session_new(m, 1, &error) : NULL;
    enum { W = 24, H = 18 };
    static uint8_t rgb[H][W][3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            rgb[y][x][0] = (uint8_t)(x * 10), rgb[y][x][1] = (uint8_t)(y * 14), rgb[y][x][2] = 99;
    CobraImage img = {COBRA_FORMAT_RGB, W, H, {&rgb[0][0][0]}, {W * 3}, 0};
    if (!s || !cobra_session_set_image(s, &img, &error)) {
        fprintf(stderr, "fuzz-labels: cannot set up a session (set COBRA_FUZZ_MODEL): %s\n",
                error->message);
        abort();
    }
    *model = m;
    return s;
}

/* Whether the engine must refuse `label`, by the rules of include/cobra.h. */
static gboolean must_refuse(const CobraModel *m, const char *label)
{
    if (!g_utf8_validate(label, -1, NULL))
        return TRUE;
    const char *p = label;
    while (g_ascii_isspace(*p))
        p++;
    if (!*p)
        return TRUE;
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    gboolean refuse = !cobra_model_tokenize(m, label, ids, NULL) ||
                      ids->len > COBRA_MAX_LABEL_TOKENS;
    g_array_unref(ids);
    return refuse;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    CobraModel *m;
    CobraSession *s = session(&m);
    char *text = g_malloc(size + 1); /* NUL-terminated even when data is not */
    memcpy(text, data, size);
    text[size] = '\0';
    GPtrArray *labels = g_ptr_array_new();
    for (size_t i = 0; i <= size; i += strlen(text + i) + 1)
        g_ptr_array_add(labels, text + i);
    int n = (int)labels->len;
    gboolean refuse = n > COBRA_MAX_LABELS;
    for (int i = 0; i < n && !refuse; i++)
        refuse = must_refuse(m, labels->pdata[i]);

    float *lp = g_new(float, n);
    GError *error = NULL;
    gboolean ok = cobra_session_score_labels(s, "What is it?", (const char *const *)labels->pdata,
                                             n, lp, &error);
    if (ok && refuse)
        fail("a list that breaks a rule was scored", size);
    if (!ok && !(error && error->domain == COBRA_ERROR && error->code == COBRA_ERROR_INVALID &&
                 strstr(error->message, "label")))
        fail("refused without an INVALID error naming the label", size);
    /* The one rule the public API cannot check: a token past the embedding rows. */
    if (!ok && !refuse && !strstr(error->message, "no embedding"))
        fail("a valid list was refused", size);
    for (int i = 0; ok && i < n; i++)
        if (!(isfinite(lp[i]) && lp[i] <= 0))
            fail("a log-probability is not finite and <= 0", size);
    g_clear_error(&error);
    g_free(lp);
    g_ptr_array_unref(labels);
    g_free(text);
    return 0;
}
