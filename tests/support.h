/* support.h - what every test needs: fixture paths, .npy fixtures, relative-error checks. */
#ifndef COBRA_TEST_SUPPORT_H
#define COBRA_TEST_SUPPORT_H

#include <glib.h>

#include "cobra.h"
#include "npy.h"

/* $COBRA_TEST_DATA/rel (tests/data, the reference fixtures); g_free the result. */
char *test_data_path(const char *rel);
/* $COBRA_TEST_MODELS/tiny-<outtype>.gguf, converted from tests/data/tiny at build time. */
char *test_model_path(const char *outtype);
/* The tiny model of `outtype`, loaded; fails the test if it cannot be. */
CobraModel *test_load_model(const char *outtype);
/* The golden input image as a packed RGB frame; keep `a` alive while the image is used. */
CobraImage test_golden_image(Npy *a);
/* The golden run's question (tiny/golden/manifest.json); g_free the result. */
char *test_golden_question(void);
/* Deletes a file made in a temporary directory of its own, and the directory; frees `path`. */
void test_remove_temp_file(char *path);
/* Load tests/data/<rel> (e.g. "tiny/golden/projected.npy"), failing the test if it is missing. */
void test_load_npy(const char *rel, Npy *out);
/* max |got - ref| / max |ref| */
double rel_error(const float *got, const float *ref, size_t n);
/* Fail the test, naming `what` and both errors, when rel_error(got, ref) > tol. */
void assert_rel_error(const char *what, const float *got, const float *ref, size_t n, double tol);

/* The value of the first string field `key` in a JSON text (\u escapes and surrogate pairs
 * decoded), or NULL; g_free the result. Enough for the fixtures' flat manifest and cases. */
char *test_json_string(const char *json, const char *key);
/* The number of the first field `key`, or NAN. */
double test_json_number(const char *json, const char *key);
/* tests/data/<rel> as text; fails the test if unreadable. g_free the result. */
char *test_read_text(const char *rel);

#endif
