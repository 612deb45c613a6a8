/* test_gguf.c - the GGUF loader: a valid file written here round-trips through every getter, and
 * each kind of damage is refused with its own error naming the file, without a crash or leak. */
#include <glib.h>
#include <glib/gstdio.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cobra.h"
#include "gguf.h"
#include "support.h"

static char *tmp_dir;
static volatile unsigned sink; /* keeps the reads of opened damaged files */

/* ---- a tiny GGUF writer that remembers where each field went, so tests can damage it ---- */

typedef struct {
    GByteArray *buf;
    GHashTable *marks; /* field name -> offset in buf */
} Writer;

static void put(Writer *w, const void *p, size_t n)
{
    g_byte_array_append(w->buf, p, n);
}

static void put_u32(Writer *w, uint32_t x)
{
    put(w, &x, 4);
}

static void put_u64(Writer *w, uint64_t x)
{
    put(w, &x, 8);
}

static void put_str(Writer *w, const char *s)
{
    put_u64(w, strlen(s));
    put(w, s, strlen(s));
}

static void mark(Writer *w, const char *what, const char *name)
{
    g_hash_table_insert(w->marks, g_strconcat(what, name, NULL), GSIZE_TO_POINTER(w->buf->len));
}

static size_t mark_at(GHashTable *marks, const char *field)
{
    gpointer off;
    if (!g_hash_table_lookup_extended(marks, field, NULL, &off))
        g_error("test writer has no field '%s'", field);
    return GPOINTER_TO_SIZE(off);
}

/* Marks "kv:K" (key length), "type:K" (value type) and "val:K" (the value). */
static void put_key(Writer *w, const char *key, GgufValueType type)
{
    mark(w, "kv:", key);
    put_str(w, key);
    mark(w, "type:", key);
    put_u32(w, type);
    mark(w, "val:", key);
}

static void put_scalar(Writer *w, const char *key, GgufValueType type, const void *v, size_t n)
{
    put_key(w, key, type);
    put(w, v, n);
}

static void put_array(Writer *w, const char *key, GgufValueType type, const void *v, size_t n,
                      size_t elem_size)
{
    put_key(w, key, GGUF_TYPE_ARRAY);
    put_u32(w, type);
    put_u64(w, n);
    put(w, v, n * elem_size);
}

/* The test tensors: data is what the file holds; offsets are filled in when written. */
typedef struct {
    const char *name;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    GgmlType type;
    const void *data;
    size_t nbytes;
} TestTensor;

static const float f32_data[6] = { 0, 1, 2, 3, 4.5f, -5 };
static const uint16_t f16_data[4] = { 0x3c00, 0xc000, 0x3800, 0x0000 }; /* 1, -2, 0.5, 0 */
static uint8_t q8_data[4 * 34];
static const float v_data[6] = { 10, 11, 12, 13, 14, 15 };
static const float col_data[4] = { -1, -2, -3, -4 };

static const TestTensor test_tensors[] = {
    { "w.f32", 2, { 3, 2, 1, 1 }, GGML_TYPE_F32, f32_data, sizeof f32_data },
    { "w.f16", 1, { 4, 1, 1, 1 }, GGML_TYPE_F16, f16_data, sizeof f16_data },
    { "w.q8", 2, { 64, 2, 1, 1 }, GGML_TYPE_Q8_0, q8_data, sizeof q8_data },
    { "v.f32", 3, { 2, 1, 3, 1 }, GGML_TYPE_F32, v_data, sizeof v_data },
    { "v.col", 2, { 4, 1, 1, 1 }, GGML_TYPE_F32, col_data, sizeof col_data },
};
#define N_TEST_TENSORS ((int)G_N_ELEMENTS(test_tensors))
#define N_TEST_KEYS 20

static const float f32s[3] = { 0.5f, -1, 3 };
static const int32_t i32s[4] = { 1, -2, 3, INT32_MAX };
static const char *const strs[3] = { "a", "", "\xc4\xa0xyz" };
static const uint8_t u8s[3] = { 1, 2, 3 };

