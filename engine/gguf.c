/* gguf.c - read a GGUF file into memory and validate all of it once, at open.
 *
 * Reading (the default): the whole file goes into an anonymous private mapping, so the weights
 * are ours and a `cp new.gguf model.gguf` (which truncates, then writes) under a running process
 * changes nothing in it; llama.cpp's --no-mmap makes the same trade. The memory is page-aligned,
 * like a file mapping, so the alignment rule below holds for both. It costs the file's size in
 * private memory per load and one full read at load (docs/reliability.md has the figures).
 *
 * Mapping (gguf_open_mapped): PROT_READ + MAP_SHARED. The pages are the page cache's own, so
 * every load of one file (several models, several processes) shares them and no weight is ever
 * copied. With PROT_READ, MAP_PRIVATE would behave the same on Linux (no page is ever written, so
 * none is ever copied, and writes by others stay visible either way); MAP_SHARED says plainly
 * that we hold the file's pages, not a snapshot. Truncation of a mapped file by another process
 * is outside what mmap can protect against: touching a page past the new end raises SIGBUS.
 *
 * Either way every header, metadata and tensor-table byte is read exactly once, into our own
 * structs (metadata values are copied, tensor infos kept in structs), and checked there; nothing
 * is re-read later except tensor data, whose content can only change numbers, never addresses.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cobra.h"

/* Values and tensor data are used in place and in host order. */
#if G_BYTE_ORDER != G_LITTLE_ENDIAN
#error "GGUF files are little-endian; only little-endian hosts are supported"
#endif

#define GGUF_DEFAULT_ALIGNMENT 32
/* The file's memory starts on a page boundary (read or mapped), so a file alignment up to the
 * smallest page size also aligns the pointers; below 4 an F32 tensor could be misaligned. */
#define GGUF_MIN_ALIGNMENT 4
#define GGUF_MAX_ALIGNMENT 4096

typedef struct {
    char *key;
    GgufValueType type;
    GgufValueType elem_type; /* arrays */
    size_t n;                /* arrays: element count */
    union {
        uint64_t u; /* unsigned integers and bool */
        int64_t i;  /* signed integers */
        double f;   /* floats */
    } num;
    char *str;   /* STRING */
    void *elems; /* ARRAY: numeric elements, or n char * into strs for STRING */
    char *strs;  /* ARRAY of STRING: the strings, each NUL-terminated, back to back */
} GgufValue;

struct GgufFile {
    char *path;
    const uint8_t *map;
    size_t size;
    GHashTable *kv;      /* key -> GgufValue */
    GgufTensor *tensors; /* file order */
    int n_tensors;
    GHashTable *tensor_index; /* name -> GgufTensor in tensors */
};

/* A bounds-checked cursor over the mapping; `ctx` says what is being read, for errors. */
typedef struct {
    const uint8_t *data;
    size_t size, pos;
    const char *path;
    char *ctx;
    GError **error;
} Reader;

static const char *const value_type_names[] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};

/* Bytes of a scalar value type; 0 for string, array and unknown types. */
static size_t value_type_size(uint32_t t)
{
    static const size_t sizes[] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
    return t < G_N_ELEMENTS(sizes) ? sizes[t] : 0;
}

static gboolean value_type_known(uint32_t t)
{
    return t <= GGUF_TYPE_FLOAT64;
}

/* ggml's block layouts: Q4_0 is { f16 d; uint8 qs[16]; } (low nibbles elements 0..15, high
 * nibbles 16..31), Q8_0 { f16 d; int8 qs[32]; }. */
static const GgmlTypeInfo type_info[] = {
    [GGML_TYPE_F32] = { "F32", 1, 4 },
    [GGML_TYPE_F16] = { "F16", 1, 2 },
    [GGML_TYPE_Q4_0] = { "Q4_0", 32, 2 + 16 },
    [GGML_TYPE_Q8_0] = { "Q8_0", 32, 2 + 32 },
};

const GgmlTypeInfo *ggml_type_info(uint32_t type)
{
    return type < G_N_ELEMENTS(type_info) && type_info[type].name ? &type_info[type] : NULL;
}

