#include "support.h"

#include <math.h>

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