static void put_metadata(Writer *w, uint32_t alignment)
{
    const uint8_t u8 = 200, b = 1;
    const int8_t i8 = -5;
    const uint16_t u16 = 60000;
    const int16_t i16 = -30000;
    const uint32_t u32 = 4000000000u;
    const int32_t i32 = -2000000000, pos = 7;
    const float f32 = 1.5f;
    const uint64_t u64 = (uint64_t)1 << 40;
    const int64_t i64 = -((int64_t)1 << 40);
    const double f64 = 2.25;

    put_key(w, "general.architecture", GGUF_TYPE_STRING);
    put_str(w, "test");
    if (alignment)
        put_scalar(w, "general.alignment", GGUF_TYPE_UINT32, &alignment, 4);
    put_scalar(w, "test.u8", GGUF_TYPE_UINT8, &u8, 1);
    put_scalar(w, "test.i8", GGUF_TYPE_INT8, &i8, 1);
    put_scalar(w, "test.u16", GGUF_TYPE_UINT16, &u16, 2);
    put_scalar(w, "test.i16", GGUF_TYPE_INT16, &i16, 2);
    put_scalar(w, "test.u32", GGUF_TYPE_UINT32, &u32, 4);
    put_scalar(w, "test.i32", GGUF_TYPE_INT32, &i32, 4);
    put_scalar(w, "test.pos", GGUF_TYPE_INT32, &pos, 4);
    put_scalar(w, "test.f32", GGUF_TYPE_FLOAT32, &f32, 4);
    put_scalar(w, "test.bool", GGUF_TYPE_BOOL, &b, 1);
    put_scalar(w, "test.u64", GGUF_TYPE_UINT64, &u64, 8);
    put_scalar(w, "test.i64", GGUF_TYPE_INT64, &i64, 8);
    put_scalar(w, "test.f64", GGUF_TYPE_FLOAT64, &f64, 8);
    put_key(w, "test.str", GGUF_TYPE_STRING);
    put_str(w, "h\xc3\xa9llo");
    put_key(w, "test.empty", GGUF_TYPE_STRING);
    put_str(w, "");
    put_array(w, "test.f32s", GGUF_TYPE_FLOAT32, f32s, 3, 4);
    put_array(w, "test.i32s", GGUF_TYPE_INT32, i32s, 4, 4);
    put_array(w, "test.noi32s", GGUF_TYPE_INT32, NULL, 0, 4);
    put_array(w, "test.u8s", GGUF_TYPE_UINT8, u8s, 3, 1);
    put_key(w, "test.strs", GGUF_TYPE_ARRAY);
    put_u32(w, GGUF_TYPE_STRING);
    put_u64(w, G_N_ELEMENTS(strs));
    for (size_t i = 0; i < G_N_ELEMENTS(strs); i++) {
        mark(w, i == 2 ? "str2:" : "str:", "test.strs");
        put_str(w, strs[i]);
    }
}

static size_t align_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

/* A valid file; alignment 0 leaves general.alignment out (the default, 32, applies). No padding
 * follows the last tensor, so cutting any byte off makes the file invalid. */
static GByteArray *build_file(uint32_t alignment, GHashTable **marks)
{
    size_t align = alignment ? alignment : 32;
    Writer w = { g_byte_array_new(),
                 g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL) };
    for (size_t i = 0; i < sizeof q8_data; i++)
        q8_data[i] = (uint8_t)(i * 7 + 3);
    mark(&w, "magic", "");
    put(&w, "GGUF", 4);
    mark(&w, "version", "");
    put_u32(&w, 3);
    mark(&w, "n_tensors", "");
    put_u64(&w, N_TEST_TENSORS);
    mark(&w, "n_kv", "");
    put_u64(&w, alignment ? N_TEST_KEYS + 1 : N_TEST_KEYS);
    put_metadata(&w, alignment);
    size_t offsets[N_TEST_TENSORS], off = 0;
    for (int i = 0; i < N_TEST_TENSORS; i++) {
        const TestTensor *t = &test_tensors[i];
        offsets[i] = off;
        off = align_up(off + t->nbytes, align);
        mark(&w, "ti:", t->name);
        put_str(&w, t->name);
        mark(&w, "dims:", t->name);
        put_u32(&w, t->n_dims);
        mark(&w, "ne:", t->name);
        for (int d = 0; d < t->n_dims; d++)
            put_u64(&w, t->ne[d]);
        mark(&w, "ttype:", t->name);
        put_u32(&w, t->type);
        mark(&w, "off:", t->name);
        put_u64(&w, offsets[i]);
    }
    size_t data_start = align_up(w.buf->len, align);
    for (int i = 0; i < N_TEST_TENSORS; i++) {
        g_byte_array_set_size(w.buf, data_start + offsets[i]);
        put(&w, test_tensors[i].data, test_tensors[i].nbytes);
    }
    *marks = w.marks;
    return w.buf;
}

/* Plain stdio: g_file_set_contents() syncs each of the thousands of damaged files written here,
 * and with G_FILE_SET_CONTENTS_NONE GLib 2.74 does not truncate a longer old file. */
static void store(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, n, fp) != n || fclose(fp) != 0)
        g_error("cannot write %s", path);
}

static char *write_file(const char *name, const void *data, size_t n)
{
    char *path = g_build_filename(tmp_dir, name, NULL);
    store(path, data, n);
    return path;
}

/* Open `path` expecting failure with `code`, a message naming the file and containing `expect`;
 * read into memory and mapped, the same message (one validation over the bytes either way). */
static void expect_error(const char *path, int code, const char *expect)
{
    GError *err = NULL, *mapped_err = NULL;
    GgufFile *f = gguf_open(path, &err), *mapped = gguf_open_mapped(path, &mapped_err);
    if (f || mapped) {
        g_test_fail_printf("%s: opened (%s), expected an error containing '%s'", path,
                           f ? "read" : "mapped", expect);
        gguf_close(f);
        gguf_close(mapped);
        g_clear_error(&err);
        g_clear_error(&mapped_err);
        return;
    }
    g_assert_nonnull(err);
    g_test_message("%s", err->message);
    g_assert_error(err, COBRA_ERROR, code);
    g_assert_cmpstr(mapped_err->message, ==, err->message);
    if (!strstr(err->message, path))
        g_test_fail_printf("error does not name the file %s: %s", path, err->message);
    if (expect && !strstr(err->message, expect))
        g_test_fail_printf("error '%s' does not contain '%s'", err->message, expect);
    g_error_free(err);
    g_error_free(mapped_err);
}

