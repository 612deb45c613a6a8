/* gguf.h - read-only, validated access to a GGUF v3 file held in memory.
 *
 * gguf_open() reads the file into private, page-aligned memory; gguf_open_mapped() maps it
 * shared and read-only instead. Either way the same code then checks every byte of the header,
 * metadata and tensor table before anything is used: magic, version, counts, string and array
 * lengths, value types, tensor dims, types, offsets and sizes (overflow-safe), alignment and
 * duplicate names. After it succeeds every GgufTensor's data lies inside that memory. Errors name
 * the file and the part at fault. Metadata strings and arrays are copied at open so they are
 * NUL-terminated and aligned. general.alignment, if present, must be a uint32 power of two in
 * 4..4096 (default 32), so that tensor pointers are aligned as well as file offsets.
 */
#ifndef COBRA_GGUF_H
#define COBRA_GGUF_H

#include <glib.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types (GGUF spec numbering). */
typedef enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
} GgufValueType;

/* Tensor element types (ggml numbering); the only ones the engine reads. */
typedef enum {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q8_0 = 8,
} GgmlType;

/* How a type is stored: rows are whole blocks of `block` elements, `block_bytes` each. The
 * storage half of a type's description; its kernels are ops.c's table. */
typedef struct {
    const char *name;
    int block;
    size_t block_bytes;
} GgmlTypeInfo;

/* NULL for a type the engine does not read. */
const GgmlTypeInfo *ggml_type_info(uint32_t type);

#define GGUF_MAX_DIMS 4

typedef struct {
    const char *name;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] innermost; unused dims are 1 */
    GgmlType type;
    const void *data;          /* inside the mapping, aligned to general.alignment */
    size_t nbytes;
} GgufTensor;

typedef struct GgufFile GgufFile;

/* Both refuse anything but a regular file without blocking on it (a FIFO, a directory, a device).
 * gguf_open() also fails when the file changes (size or modification time) while it is read. */
GgufFile *gguf_open(const char *path, GError **error);
/* The mapping shares the page cache's pages; a process dies of SIGBUS if the file is truncated
 * under it. */
GgufFile *gguf_open_mapped(const char *path, GError **error);
void gguf_close(GgufFile *f);
const char *gguf_path(const GgufFile *f);

/* Metadata. Each getter fails (FALSE/NULL + error naming file and key) when the key is missing
 * or holds another type. */
gboolean gguf_has_key(const GgufFile *f, const char *key);
/* Any integer type whose value fits in 0..max. */
gboolean gguf_get_uint(const GgufFile *f, const char *key, uint64_t max, uint64_t *out,
                       GError **error);
/* FLOAT32 or FLOAT64. */
gboolean gguf_get_float(const GgufFile *f, const char *key, double *out, GError **error);
gboolean gguf_get_bool(const GgufFile *f, const char *key, gboolean *out, GError **error);
const char *gguf_get_string(const GgufFile *f, const char *key, GError **error);
/* An array of FLOAT32 with exactly n elements, copied to out. */
gboolean gguf_get_f32_array(const GgufFile *f, const char *key, float *out, size_t n,
                            GError **error);
/* An array of INT32; *n gets its length; the data stays owned by f. */
const int32_t *gguf_get_i32_array(const GgufFile *f, const char *key, size_t *n, GError **error);
/* An array of STRING; *n gets its length; the strings stay owned by f (NUL-terminated; an
 * embedded NUL in the file is an error at open). */
const char *const *gguf_get_string_array(const GgufFile *f, const char *key, size_t *n,
                                         GError **error);

/* Tensors. */
int gguf_n_tensors(const GgufFile *f);
const GgufTensor *gguf_tensor_at(const GgufFile *f, int i);
const GgufTensor *gguf_find_tensor(const GgufFile *f, const char *name);

/* Bit set of GgmlType values accepted by gguf_require_tensor(). */
#define GGUF_TYPES_F32 (1u << GGML_TYPE_F32)
#define GGUF_TYPES_MATRIX                                                                        \
    ((1u << GGML_TYPE_F32) | (1u << GGML_TYPE_F16) | (1u << GGML_TYPE_Q4_0) |                     \
     (1u << GGML_TYPE_Q8_0))

/* The tensor `name` with exactly the shape ne[0..n_dims-1] (ggml order; trailing dims of 1
 * in the file are ignored) and a type in `types`; NULL and an error naming the file, the tensor,
 * and the expected and actual shape or type otherwise. */
const GgufTensor *gguf_require_tensor(const GgufFile *f, const char *name, int n_dims,
                                      const int64_t *ne, unsigned types, GError **error);

/* Bytes of one row of `ne0` elements of `type`; 0 if ne0 does not fit the type's block size. */
size_t ggml_row_size(GgmlType type, int64_t ne0);

#endif