static const char *tensor_type_name(uint32_t t)
{
    const GgmlTypeInfo *info = ggml_type_info(t);
    return info ? info->name : NULL;
}

size_t ggml_row_size(GgmlType type, int64_t ne0)
{
    const GgmlTypeInfo *info = ggml_type_info(type);
    if (!info || ne0 <= 0 || ne0 % info->block)
        return 0;
    const uint64_t blocks = (uint64_t)(ne0 / info->block);
    return blocks <= SIZE_MAX / info->block_bytes ? (size_t)blocks * info->block_bytes : 0;
}

/* ---- reading ---- */

G_GNUC_PRINTF(2, 3)
static gboolean fail(Reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(r->error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: %s: %s", r->path, r->ctx, msg);
    g_free(msg);
    return FALSE;
}

G_GNUC_PRINTF(2, 3)
static void set_context(Reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_free(r->ctx);
    r->ctx = g_strdup_vprintf(fmt, ap);
    va_end(ap);
}

static size_t bytes_left(const Reader *r)
{
    return r->size - r->pos;
}

/* Copy n bytes at the cursor to out and advance. */
static gboolean read_bytes(Reader *r, void *out, size_t n, const char *what)
{
    if (n > bytes_left(r)) {
        /* Not `return fail()`: the compiler must see that out is set whenever TRUE is returned. */
        fail(r, "truncated at offset %zu reading %s (needs %zu bytes, %zu left)", r->pos, what, n,
             bytes_left(r));
        return FALSE;
    }
    memcpy(out, r->data + r->pos, n);
    r->pos += n;
    return TRUE;
}

static gboolean read_u32(Reader *r, uint32_t *out, const char *what)
{
    return read_bytes(r, out, sizeof *out, what);
}

static gboolean read_u64(Reader *r, uint64_t *out, const char *what)
{
    return read_bytes(r, out, sizeof *out, what);
}

/* A length-prefixed string, appended to buf with a NUL. The NUL check runs on the copy, so a
 * concurrent write to the file cannot slip one in after the check. */
static gboolean read_string_into(Reader *r, GByteArray *buf, const char *what)
{
    uint64_t n;
    if (!read_u64(r, &n, what))
        return FALSE;
    if (n > bytes_left(r))
        return fail(r, "%s length %" PRIu64 " at offset %zu exceeds the %zu bytes left in the file",
                    what, n, r->pos - 8, bytes_left(r));
    /* GByteArray lengths are guint. */
    if (n >= G_MAXUINT - buf->len)
        return fail(r, "%s length %" PRIu64 " at offset %zu: strings over 4 GiB are not supported",
                    what, n, r->pos - 8);
    size_t start = buf->len;
    g_byte_array_append(buf, r->data + r->pos, (guint)n);
    g_byte_array_append(buf, (const guint8 *)"", 1);
    if (memchr(buf->data + start, 0, n))
        return fail(r, "%s at offset %zu contains a NUL byte", what, r->pos);
    r->pos += n;
    return TRUE;
}

/* A length-prefixed string as a new NUL-terminated string, or NULL. */
static char *read_string(Reader *r, const char *what)
{
    GByteArray *buf = g_byte_array_new();
    if (!read_string_into(r, buf, what)) {
        g_byte_array_unref(buf);
        return NULL;
    }
    return (char *)g_byte_array_free(buf, FALSE);
}

static void value_free(gpointer p)
{
    GgufValue *v = p;
    g_free(v->key);
    g_free(v->str);
    g_free(v->elems);
    g_free(v->strs);
    g_free(v);
}

static void decode_scalar(GgufValue *v, const uint8_t *b)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8: v->num.u = b[0]; break;
    case GGUF_TYPE_INT8: v->num.i = (int8_t)b[0]; break;
    case GGUF_TYPE_BOOL: v->num.u = b[0] != 0; break;
    case GGUF_TYPE_UINT16: { uint16_t x; memcpy(&x, b, 2); v->num.u = x; break; }
    case GGUF_TYPE_INT16: { int16_t x; memcpy(&x, b, 2); v->num.i = x; break; }
    case GGUF_TYPE_UINT32: { uint32_t x; memcpy(&x, b, 4); v->num.u = x; break; }
    case GGUF_TYPE_INT32: { int32_t x; memcpy(&x, b, 4); v->num.i = x; break; }
    case GGUF_TYPE_FLOAT32: { float x; memcpy(&x, b, 4); v->num.f = x; break; }
    case GGUF_TYPE_UINT64: memcpy(&v->num.u, b, 8); break;
    case GGUF_TYPE_INT64: memcpy(&v->num.i, b, 8); break;
    case GGUF_TYPE_FLOAT64: memcpy(&v->num.f, b, 8); break;
    default: break;
    }
}