static GgufFile *open_ok(const char *path)
{
    GError *err = NULL;
    GgufFile *f = gguf_open(path, &err);
    g_assert_no_error(err);
    g_assert_nonnull(f);
    return f;
}

/* ---- the valid file ---- */

static void check_metadata(GgufFile *f)
{
    GError *err = NULL;
    uint64_t u;
    double d;
    gboolean b;
    size_t n;

    g_assert_true(gguf_has_key(f, "test.u8"));
    g_assert_false(gguf_has_key(f, "test.nope"));
    g_assert_cmpstr(gguf_get_string(f, "general.architecture", &err), ==, "test");
    g_assert_cmpstr(gguf_get_string(f, "test.str", &err), ==, "h\xc3\xa9llo");
    g_assert_cmpstr(gguf_get_string(f, "test.empty", &err), ==, "");
    g_assert_no_error(err);

    static const struct { const char *key; uint64_t value; } uints[] = {
        { "test.u8", 200 }, { "test.u16", 60000 }, { "test.u32", 4000000000u },
        { "test.pos", 7 }, { "test.u64", (uint64_t)1 << 40 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(uints); i++) {
        g_assert_true(gguf_get_uint(f, uints[i].key, UINT64_MAX, &u, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(u, ==, uints[i].value);
        g_assert_true(gguf_get_uint(f, uints[i].key, uints[i].value, &u, &err));
    }
    g_assert_true(gguf_get_float(f, "test.f32", &d, &err));
    g_assert_cmpfloat(d, ==, 1.5);
    g_assert_true(gguf_get_float(f, "test.f64", &d, &err));
    g_assert_cmpfloat(d, ==, 2.25);
    b = FALSE;
    g_assert_true(gguf_get_bool(f, "test.bool", &b, &err));
    g_assert_true(b);
    g_assert_no_error(err);

    float fv[3];
    g_assert_true(gguf_get_f32_array(f, "test.f32s", fv, 3, &err));
    g_assert_no_error(err);
    g_assert_cmpmem(fv, sizeof fv, f32s, sizeof f32s);
    const int32_t *iv = gguf_get_i32_array(f, "test.i32s", &n, &err);
    g_assert_no_error(err);
    g_assert_cmpmem(iv, n * 4, i32s, sizeof i32s);
    g_assert_cmpuint((uintptr_t)iv % 4, ==, 0);
    iv = gguf_get_i32_array(f, "test.noi32s", &n, &err);
    g_assert_no_error(err);
    g_assert_nonnull(iv);
    g_assert_cmpuint(n, ==, 0);
    const char *const *sv = gguf_get_string_array(f, "test.strs", &n, &err);
    g_assert_no_error(err);
    g_assert_cmpuint(n, ==, G_N_ELEMENTS(strs));
    for (size_t i = 0; i < n; i++)
        g_assert_cmpstr(sv[i], ==, strs[i]);
}

/* Each getter refuses a missing key, a key of another type and an out-of-range value. */
static void check_getter_errors(GgufFile *f)
{
    static const struct { const char *key; uint64_t max; const char *expect; } bad_uints[] = {
        { "test.nope", 10, "key 'test.nope' is missing" },
        { "test.str", 10, "key 'test.str' has type string, expected an integer" },
        { "test.f32", 10, "key 'test.f32' has type float32, expected an integer" },
        { "test.bool", 10, "key 'test.bool' has type bool, expected an integer" },
        { "test.i8", 10, "key 'test.i8' has value -5, expected 0..10" },
        { "test.i64", UINT64_MAX, "key 'test.i64' has value -1099511627776, expected 0.." },
        { "test.u32", 100, "key 'test.u32' has value 4000000000, expected 0..100" },
        { "test.u64", ((uint64_t)1 << 40) - 1,
          "key 'test.u64' has value 1099511627776, expected 0..1099511627775" },
    };
    GError *err = NULL;
    uint64_t u = 12345;
    double d;
    gboolean b;
    size_t n;
    float fv[4];
    for (size_t i = 0; i < G_N_ELEMENTS(bad_uints); i++) {
        g_assert_false(gguf_get_uint(f, bad_uints[i].key, bad_uints[i].max, &u, &err));
        g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
        g_assert_nonnull(strstr(err->message, gguf_path(f)));
        if (!strstr(err->message, bad_uints[i].expect))
            g_test_fail_printf("'%s' does not contain '%s'", err->message, bad_uints[i].expect);
        g_clear_error(&err);
    }
    g_assert_cmpuint(u, ==, 12345);

#define EXPECT_FAIL(call, expect)                                                      \
    do {                                                                               \
        g_assert_false((call) != 0);                                                   \
        g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);                          \
        g_assert_nonnull(strstr(err->message, gguf_path(f)));                          \
        if (!strstr(err->message, expect))                                             \
            g_test_fail_printf("'%s' does not contain '%s'", err->message, expect);    \
        g_clear_error(&err);                                                           \
    } while (0)
    EXPECT_FAIL(gguf_get_float(f, "test.u8", &d, &err), "key 'test.u8' has type uint8");
    EXPECT_FAIL(gguf_get_float(f, "test.nope", &d, &err), "key 'test.nope' is missing");
    EXPECT_FAIL(gguf_get_bool(f, "test.u8", &b, &err), "key 'test.u8' has type uint8, expected bool");
    EXPECT_FAIL(gguf_get_string(f, "test.strs", &err),
                "key 'test.strs' has type array of string, expected string");
    EXPECT_FAIL(gguf_get_f32_array(f, "test.f32s", fv, 4, &err),
                "key 'test.f32s' has 3 elements, expected 4");
    EXPECT_FAIL(gguf_get_f32_array(f, "test.i32s", fv, 4, &err),
                "key 'test.i32s' has type array of int32, expected array of float32");
    EXPECT_FAIL(gguf_get_i32_array(f, "test.f32s", &n, &err),
                "key 'test.f32s' has type array of float32, expected array of int32");
    EXPECT_FAIL(gguf_get_i32_array(f, "test.u8s", &n, &err),
                "key 'test.u8s' has type array of uint8, expected array of int32");
    EXPECT_FAIL(gguf_get_string_array(f, "test.i32", &n, &err),
                "key 'test.i32' has type int32, expected array of string");
    EXPECT_FAIL(gguf_get_string_array(f, "test.nope", &n, &err), "key 'test.nope' is missing");
#undef EXPECT_FAIL
}

static void check_tensors(GgufFile *f, size_t alignment)
{
    g_assert_cmpint(gguf_n_tensors(f), ==, N_TEST_TENSORS);
    for (int i = 0; i < N_TEST_TENSORS; i++) {
        const TestTensor *want = &test_tensors[i];
        const GgufTensor *t = gguf_tensor_at(f, i);
        g_assert_nonnull(t);
        g_assert_true(gguf_find_tensor(f, want->name) == t);
        g_assert_cmpstr(t->name, ==, want->name);
        g_assert_cmpint(t->n_dims, ==, want->n_dims);
        g_assert_cmpmem(t->ne, sizeof t->ne, want->ne, sizeof want->ne);
        g_assert_cmpint(t->type, ==, want->type);
        g_assert_cmpuint(t->nbytes, ==, want->nbytes);
        g_assert_cmpuint((uintptr_t)t->data % alignment, ==, 0);
        g_assert_cmpmem(t->data, t->nbytes, want->data, want->nbytes);
    }
    g_assert_null(gguf_find_tensor(f, "nope"));
}

static void check_require_tensor(GgufFile *f)
{
    GError *err = NULL;
    const int64_t ne_f32[] = { 3, 2 }, ne_q8[] = { 64, 2 }, ne_v[] = { 2, 1, 3 }, ne_col[] = { 4 };
    const int64_t ne_col2[] = { 4, 1, 1, 1 }, ne_f16[] = { 4 };
    g_assert_true(gguf_require_tensor(f, "w.f32", 2, ne_f32, GGUF_TYPES_F32, &err) ==
                  gguf_find_tensor(f, "w.f32"));
    g_assert_nonnull(gguf_require_tensor(f, "w.q8", 2, ne_q8, GGUF_TYPES_MATRIX, &err));
    g_assert_nonnull(gguf_require_tensor(f, "w.f16", 1, ne_f16, GGUF_TYPES_MATRIX, &err));
    g_assert_nonnull(gguf_require_tensor(f, "v.f32", 3, ne_v, GGUF_TYPES_F32, &err));
    /* trailing dims of 1 are ignored on both sides */
    g_assert_nonnull(gguf_require_tensor(f, "v.col", 1, ne_col, GGUF_TYPES_F32, &err));
    g_assert_nonnull(gguf_require_tensor(f, "v.col", 4, ne_col2, GGUF_TYPES_F32, &err));
    g_assert_no_error(err);

    static const struct {
        const char *name;
        int n_dims;
        int64_t ne[4];
        unsigned types;
        const char *expect;
    } bad[] = {
        { "nope", 1, { 4 }, GGUF_TYPES_F32, "tensor 'nope' is missing" },
        { "w.f32", 2, { 2, 3 }, GGUF_TYPES_F32, "tensor 'w.f32' has shape [3, 2], expected [2, 3]" },
        { "w.f32", 1, { 3 }, GGUF_TYPES_F32, "tensor 'w.f32' has shape [3, 2], expected [3]" },
        { "v.f32", 2, { 2, 3 }, GGUF_TYPES_F32,
          "tensor 'v.f32' has shape [2, 1, 3], expected [2, 3]" },
        { "w.f16", 1, { 4 }, GGUF_TYPES_F32, "tensor 'w.f16' has type F16, expected F32" },
        { "w.q8", 2, { 64, 2 }, (1u << GGML_TYPE_F32) | (1u << GGML_TYPE_F16),
          "tensor 'w.q8' has type Q8_0, expected F32 or F16" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_null(gguf_require_tensor(f, bad[i].name, bad[i].n_dims, bad[i].ne, bad[i].types,
                                          &err));
        g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
        char *want = g_strdup_printf("%s: %s", gguf_path(f), bad[i].expect);
        if (strcmp(err->message, want) != 0)
            g_test_fail_printf("got '%s', expected '%s'", err->message, want);
        g_free(want);
        g_clear_error(&err);
    }
}

static void test_valid_file(void)
{
    static const uint32_t alignments[] = { 32, 0, 64, 4096 };
    for (size_t i = 0; i < G_N_ELEMENTS(alignments); i++) {
        GHashTable *marks;
        GByteArray *buf = build_file(alignments[i], &marks);
        char *name = g_strdup_printf("valid-%u.gguf", alignments[i]);
        char *path = write_file(name, buf->data, buf->len);
        GgufFile *f = open_ok(path);
        g_assert_cmpstr(gguf_path(f), ==, path);
        check_metadata(f);
        check_getter_errors(f);
        check_tensors(f, alignments[i] ? alignments[i] : 32);
        check_require_tensor(f);
        gguf_close(f);
        GError *err = NULL;
        f = gguf_open_mapped(path, &err);
        g_assert_no_error(err);
        check_metadata(f);
        check_tensors(f, alignments[i] ? alignments[i] : 32);
        gguf_close(f);
        g_unlink(path);
        g_free(path);
        g_free(name);
        g_hash_table_destroy(marks);
        g_byte_array_unref(buf);
    }
}

/* Two loads of one file both work and see the same bytes. */
static void test_open_twice(void)
{
    GHashTable *marks;
    GByteArray *buf = build_file(32, &marks);
    char *path = write_file("twice.gguf", buf->data, buf->len);
    GgufFile *a = open_ok(path), *b = open_ok(path);
    check_tensors(a, 32);
    check_tensors(b, 32);
    gguf_close(a);
    check_metadata(b);
    check_tensors(b, 32);
    gguf_close(b);
    g_unlink(path);
    g_free(path);
    g_hash_table_destroy(marks);
    g_byte_array_unref(buf);
}

/* A header with no metadata and no tensors is a valid, empty file. */
static void test_header_only(void)
{
    Writer w = { g_byte_array_new(), g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL) };
    put(&w, "GGUF", 4);
    put_u32(&w, 3);
    put_u64(&w, 0);
    put_u64(&w, 0);
    char *path = write_file("header-only.gguf", w.buf->data, w.buf->len);
    GgufFile *f = open_ok(path);
    g_assert_cmpint(gguf_n_tensors(f), ==, 0);
    g_assert_false(gguf_has_key(f, "general.alignment"));
    gguf_close(f);
    g_unlink(path);
    g_free(path);
    g_hash_table_destroy(w.marks);
    g_byte_array_unref(w.buf);
}

static void test_io_errors(void)
{
    gguf_close(NULL);
    char *missing = g_build_filename(tmp_dir, "missing.gguf", NULL);
    expect_error(missing, COBRA_ERROR_IO, "cannot open");
    expect_error(tmp_dir, COBRA_ERROR_IO, "not a regular file (a directory)");
    expect_error("/dev/null", COBRA_ERROR_IO, "not a regular file (a device)");
    char *empty = write_file("empty.gguf", "", 0);
    expect_error(empty, COBRA_ERROR_FORMAT, "file is empty");
    /* sysfs files claim 4096 bytes and hold fewer: a read that ends early is an error, as it is
     * when a file is truncated while being read. */
    const char *short_file = "/sys/devices/system/cpu/online";
    if (g_file_test(short_file, G_FILE_TEST_IS_REGULAR)) {
        GError *err = NULL;
        g_assert_null(gguf_open(short_file, &err));
        g_assert_error(err, COBRA_ERROR, COBRA_ERROR_IO);
        g_test_message("%s", err->message);
        g_assert_nonnull(strstr(err->message, short_file));
        g_assert_nonnull(strstr(err->message, "shrank while it was being read"));
        g_clear_error(&err);
    } else {
        g_test_message("no %s: the short read is not checked", short_file);
    }
    g_unlink(empty);
    g_free(empty);
    g_free(missing);
}

/* ---- damaged files ---- */

typedef struct {
    const char *name;
    const char *field; /* a writer mark */
    size_t delta;      /* bytes past the mark */
    int width;         /* bytes to overwrite: 1, 4 or 8 */
    uint64_t value;
    const char *expect;
} Damage;

static const Damage damages[] = {
    { "bad-magic", "magic", 0, 4, 0x58554747, "bad magic" },
    { "bad-version", "version", 0, 4, 4, "unsupported GGUF version 4" },
    { "version-1", "version", 0, 4, 1, "unsupported GGUF version 1" },
    { "huge-tensor-count", "n_tensors", 0, 8, (uint64_t)1 << 40, "tensor count 1099511627776" },
    { "huge-kv-count", "n_kv", 0, 8, UINT64_MAX, "metadata count 18446744073709551615" },
    { "huge-key-length", "kv:test.u8", 0, 8, UINT64_MAX,
      "key length 18446744073709551615 at offset" },
    { "huge-string", "val:test.str", 0, 8, (uint64_t)1 << 60,
      "key 'test.str': string value length 1152921504606846976" },
    { "huge-array", "val:test.i32s", 4, 8, (uint64_t)1 << 61,
      "key 'test.i32s': array length 2305843009213693952 of int32" },
    { "huge-string-array", "val:test.strs", 4, 8, (uint64_t)1 << 62,
      "key 'test.strs': array length 4611686018427387904 of string at offset" },
    { "huge-array-string", "str2:test.strs", 0, 8, UINT64_MAX - 1,
      "array string length 18446744073709551614" },
    { "nested-array", "val:test.i32s", 0, 4, GGUF_TYPE_ARRAY, "nested arrays are not supported" },
    { "unknown-array-type", "val:test.i32s", 0, 4, 13, "unknown array element type 13" },
    { "unknown-value-type", "type:test.u8", 0, 4, 13, "key 'test.u8': unknown value type 13" },
    { "empty-key", "kv:test.u8", 0, 8, 0, "empty key" },
    { "nul-in-key", "kv:test.str", 10, 1, 0, "key at offset" },
    { "nul-in-string", "val:test.str", 9, 1, 0, "string value at offset" },
    { "nul-in-array-string", "str2:test.strs", 9, 1, 0, "array string at offset" },
    { "nul-in-tensor-name", "ti:w.q8", 9, 1, 0, "tensor name at offset" },
    { "duplicate-key", "kv:test.i8", 13, 1, 'u', "key 'test.u8': duplicate key" },
    { "duplicate-tensor", "ti:v.f32", 8, 1, 'w', "tensor 'w.f32': duplicate tensor name" },
    { "n-dims-0", "dims:w.f32", 0, 4, 0, "tensor 'w.f32': n_dims 0 is outside 1..4" },
    { "n-dims-5", "dims:w.f32", 0, 4, 5, "tensor 'w.f32': n_dims 5 is outside 1..4" },
    { "ne-0", "ne:w.f32", 0, 8, 0, "tensor 'w.f32': ne[0] = 0 is outside" },
    { "ne1-0", "ne:w.f32", 8, 8, 0, "tensor 'w.f32': ne[1] = 0 is outside" },
    { "ne-negative", "ne:w.f32", 0, 8, (uint64_t)1 << 63, "ne[0] = 9223372036854775808 is outside" },
    { "ne-overflow", "ne:v.f32", 0, 8, (uint64_t)1 << 62, "tensor 'v.f32': element count overflows" },
    { "bytes-overflow", "ne:v.col", 0, 8, (uint64_t)1 << 62, "tensor 'v.col': byte size overflows" },
    { "unknown-tensor-type", "ttype:w.f16", 0, 4, 3, "tensor 'w.f16': unsupported tensor type 3" },
    { "q8-partial-block", "ne:w.q8", 0, 8, 48,
      "tensor 'w.q8': ne[0] = 48 is not a multiple of the Q8_0 block size 32" },
    { "offset-past-end", "off:v.col", 0, 8, (uint64_t)1 << 20,
      "tensor 'v.col': data (offset 1048576, 16 bytes) runs past the end of the file" },
    { "offset-huge", "off:v.col", 0, 8, UINT64_MAX - 31, "runs past the end of the file" },
    { "size-past-end", "ne:v.col", 8, 8, 3, "tensor 'v.col': data (offset 256, 48 bytes) runs past" },
    { "misaligned-offset", "off:w.f16", 0, 8, 36,
      "tensor 'w.f16': data offset 36 is not a multiple of the alignment 32" },
    { "overlap", "off:w.f16", 0, 8, 0, "tensors 'w.f32' (offset 0, 24 bytes) and 'w.f16'" },
    { "overlap-partial", "ne:w.f16", 0, 8, 20, "tensors 'w.f16' (offset 32, 40 bytes) and 'w.q8' (offset 64) overlap" },
    { "alignment-not-power-of-2", "val:general.alignment", 0, 4, 24,
      "key 'general.alignment': alignment 24 is not a power of two" },
    { "alignment-0", "val:general.alignment", 0, 4, 0, "alignment 0 is not a power of two" },
    { "alignment-too-large", "val:general.alignment", 0, 4, 8192, "alignment 8192 is outside 4..4096" },
    { "alignment-too-small", "val:general.alignment", 0, 4, 2, "alignment 2 is outside 4..4096" },
    { "alignment-type", "type:general.alignment", 0, 4, GGUF_TYPE_INT32,
      "key 'general.alignment': has type int32, expected uint32" },
};

static void test_damaged(void)
{
    GHashTable *marks;
    GByteArray *valid = build_file(32, &marks);
    for (size_t i = 0; i < G_N_ELEMENTS(damages); i++) {
        const Damage *dm = &damages[i];
        GByteArray *buf = g_byte_array_new();
        g_byte_array_append(buf, valid->data, valid->len);
        size_t off = mark_at(marks, dm->field) + dm->delta;
        g_assert_cmpuint(off + dm->width, <=, buf->len);
        memcpy(buf->data + off, &dm->value, dm->width); /* little-endian host */
        char *name = g_strdup_printf("%s.gguf", dm->name);
        char *path = write_file(name, buf->data, buf->len);
        expect_error(path, COBRA_ERROR_FORMAT, dm->expect);
        g_unlink(path);
        g_free(path);
        g_free(name);
        g_byte_array_unref(buf);
    }
    g_hash_table_destroy(marks);
    g_byte_array_unref(valid);
}

/* Every proper prefix of a valid file is refused. */
static void test_truncated(void)
{
    GHashTable *marks;
    GByteArray *valid = build_file(32, &marks);
    char *path = g_build_filename(tmp_dir, "truncated.gguf", NULL);
    for (size_t len = 0; len < valid->len; len++) {
        GError *err = NULL;
        store(path, valid->data, len);
        GgufFile *f = gguf_open(path, &err);
        if (f) {
            g_test_fail_printf("%s cut to %zu of %u bytes opened", path, len, valid->len);
            gguf_close(f);
            continue;
        }
        g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
        g_assert_nonnull(strstr(err->message, path));
        g_error_free(err);
    }
    expect_error(path, COBRA_ERROR_FORMAT, "tensor 'v.col': data (offset 256, 16 bytes) runs past");
    store(path, valid->data, 10);
    expect_error(path, COBRA_ERROR_FORMAT, "header: truncated at offset 8 reading the tensor count");
    g_unlink(path);
    g_free(path);
    g_hash_table_destroy(marks);
    g_byte_array_unref(valid);
}

/* Random damage to the header and tables: every outcome is a clean error or a file whose every
 * tensor byte and metadata value can be read (the sanitizer build checks the reads). */
static void test_random_damage(void)
{
    GHashTable *marks;
    GByteArray *valid = build_file(32, &marks);
    size_t tables_end = mark_at(marks, "off:v.col") + 8;
    char *path = g_build_filename(tmp_dir, "random.gguf", NULL);
    GRand *rng = g_rand_new_with_seed(1234);
    int opened = 0;
    for (int iter = 0; iter < 3000; iter++) {
        GByteArray *buf = g_byte_array_new();
        g_byte_array_append(buf, valid->data, valid->len);
        int n_flips = g_rand_int_range(rng, 1, 4);
        for (int k = 0; k < n_flips; k++)
            buf->data[g_rand_int_range(rng, 0, (gint32)tables_end)] = (uint8_t)g_rand_int(rng);
        store(path, buf->data, buf->len);
        GError *err = NULL;
        GgufFile *f = gguf_open(path, &err);
        if (f) {
            opened++;
            unsigned sum = 0;
            for (int i = 0; i < gguf_n_tensors(f); i++) {
                const GgufTensor *t = gguf_tensor_at(f, i);
                for (size_t j = 0; j < t->nbytes; j++)
                    sum += ((const uint8_t *)t->data)[j];
                sum += (unsigned)strlen(t->name);
            }
            size_t n;
            const char *const *sv = gguf_get_string_array(f, "test.strs", &n, NULL);
            for (size_t j = 0; sv && j < n; j++)
                sum += (unsigned)strlen(sv[j]);
            const char *s = gguf_get_string(f, "test.str", NULL);
            sum += s ? (unsigned)strlen(s) : 0;
            sink = sum;
            gguf_close(f);
        } else {
            g_assert_error(err, COBRA_ERROR, COBRA_ERROR_FORMAT);
            g_assert_nonnull(strstr(err->message, path));
            g_error_free(err);
        }
        g_byte_array_unref(buf);
    }
    g_test_message("%d of 3000 damaged files still opened", opened);
    g_rand_free(rng);
    g_unlink(path);
    g_free(path);
    g_hash_table_destroy(marks);
    g_byte_array_unref(valid);
}

static void test_row_size(void)
{
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_F32, 7), ==, 28);
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_F16, 7), ==, 14);
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_Q8_0, 64), ==, 68);
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_Q8_0, 33), ==, 0);
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_Q4_0, 64), ==, 36);
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_Q4_0, 48), ==, 0);
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_F32, 0), ==, 0);
    g_assert_cmpuint(ggml_row_size(GGML_TYPE_F32, INT64_MAX), ==, 0);
}

