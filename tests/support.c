#include "support.h"

#include <glib/gstdio.h>

#include <math.h>
#include <string.h>

static const char *env_dir(const char *var)
{
    const char *dir = g_getenv(var);
    if (!dir)
        g_error("%s is not set: run the tests through `meson test`", var);
    return dir;
}

char *test_data_path(const char *rel)
{
    return g_build_filename(env_dir("COBRA_TEST_DATA"), rel, NULL);
}

char *test_model_path(const char *outtype)
{
    char *name = g_strdup_printf("tiny-%s.gguf", outtype);
    char *path = g_build_filename(env_dir("COBRA_TEST_MODELS"), name, NULL);
    g_free(name);
    return path;
}

void test_load_npy(const char *rel, Npy *out)
{
    char *path = test_data_path(rel);
    GError *err = NULL;
    if (!npy_load(path, out, &err))
        g_error("%s", err->message);
    g_free(path);
}

double rel_error(const float *got, const float *ref, size_t n)
{
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= max_err)) /* also catches NaN */
            max_err = isnan(e) ? INFINITY : e;
        if (fabs(ref[i]) > max_ref)
            max_ref = fabs(ref[i]);
    }
    return max_ref > 0 ? max_err / max_ref : max_err;
}

void assert_rel_error(const char *what, const float *got, const float *ref, size_t n, double tol)
{
    double e = rel_error(got, ref, n);
    g_test_message("%s: relative error %.3g (bound %.3g)", what, e, tol);
    if (!(e <= tol))
        g_test_fail_printf("%s: relative error %.3g exceeds %.3g", what, e, tol);
}

char *test_read_text(const char *rel)
{
    char *path = test_data_path(rel), *text;
    GError *err = NULL;
    if (!g_file_get_contents(path, &text, NULL, &err))
        g_error("%s", err->message);
    g_free(path);
    return text;
}

/* Points just past `"key":` and any white space, or NULL. */
static const char *json_field(const char *json, const char *key)
{
    char *pat = g_strdup_printf("\"%s\"", key);
    const char *p = strstr(json, pat);
    if (p) {
        p += strlen(pat);
        while (g_ascii_isspace(*p))
            p++;
        p = *p == ':' ? p + 1 : NULL;
        while (p && g_ascii_isspace(*p))
            p++;
    }
    g_free(pat);
    return p;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int d = g_ascii_xdigit_value(p[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

char *test_json_string(const char *json, const char *key)
{
    const char *p = json_field(json, key);
    if (!p || *p != '"')
        return NULL;
    GString *s = g_string_new(NULL);
    for (p++; *p && *p != '"'; p++) {
        if (*p != '\\') {
            g_string_append_c(s, *p);
            continue;
        }
        p++;
        switch (*p) {
        case 'n': g_string_append_c(s, '\n'); break;
        case 't': g_string_append_c(s, '\t'); break;
        case 'r': g_string_append_c(s, '\r'); break;
        case 'b': g_string_append_c(s, '\b'); break;
        case 'f': g_string_append_c(s, '\f'); break;
        case 'u': {
            int c = hex4(p + 1);
            p += 4;
            if (c >= 0xd800 && c < 0xdc00 && p[1] == '\\' && p[2] == 'u') {
                int lo = hex4(p + 3);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            g_string_append_unichar(s, (gunichar)c);
            break;
        }
        default: g_string_append_c(s, *p); break; /* \" \\ \/ */
        }
        if (!*p)
            break;
    }
    return g_string_free(s, FALSE);
}

double test_json_number(const char *json, const char *key)
{
    const char *p = json_field(json, key);
    char *end;
    double v = p ? g_ascii_strtod(p, &end) : 0;
    return p && end != p ? v : NAN;
}

CobraModel *test_load_model(const char *outtype)
{
    char *path = test_model_path(outtype);
    GError *err = NULL;
    CobraModel *m = cobra_model_load(path, &err);
    g_assert_no_error(err);
    g_free(path);
    return m;
}

CobraImage test_golden_image(Npy *a)
{
    test_load_npy("tiny/golden/image_rgb.npy", a);
    return (CobraImage){COBRA_FORMAT_RGB, (int)a->shape[1], (int)a->shape[0],
                        {a->data}, {(int)a->shape[1] * 3}, 0};
}

char *test_golden_question(void)
{
    char *manifest = test_read_text("tiny/golden/manifest.json");
    char *q = test_json_string(manifest, "question");
    g_free(manifest);
    return q;
}

void test_remove_temp_file(char *path)
{
    char *dir = g_path_get_dirname(path);
    g_unlink(path);
    g_rmdir(dir);
    g_free(dir);
    g_free(path);
}