/* An array of v->n strings: pointers are kept as offsets into one buffer until it stops growing. */
static gboolean read_string_array(Reader *r, GgufValue *v)
{
    size_t *offsets = g_new(size_t, v->n);
    GByteArray *buf = g_byte_array_new();
    for (size_t i = 0; i < v->n; i++) {
        offsets[i] = buf->len;
        if (!read_string_into(r, buf, "array string")) {
            g_free(offsets);
            g_byte_array_unref(buf);
            return FALSE;
        }
    }
    v->strs = (char *)g_byte_array_free(buf, FALSE);
    char **ptrs = g_new(char *, v->n + 1);
    for (size_t i = 0; i < v->n; i++)
        ptrs[i] = v->strs + offsets[i];
    ptrs[v->n] = NULL;
    v->elems = ptrs;
    g_free(offsets);
    return TRUE;
}

static gboolean read_array(Reader *r, GgufValue *v)
{
    uint32_t et;
    uint64_t n;
    if (!read_u32(r, &et, "array element type") || !read_u64(r, &n, "array length"))
        return FALSE;
    if (et == GGUF_TYPE_ARRAY)
        return fail(r, "nested arrays are not supported");
    if (!value_type_known(et))
        return fail(r, "unknown array element type %" PRIu32, et);
    v->elem_type = et;
    /* A string takes at least its 8-byte length in the file. */
    size_t es = et == GGUF_TYPE_STRING ? 8 : value_type_size(et);
    if (n > bytes_left(r) / es)
        return fail(r, "array length %" PRIu64 " of %s at offset %zu exceeds what the %zu bytes "
                    "left in the file can hold", n, value_type_names[et], r->pos - 8,
                    bytes_left(r));
    v->n = n;
    if (et == GGUF_TYPE_STRING)
        return read_string_array(r, v);
    /* At least one byte so that an empty array still has a non-NULL pointer. */
    v->elems = g_malloc(MAX(v->n * es, 1));
    return read_bytes(r, v->elems, v->n * es, "array elements");
}

static gboolean read_value(Reader *r, GgufValue *v)
{
    if (v->type == GGUF_TYPE_STRING) {
        v->str = read_string(r, "string value");
        return v->str != NULL;
    }
    if (v->type == GGUF_TYPE_ARRAY)
        return read_array(r, v);
    uint8_t b[8];
    if (!read_bytes(r, b, value_type_size(v->type), value_type_names[v->type]))
        return FALSE;
    decode_scalar(v, b);
    return TRUE;
}

static gboolean read_kv(Reader *r, GHashTable *kv, uint64_t index)
{
    set_context(r, "metadata entry %" PRIu64, index);
    uint32_t type;
    char *key = read_string(r, "key");
    if (!key)
        return FALSE;
    if (!key[0]) {
        g_free(key);
        return fail(r, "empty key");
    }
    GgufValue *v = g_new0(GgufValue, 1);
    v->key = key;
    set_context(r, "key '%.200s'", v->key);
    gboolean ok = FALSE;
    if (g_hash_table_contains(kv, v->key))
        fail(r, "duplicate key");
    else if (!read_u32(r, &type, "value type"))
        ;
    else if (!value_type_known(type))
        fail(r, "unknown value type %" PRIu32, type);
    else {
        v->type = type;
        ok = read_value(r, v);
    }
    if (!ok) {
        value_free(v);
        return FALSE;
    }
    g_hash_table_insert(kv, v->key, v);
    return TRUE;
}

/* One tensor info; `t->name` is set first so that the caller frees it even when reading fails.
 * The data offset, relative to the data section, goes to *offset. */