/* ---- the converted tiny models ---- */

static uint64_t require_uint(GgufFile *f, const char *key)
{
    GError *err = NULL;
    uint64_t v = 0;
    gguf_get_uint(f, key, UINT32_MAX, &v, &err);
    g_assert_no_error(err);
    return v;
}

static void require_tensor_named(GgufFile *f, const char *fmt, int i)
{
    char *name = g_strdup_printf(fmt, i);
    if (!gguf_find_tensor(f, name))
        g_test_fail_printf("%s: tensor '%s' is missing", gguf_path(f), name);
    g_free(name);
}

static void check_tower(GgufFile *f, const char *t)
{
    GError *err = NULL;
    char *key = g_strdup_printf("clip.%s.feature_layer", t);
    uint64_t last = require_uint(f, key);
    g_free(key);
    key = g_strdup_printf("clip.%s.embedding_length", t);
    int64_t c = (int64_t)require_uint(f, key);
    g_free(key);
    float v[3];
    key = g_strdup_printf("clip.%s.image_mean", t);
    g_assert_true(gguf_get_f32_array(f, key, v, 3, &err));
    g_free(key);
    key = g_strdup_printf("clip.%s.image_std", t);
    g_assert_true(gguf_get_f32_array(f, key, v, 3, &err));
    g_free(key);
    key = g_strdup_printf("clip.%s.attention.layer_norm_epsilon", t);
    double eps;
    g_assert_true(gguf_get_float(f, key, &eps, &err));
    g_free(key);
    key = g_strdup_printf("clip.%s.has_class_token", t);
    gboolean cls;
    g_assert_true(gguf_get_bool(f, key, &cls, &err));
    g_free(key);
    g_assert_no_error(err);
    char *name = g_strdup_printf("%s.patch_embd.bias", t);
    g_assert_nonnull(gguf_require_tensor(f, name, 1, &c, GGUF_TYPES_F32, &err));
    g_assert_no_error(err);
    g_free(name);
    char *fmt = g_strdup_printf("%s.blk.%%d.attn_qkv.weight", t);
    for (int i = 0; i <= (int)last; i++)
        require_tensor_named(f, fmt, i);
    g_free(fmt);
    name = g_strdup_printf("%s.blk.%d.ln1.weight", t, (int)last + 1);
    g_assert_null(gguf_find_tensor(f, name)); /* blocks after feature_layer are not stored */
    g_free(name);
}

