/* npy.h - read and write numpy .npy arrays (version 1.0/2.0, little-endian, C order). */
#ifndef COBRA_NPY_H
#define COBRA_NPY_H

#include <glib.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8

typedef struct {
    char dtype[4];              /* numpy code without byte order: "u1", "i4", "f4", "f8", ... */
    int n_dims;
    int64_t shape[NPY_MAX_DIMS];
    size_t n_elems;
    size_t elem_size;
    void *data;                 /* g_malloc'd, n_elems * elem_size bytes */
} Npy;

gboolean npy_load(const char *path, Npy *out, GError **error);
void npy_free(Npy *a);
gboolean npy_save(const char *path, const char *dtype, const int64_t *shape, int n_dims,
                  const void *data, GError **error);

#endif