static gboolean read_tensor_info(Reader *r, GgufTensor *t, uint64_t *offset, uint64_t index)
{
    set_context(r, "tensor info %" PRIu64, index);
    uint32_t n_dims, type;
    t->name = read_string(r, "tensor name");
    if (!t->name)
        return FALSE;
    if (!t->name[0])
        return fail(r, "empty tensor name");
    set_context(r, "tensor '%.200s'", t->name);
    if (!read_u32(r, &n_dims, "n_dims"))
        return FALSE;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return fail(r, "n_dims %" PRIu32 " is outside 1..%d", n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    int64_t n_elems = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        if ((uint32_t)d < n_dims && !read_u64(r, &ne, "a dimension"))
            return FALSE;
        if (ne < 1 || ne > INT64_MAX)
            return fail(r, "ne[%d] = %" PRIu64 " is outside 1..%" PRId64, d, ne, INT64_MAX);
        if ((int64_t)ne > INT64_MAX / n_elems)
            return fail(r, "element count overflows");
        n_elems *= (int64_t)ne;
        t->ne[d] = (int64_t)ne;
    }
    if (!read_u32(r, &type, "the tensor type") || !read_u64(r, offset, "the data offset"))
        return FALSE;
    if (!tensor_type_name(type))
        return fail(r, "unsupported tensor type %" PRIu32, type);
    t->type = type;
    size_t row = ggml_row_size(type, t->ne[0]);
    const GgmlTypeInfo *info = ggml_type_info(type);
    if (t->ne[0] % info->block)
        return fail(r, "ne[0] = %" PRId64 " is not a multiple of the %s block size %d", t->ne[0],
                    info->name, info->block);
    if (row == 0 || !g_size_checked_mul(&t->nbytes, row, (size_t)(n_elems / t->ne[0])))
        return fail(r, "byte size overflows");
    return TRUE;
}

static gboolean read_header(Reader *r, uint64_t *n_tensors, uint64_t *n_kv)
{
    set_context(r, "header");
    char magic[4];
    uint32_t version;
    if (!read_bytes(r, magic, 4, "the magic"))
        return FALSE;
    if (memcmp(magic, "GGUF", 4) != 0)
        return fail(r, "bad magic (not a GGUF file)");
    if (!read_u32(r, &version, "the version"))
        return FALSE;
    /* v2 differs from v3 only in allowing big-endian files, which the magic check excludes. */
    if (version != 2 && version != 3)
        return fail(r, "unsupported GGUF version %" PRIu32 " (expected 3)", version);
    if (!read_u64(r, n_tensors, "the tensor count") || !read_u64(r, n_kv, "the metadata count"))
        return FALSE;
    /* The smallest metadata entry: key length, value type, one byte; the smallest tensor info:
     * name length, n_dims, one dimension, type, offset. */
    if (*n_kv > bytes_left(r) / 13)
        return fail(r, "metadata count %" PRIu64 " is more than the %zu bytes left in the file "
                    "can hold", *n_kv, bytes_left(r));
    if (*n_tensors > bytes_left(r) / 32 || *n_tensors > INT_MAX)
        return fail(r, "tensor count %" PRIu64 " is more than the %zu bytes left in the file "
                    "can hold", *n_tensors, bytes_left(r));
    return TRUE;
}

static gboolean read_alignment(Reader *r, GHashTable *kv, size_t *alignment)
{
    set_context(r, "key 'general.alignment'");
    const GgufValue *v = g_hash_table_lookup(kv, "general.alignment");
    *alignment = GGUF_DEFAULT_ALIGNMENT;
    if (!v)
        return TRUE;
    if (v->type != GGUF_TYPE_UINT32)
        return fail(r, "has type %s, expected uint32", value_type_names[v->type]);
    if (v->num.u == 0 || (v->num.u & (v->num.u - 1)) != 0)
        return fail(r, "alignment %" PRIu64 " is not a power of two", v->num.u);
    if (v->num.u < GGUF_MIN_ALIGNMENT || v->num.u > GGUF_MAX_ALIGNMENT)
        return fail(r, "alignment %" PRIu64 " is outside %d..%d", v->num.u, GGUF_MIN_ALIGNMENT,
                    GGUF_MAX_ALIGNMENT);
    *alignment = v->num.u;
    return TRUE;
}