static void test_tiny_models(void)
{
    static const char *const outtypes[] = { "f32", "f16", "q8_0" };
    static const uint64_t file_types[] = { 0, 1, 7 };
    for (size_t m = 0; m < G_N_ELEMENTS(outtypes); m++) {
        char *path = test_model_path(outtypes[m]);
        GError *err = NULL;
        GgufFile *f = gguf_open(path, &err);
        g_assert_no_error(err);
        g_assert_nonnull(f);
        g_assert_cmpstr(gguf_get_string(f, "general.architecture", &err), ==, "cobra");
        g_assert_nonnull(gguf_get_string(f, "general.name", &err));
        g_assert_cmpuint(require_uint(f, "general.alignment"), ==, 32);
        g_assert_cmpuint(require_uint(f, "general.file_type"), ==, file_types[m]);
        static const char *const strings[] = {
            "cobra.arch_specifier", "cobra.vision_backbone_id", "cobra.llm_backbone_id",
            "cobra.image_resize_strategy", "cobra.prompt_template", "clip.projector_type",
            "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template",
        };
        for (size_t i = 0; i < G_N_ELEMENTS(strings); i++)
            g_assert_nonnull(gguf_get_string(f, strings[i], &err));
        g_assert_no_error(err);
        size_t n_order, n_tokens, n_types, n_merges;
        const char *const *order = gguf_get_string_array(f, "clip.vision.feature_order", &n_order,
                                                         &err);
        g_assert_no_error(err);
        g_assert_cmpuint(n_order, ==, 2);
        for (size_t i = 0; i < n_order; i++)
            check_tower(f, order[i]);
        g_assert_nonnull(gguf_get_string_array(f, "tokenizer.ggml.tokens", &n_tokens, &err));
        g_assert_nonnull(gguf_get_i32_array(f, "tokenizer.ggml.token_type", &n_types, &err));
        g_assert_nonnull(gguf_get_string_array(f, "tokenizer.ggml.merges", &n_merges, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(n_tokens, ==, n_types);
        g_assert_cmpuint(n_merges, >, 0);

        int64_t d = (int64_t)require_uint(f, "mamba.embedding_length");
        int64_t ne_embd[2] = { d, (int64_t)require_uint(f, "mamba.vocab_size") };
        g_assert_nonnull(gguf_require_tensor(f, "token_embd.weight", 2, ne_embd, GGUF_TYPES_MATRIX,
                                             &err));
        g_assert_nonnull(gguf_require_tensor(f, "output_norm.weight", 1, &d, GGUF_TYPES_F32, &err));
        g_assert_no_error(err);
        int n_layer = (int)require_uint(f, "mamba.block_count");
        static const char *const per_layer[] = {
            "blk.%d.attn_norm.weight", "blk.%d.ssm_in.weight", "blk.%d.ssm_conv1d.weight",
            "blk.%d.ssm_conv1d.bias", "blk.%d.ssm_x.weight", "blk.%d.ssm_dt.weight",
            "blk.%d.ssm_dt.bias", "blk.%d.ssm_a", "blk.%d.ssm_d", "blk.%d.ssm_out.weight",
        };
        for (int i = 0; i < n_layer; i++)
            for (size_t k = 0; k < G_N_ELEMENTS(per_layer); k++)
                require_tensor_named(f, per_layer[k], i);
        for (int i = 0; i <= 4; i += 2) {
            require_tensor_named(f, "mm.%d.weight", i);
            require_tensor_named(f, "mm.%d.bias", i);
        }
        /* Every tensor: a supported type, F32 in the f32 file, its size from its shape. */
        for (int i = 0; i < gguf_n_tensors(f); i++) {
            const GgufTensor *t = gguf_tensor_at(f, i);
            int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
            g_assert_cmpuint(t->nbytes, ==, ggml_row_size(t->type, t->ne[0]) * (size_t)rows);
            if (m == 0)
                g_assert_cmpint(t->type, ==, GGML_TYPE_F32);
            g_assert_true(gguf_find_tensor(f, t->name) == t);
            g_assert_cmpuint((uintptr_t)t->data % 32, ==, 0);
        }
        gguf_close(f);
        g_free(path);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    GError *err = NULL;
    tmp_dir = g_dir_make_tmp("test-gguf-XXXXXX", &err);
    g_assert_no_error(err);
    g_test_add_func("/gguf/valid-file", test_valid_file);
    g_test_add_func("/gguf/open-twice", test_open_twice);
    g_test_add_func("/gguf/header-only", test_header_only);
    g_test_add_func("/gguf/io-errors", test_io_errors);
    g_test_add_func("/gguf/damaged", test_damaged);
    g_test_add_func("/gguf/truncated", test_truncated);
    g_test_add_func("/gguf/random-damage", test_random_damage);
    g_test_add_func("/gguf/row-size", test_row_size);
    g_test_add_func("/gguf/tiny-models", test_tiny_models);
    int rc = g_test_run();
    g_rmdir(tmp_dir);
    g_free(tmp_dir);
    return rc;
}