static int compare_offsets(gconstpointer a, gconstpointer b)
{
    const GgufTensor *x = *(const GgufTensor *const *)a, *y = *(const GgufTensor *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

/* Place each tensor in the data section: aligned, inside the file, not overlapping another. */
static gboolean place_tensors(Reader *r, GgufFile *f, const uint64_t *offsets, size_t alignment)
{
    set_context(r, "tensor data");
    size_t data_start = (r->pos + alignment - 1) / alignment * alignment;
    if (f->n_tensors > 0 && data_start > r->size)
        return fail(r, "data section at offset %zu starts past the end of the file (%zu bytes)",
                    data_start, r->size);
    for (int i = 0; i < f->n_tensors; i++) {
        GgufTensor *t = &f->tensors[i];
        set_context(r, "tensor '%.200s'", t->name);
        if (offsets[i] % alignment != 0)
            return fail(r, "data offset %" PRIu64 " is not a multiple of the alignment %zu",
                        offsets[i], alignment);
        size_t room = r->size - data_start;
        if (offsets[i] > room || t->nbytes > room - offsets[i])
            return fail(r, "data (offset %" PRIu64 ", %zu bytes) runs past the end of the file "
                        "(%zu bytes of data)", offsets[i], t->nbytes, room);
        t->data = f->map + data_start + offsets[i];
    }
    const GgufTensor **sorted = g_new(const GgufTensor *, MAX(f->n_tensors, 1));
    for (int i = 0; i < f->n_tensors; i++)
        sorted[i] = &f->tensors[i];
    qsort(sorted, f->n_tensors, sizeof *sorted, compare_offsets);
    gboolean ok = TRUE;
    set_context(r, "tensor data");
    for (int i = 1; i < f->n_tensors && ok; i++) {
        const GgufTensor *a = sorted[i - 1], *b = sorted[i];
        size_t a_off = (size_t)((const uint8_t *)a->data - f->map) - data_start;
        size_t b_off = (size_t)((const uint8_t *)b->data - f->map) - data_start;
        if (a_off + a->nbytes > b_off)
            ok = fail(r, "tensors '%.200s' (offset %zu, %zu bytes) and '%.200s' (offset %zu) "
                      "overlap", a->name, a_off, a->nbytes, b->name, b_off);
    }
    g_free(sorted);
    return ok;
}

static gboolean index_tensors(Reader *r, GgufFile *f)
{
    for (int i = 0; i < f->n_tensors; i++) {
        GgufTensor *t = &f->tensors[i];
        if (g_hash_table_contains(f->tensor_index, t->name)) {
            set_context(r, "tensor '%.200s'", t->name);
            return fail(r, "duplicate tensor name");
        }
        g_hash_table_insert(f->tensor_index, (char *)t->name, t);
    }
    return TRUE;
}

static gboolean parse(GgufFile *f, GError **error)
{
    Reader r = { f->map, f->size, 0, f->path, NULL, error };
    uint64_t n_tensors = 0, n_kv = 0;
    gboolean ok = read_header(&r, &n_tensors, &n_kv);
    for (uint64_t i = 0; ok && i < n_kv; i++)
        ok = read_kv(&r, f->kv, i);
    /* The tables grow as they are read, so a lying count cannot make us allocate ahead of the
     * file. f takes the tensors (and their names) even on failure, for gguf_close() to free. */
    GArray *tensors = g_array_new(FALSE, TRUE, sizeof(GgufTensor));
    GArray *offsets = g_array_new(FALSE, TRUE, sizeof(uint64_t));
    for (uint64_t i = 0; ok && i < n_tensors; i++) {
        g_array_set_size(tensors, tensors->len + 1);
        g_array_set_size(offsets, offsets->len + 1);
        ok = read_tensor_info(&r, &g_array_index(tensors, GgufTensor, i),
                              &g_array_index(offsets, uint64_t, i), i);
    }
    f->n_tensors = (int)tensors->len;
    f->tensors = (GgufTensor *)(void *)g_array_free(tensors, FALSE);
    size_t alignment = 0;
    if (ok)
        ok = read_alignment(&r, f->kv, &alignment);
    if (ok)
        ok = place_tensors(&r, f, (const uint64_t *)(void *)offsets->data, alignment);
    if (ok)
        ok = index_tensors(&r, f);
    g_array_free(offsets, TRUE);
    g_free(r.ctx);
    return ok;
}

/* ---- open / close ---- */

G_GNUC_PRINTF(3, 4)
static gboolean io_error(GError **error, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, COBRA_ERROR, COBRA_ERROR_IO, "%s: %s", path, msg);
    g_free(msg);
    return FALSE;
}

/* The open file if it is a non-empty regular file, else -1 and an error. O_NONBLOCK keeps open()
 * from waiting for a writer on a FIFO (and read() from waiting on a device); it changes nothing
 * for the regular files that get past the check. */
static int open_regular(const char *path, struct stat *st, GError **error)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        io_error(error, path, "cannot open: %s", g_strerror(e));
        return -1;
    }
    if (fstat(fd, st) != 0) {
        int e = errno;
        io_error(error, path, "cannot stat: %s", g_strerror(e));
    } else if (!S_ISREG(st->st_mode)) {
        io_error(error, path, "not a regular file (%s)",
                 S_ISDIR(st->st_mode) ? "a directory" : S_ISFIFO(st->st_mode) ? "a FIFO"
                 : S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? "a device" : "a socket");
    } else if (st->st_size == 0) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: file is empty", path);
    } else if ((uint64_t)st->st_size > SIZE_MAX) {
        io_error(error, path, "file is too large for the address space");
    } else {
        return fd;
    }
    close(fd);
    return -1;
}

static gboolean same_version(const struct stat *a, const struct stat *b)
{
    return a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* All st->st_size bytes of fd into buf; a short read, bytes past the end or a changed size or
 * modification time mean someone wrote the file meanwhile: an error, not a mixed model. */
static gboolean read_whole(int fd, const char *path, const struct stat *st, uint8_t *buf,
                           GError **error)
{
    size_t size = (size_t)st->st_size, done = 0;
    while (done < size) {
        ssize_t n = read(fd, buf + done, MIN(size - done, (size_t)1 << 30));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            return io_error(error, path, "cannot read at offset %zu: %s", done, g_strerror(e));
        }
        if (n == 0)
            return io_error(error, path, "the file shrank while it was being read (%zu of %zu "
                            "bytes); if it is being rewritten, load it again", done, size);
        done += (size_t)n;
    }
    uint8_t extra;
    struct stat after;
    if (read(fd, &extra, 1) != 0 || fstat(fd, &after) != 0 || !same_version(st, &after))
        return io_error(error, path, "the file changed while it was being read (size or "
                        "modification time); if it is being rewritten, load it again");
    return TRUE;
}

static gboolean load_file(GgufFile *f, gboolean map, GError **error)
{
    struct stat st;
    int fd = open_regular(f->path, &st, error);
    if (fd < 0)
        return FALSE;
    size_t size = (size_t)st.st_size;
    void *p = map ? mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0)
                  : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    gboolean ok = FALSE;
    if (p == MAP_FAILED) {
        int e = errno;
        io_error(error, f->path, "cannot %s %zu bytes: %s", map ? "map" : "allocate", size,
                 g_strerror(e));
    } else {
        f->map = p;
        f->size = size;
        /* Huge pages where the kernel allows them: faulting in 4 KB pages one by one was most of
         * the cost of a read (58 ms of the demo model's 20 MB, 8 ms with huge pages; the read
         * itself takes 2 ms from the page cache), and the matmuls' walks over the weights need
         * fewer TLB entries. Only a hint, so its failure changes nothing. */
        if (!map)
            madvise(p, size, MADV_HUGEPAGE);
        ok = map || read_whole(fd, f->path, &st, p, error);
        /* Read-only from now on, like the mapping: the weights are never written, and a stray
         * write faults instead of changing them. */
        if (ok && !map)
            mprotect(p, size, PROT_READ);
    }
    close(fd); /* a mapping keeps the file */
    return ok;
}

static GgufFile *open_file(const char *path, gboolean map, GError **error)
{
    g_return_val_if_fail(path != NULL, NULL);
    GgufFile *f = g_new0(GgufFile, 1);
    f->path = g_strdup(path);
    f->kv = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, value_free);
    f->tensor_index = g_hash_table_new(g_str_hash, g_str_equal);
    if (!load_file(f, map, error) || !parse(f, error)) {
        gguf_close(f);
        return NULL;
    }
    return f;
}

GgufFile *gguf_open(const char *path, GError **error)
{
    return open_file(path, FALSE, error);
}

GgufFile *gguf_open_mapped(const char *path, GError **error)
{
    return open_file(path, TRUE, error);
}

void gguf_close(GgufFile *f)
{
    if (!f)
        return;
    if (f->map)
        munmap((void *)f->map, f->size);
    for (int i = 0; i < f->n_tensors; i++)
        g_free((char *)f->tensors[i].name);
    g_free(f->tensors);
    g_hash_table_destroy(f->tensor_index);
    g_hash_table_destroy(f->kv);
    g_free(f->path);
    g_free(f);
}

const char *gguf_path(const GgufFile *f)
{
    return f->path;
}

/* ---- metadata ---- */

gboolean gguf_has_key(const GgufFile *f, const char *key)
{
    return g_hash_table_contains(f->kv, key);
}

static const char *describe_type(const GgufValue *v, char *buf, size_t size)
{
    if (v->type != GGUF_TYPE_ARRAY)
        return value_type_names[v->type];
    g_snprintf(buf, size, "array of %s", value_type_names[v->elem_type]);
    return buf;
}

/* The value of `key` if it has one of the scalar types in `types` (bit set of GgufValueType),
 * or an array of `elem_type` when types is 1 << GGUF_TYPE_ARRAY. */
static const GgufValue *lookup(const GgufFile *f, const char *key, unsigned types,
                               GgufValueType elem_type, const char *expected, GError **error)
{
    const GgufValue *v = g_hash_table_lookup(f->kv, key);
    if (!v) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: key '%s' is missing", f->path,
                    key);
        return NULL;
    }
    if (!(types & (1u << v->type)) || (v->type == GGUF_TYPE_ARRAY && v->elem_type != elem_type)) {
        char buf[32];
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: key '%s' has type %s, expected %s",
                    f->path, key, describe_type(v, buf, sizeof buf), expected);
        return NULL;
    }
    return v;
}

#define INTEGER_TYPES                                                                     \
    ((1u << GGUF_TYPE_UINT8) | (1u << GGUF_TYPE_INT8) | (1u << GGUF_TYPE_UINT16) |        \
     (1u << GGUF_TYPE_INT16) | (1u << GGUF_TYPE_UINT32) | (1u << GGUF_TYPE_INT32) |       \
     (1u << GGUF_TYPE_UINT64) | (1u << GGUF_TYPE_INT64))
#define SIGNED_TYPES                                                                      \
    ((1u << GGUF_TYPE_INT8) | (1u << GGUF_TYPE_INT16) | (1u << GGUF_TYPE_INT32) |         \
     (1u << GGUF_TYPE_INT64))

gboolean gguf_get_uint(const GgufFile *f, const char *key, uint64_t max, uint64_t *out,
                       GError **error)
{
    const GgufValue *v = lookup(f, key, INTEGER_TYPES, 0, "an integer", error);
    if (!v)
        return FALSE;
    gboolean is_signed = (SIGNED_TYPES & (1u << v->type)) != 0;
    if (is_signed ? v->num.i < 0 || (uint64_t)v->num.i > max : v->num.u > max) {
        char *s = is_signed ? g_strdup_printf("%" PRId64, v->num.i)
                            : g_strdup_printf("%" PRIu64, v->num.u);
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: key '%s' has value %s, expected 0..%" PRIu64, f->path, key, s, max);
        g_free(s);
        return FALSE;
    }
    *out = is_signed ? (uint64_t)v->num.i : v->num.u;
    return TRUE;
}

gboolean gguf_get_float(const GgufFile *f, const char *key, double *out, GError **error)
{
    const GgufValue *v = lookup(f, key, (1u << GGUF_TYPE_FLOAT32) | (1u << GGUF_TYPE_FLOAT64), 0,
                                "float32 or float64", error);
    if (v)
        *out = v->num.f;
    return v != NULL;
}

gboolean gguf_get_bool(const GgufFile *f, const char *key, gboolean *out, GError **error)
{
    const GgufValue *v = lookup(f, key, 1u << GGUF_TYPE_BOOL, 0, "bool", error);
    if (v)
        *out = v->num.u != 0;
    return v != NULL;
}

const char *gguf_get_string(const GgufFile *f, const char *key, GError **error)
{
    const GgufValue *v = lookup(f, key, 1u << GGUF_TYPE_STRING, 0, "string", error);
    return v ? v->str : NULL;
}

gboolean gguf_get_f32_array(const GgufFile *f, const char *key, float *out, size_t n,
                            GError **error)
{
    const GgufValue *v = lookup(f, key, 1u << GGUF_TYPE_ARRAY, GGUF_TYPE_FLOAT32,
                                "array of float32", error);
    if (!v)
        return FALSE;
    if (v->n != n) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: key '%s' has %zu elements, expected %zu", f->path, key, v->n, n);
        return FALSE;
    }
    memcpy(out, v->elems, n * sizeof(float));
    return TRUE;
}

const int32_t *gguf_get_i32_array(const GgufFile *f, const char *key, size_t *n, GError **error)
{
    const GgufValue *v = lookup(f, key, 1u << GGUF_TYPE_ARRAY, GGUF_TYPE_INT32, "array of int32",
                                error);
    if (!v)
        return NULL;
    *n = v->n;
    return v->elems;
}

const char *const *gguf_get_string_array(const GgufFile *f, const char *key, size_t *n,
                                         GError **error)
{
    const GgufValue *v = lookup(f, key, 1u << GGUF_TYPE_ARRAY, GGUF_TYPE_STRING,
                                "array of string", error);
    if (!v)
        return NULL;
    *n = v->n;
    return (const char *const *)v->elems;
}

/* ---- tensors ---- */

int gguf_n_tensors(const GgufFile *f)
{
    return f->n_tensors;
}

const GgufTensor *gguf_tensor_at(const GgufFile *f, int i)
{
    g_return_val_if_fail(i >= 0 && i < f->n_tensors, NULL);
    return &f->tensors[i];
}

const GgufTensor *gguf_find_tensor(const GgufFile *f, const char *name)
{
    return g_hash_table_lookup(f->tensor_index, name);
}

static char *format_shape(const int64_t *ne, int n_dims)
{
    GString *s = g_string_new("[");
    for (int d = 0; d < n_dims; d++)
        g_string_append_printf(s, "%s%" PRId64, d ? ", " : "", ne[d]);
    g_string_append_c(s, ']');
    return g_string_free(s, FALSE);
}

static char *format_types(unsigned types)
{
    GString *s = g_string_new(NULL);
    for (uint32_t t = 0; t < 32; t++)
        if ((types & (1u << t)) && tensor_type_name(t))
            g_string_append_printf(s, "%s%s", s->len ? " or " : "", tensor_type_name(t));
    return g_string_free(s, FALSE);
}

const GgufTensor *gguf_require_tensor(const GgufFile *f, const char *name, int n_dims,
                                      const int64_t *ne, unsigned types, GError **error)
{
    g_return_val_if_fail(n_dims >= 1 && n_dims <= GGUF_MAX_DIMS, NULL);
    const GgufTensor *t = gguf_find_tensor(f, name);
    if (!t) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT, "%s: tensor '%s' is missing", f->path,
                    name);
        return NULL;
    }
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if (t->ne[d] != (d < n_dims ? ne[d] : 1)) {
            char *got = format_shape(t->ne, t->n_dims), *want = format_shape(ne, n_dims);
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                        "%s: tensor '%s' has shape %s, expected %s", f->path, name, got, want);
            g_free(got);
            g_free(want);
            return NULL;
        }
    }
    if (!(types & (1u << t->type))) {
        char *want = format_types(types);
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: tensor '%s' has type %s, expected %s", f->path, name,
                    tensor_type_name(t->type), want);
        g_free(want);
        return NULL;
    }
    return t;
}
